"""A small public surface, kept in step, and an engine in floors.

Every module declares ``__all__``: it names every public name the module defines, and only names the module has.
The import graph of ``syncengine`` (read from the source with ``ast``) has no circle, and no arrow from a lower
floor of ``LAYERS`` to a higher one; the sandbox stands apart from the engine.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import syncengine

# The engine's floors, bottom first. A unit is a top-level module or subpackage of syncengine ("ledger" is every
# syncengine.ledger.* module; "__init__" is the package itself). A unit may import its own floor and the floors
# below, never one above. A new module goes on a floor here, a removed one comes off: the test names either.
LAYERS: dict[int, set[str]] = {
    0: {"__init__", "model", "errors"},  # plain values and the exception tree (the package re-exports a few)
    1: {"config", "ledger", "readers", "crm", "limits", "batcher", "unchanged", "mapping", "progress", "logs"},
    2: {"sources", "plan", "control", "intake", "sender", "dryrun", "external", "workers", "metrics"},
    3: {"pipeline"},
    4: {"runner", "demo", "cli", "__main__"},
}
# The sandbox is a fake Zoho CRM for the tests, the demo and `syncengine sandbox`, not part of the engine: it
# imports from the bottom floor only, and only these units import it.
SANDBOX = "sandbox"
SANDBOX_IMPORTS = LAYERS[0]
SANDBOX_USERS = {"demo", "cli"}

PACKAGE = Path(syncengine.__file__).parent

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(syncengine.__path__, prefix="syncengine.")
    if not info.name.endswith("__main__")
)


def _source(name: str) -> Path:
    """The file of module ``name`` (a dotted name under syncengine)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _defined(tree: ast.Module) -> set[str]:
    """The public names a module's top level binds itself (def, class, assignment), not the ones it imports."""
    names: set[str] = set()

    def bind(target: ast.expr) -> None:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    def block(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(stmt.name)
            elif isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    bind(target)
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
                bind(stmt.target)
            elif isinstance(stmt, ast.If | ast.With):
                block(stmt.body)
                block(getattr(stmt, "orelse", []))
            elif isinstance(stmt, ast.Try):
                block(stmt.body)
                block(stmt.orelse)
                block(stmt.finalbody)
                for handler in stmt.handlers:
                    block(handler.body)

    block(tree.body)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all_and_exports_what_exists(name: str) -> None:
    """Each module says what it exports, and exports only names it has."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert [n for n in exported if not hasattr(module, n)] == []
    assert len(set(exported)) == len(exported), f"{name}.__all__ names something twice"


@pytest.mark.parametrize("name", MODULES)
def test_module_exports_every_public_name_it_defines(name: str) -> None:
    """The other direction: a public name a module defines is in its __all__ (or it starts with an underscore)."""
    module = importlib.import_module(name)
    defined = _defined(ast.parse(_source(name).read_text(encoding="utf-8")))
    unexported = defined - set(getattr(module, "__all__", ()))
    assert sorted(unexported) == [], f"public in {name} but not in its __all__: export it or give it a leading _"


def test_package_reexports_its_short_list() -> None:
    """`from syncengine import *` gives the documented few names, each the real object."""
    assert set(syncengine.__all__) == {
        "Change", "ConfigError", "CrmError", "Operation", "Outcome", "Payload", "PayloadItem", "Status",
        "SyncError", "Target",
    }  # fmt: skip
    for name in syncengine.__all__:
        assert getattr(syncengine, name).__module__.startswith("syncengine.")


# --- the import graph -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrow:
    """``source`` imports ``target`` (both modules under syncengine) at ``line``."""

    source: str
    target: str
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`: never runs

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({_source(self.source).relative_to(PACKAGE.parent)}:{self.line})"


def _modules() -> dict[str, Path]:
    """Every module of the package, the sandbox too, from the files (nothing is imported)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _arrows(name: str, path: Path, modules: set[str]) -> Iterator[Arrow]:
    """Every import of a syncengine module in ``name``: at module level and inside functions alike."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and _is_type_checking(branch.test)
        for stmt in branch.body
        for node in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per dot after the first
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from syncengine.ledger import values` imports a module; `from syncengine.ledger import X`, a package.
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "syncengine" or target.startswith("syncengine."):
                yield Arrow(name, target, node.lineno, id(node) in type_only)


def _graph() -> list[Arrow]:
    modules = _modules()
    return [arrow for name, path in modules.items() for arrow in _arrows(name, path, set(modules))]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _circles(edges: dict[str, set[str]]) -> list[str]:
    """One circle through each strongly connected group of more than one node (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)

    circles = []
    for group in groups:  # walk from the group's first node inside the group until a node repeats
        members, path = set(group), [min(group)]
        while path.count(path[-1]) == 1:
            path.append(min(n for n in edges[path[-1]] if n in members))
        circle = path[path.index(path[-1]) :]
        knot = f" (one of {len(group)} in a knot: {', '.join(sorted(group))})" if len(group) > len(circle) - 1 else ""
        circles.append(" -> ".join(circle) + knot)
    return circles


def test_every_unit_is_on_one_floor() -> None:
    """The floor table covers the package: a new module is put on a floor (or is the sandbox) on purpose."""
    floors = [unit for units in LAYERS.values() for unit in units]
    assert sorted(u for u in set(floors) if floors.count(u) > 1) == [], "a unit on two floors"
    units = {_unit(name) for name in _modules()}
    assert sorted(units - set(floors) - {SANDBOX}) == [], "units on no floor: put each in LAYERS"
    assert sorted(set(floors) - units) == [], "no such unit: drop it from LAYERS"


def test_the_import_graph_has_no_circle() -> None:
    """No module imports itself round a circle, and no unit does (`TYPE_CHECKING` imports never run: left out)."""
    arrows = [a for a in _graph() if not a.type_only]
    by_module: dict[str, set[str]] = {}
    by_unit: dict[str, set[str]] = {}
    for a in arrows:
        by_module.setdefault(a.source, set()).add(a.target)
        if _unit(a.source) != _unit(a.target):
            by_unit.setdefault(_unit(a.source), set()).add(_unit(a.target))
    circles = [f"modules: {c}" for c in _circles(by_module)] + [f"units: {c}" for c in _circles(by_unit)]
    assert not circles, "imports in a circle:\n" + "\n".join(circles)


def test_no_arrow_goes_up_a_floor_and_the_engine_never_imports_the_sandbox() -> None:
    """Each import points to the importer's own floor or lower; only the top imports the sandbox, which imports
    only the bottom. `TYPE_CHECKING` imports count: a type named across floors is a dependency all the same."""
    floor = {unit: number for number, units in LAYERS.items() for unit in units}
    wrong: list[str] = []
    for a in _graph():
        source, target = _unit(a.source), _unit(a.target)
        if source == target:
            continue
        if target == SANDBOX and source not in SANDBOX_USERS:
            wrong.append(f"{a}: the engine imports the sandbox (only {sorted(SANDBOX_USERS)} may)")
        elif source == SANDBOX and target not in SANDBOX_IMPORTS:
            wrong.append(f"{a}: the sandbox imports the engine above its bottom floor")
        elif source in floor and target in floor and floor[target] > floor[source]:
            wrong.append(f"{a}: up from floor {floor[source]} ({source}) to floor {floor[target]} ({target})")
    assert not wrong, "imports against the floors (LAYERS):\n" + "\n".join(wrong)
