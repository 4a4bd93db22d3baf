"""A small public surface, kept in step: every module declares __all__, and every name in it exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import syncengine

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(syncengine.__path__, prefix="syncengine.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all_and_exports_what_exists(name: str) -> None:
    """Each module says what it exports, and exports only names it has."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert [n for n in exported if not hasattr(module, n)] == []


def test_package_reexports_its_short_list() -> None:
    """`from syncengine import *` gives the documented few names, each the real object."""
    assert set(syncengine.__all__) == {
        "Change", "ConfigError", "CrmError", "Operation", "Outcome", "Payload", "PayloadItem", "Status",
        "SyncError", "Target",
    }  # fmt: skip
    for name in syncengine.__all__:
        assert getattr(syncengine, name).__module__.startswith("syncengine.")
