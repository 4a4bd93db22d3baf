"""Shared fixtures: a real sandbox on a real socket, real config files, real ledgers."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from syncengine.config import Config, Secrets, load_config
from syncengine.model import JSON
from syncengine.pipeline import RunOptions, RunResult, run_sync
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.workers import RetryPolicy

# Short waits: the tests exercise the same retry paths as production, only faster.
FAST = RetryPolicy(wait_initial=0.005, wait_max=0.05)

SECRETS = Secrets(
    client_id="sandbox-client-id",
    client_secret="sandbox-client-secret",
    refresh_token="sandbox-refresh-token",
    access_token=None,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(rows)
    return path


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, url: str, streams: Sequence[Mapping[str, Any]], **crm: object) -> Config:
    """Write a TOML config for the sandbox at ``url`` and load it."""
    lines = ["[crm]", f'api_domain = "{url}"', f'accounts_url = "{url}"']
    lines += [f"{k} = {_toml_value(v)}" for k, v in {"concurrency": 10, **crm}.items()]
    lines += ["", "[ledger]", 'path = "ledger.db"']
    for stream in streams:
        lines += ["", "[[streams]]"] + [f"{k} = {_toml_value(v)}" for k, v in stream.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(path)


async def run(config: Config, *, secrets: Secrets | None = SECRETS, **options: Any) -> RunResult:
    return await run_sync(config, secrets, options=RunOptions(policy=options.pop("policy", FAST), **options))


def stat(source: Sandbox | Mapping[str, JSON], *path: str) -> int:
    """One counter of the sandbox's stats as an int: ``stat(sb, "errors_500")``, ``stat(sb, "calls", "update")``.

    ``source`` is a sandbox (its stats read now) or a ``stats.snapshot()`` taken earlier. A missing key raises
    KeyError, as indexing the snapshot does; a counter that is not an int fails the test.
    """
    value: JSON = dict(source.stats.snapshot() if isinstance(source, Sandbox) else source)
    for key in path:
        assert isinstance(value, dict), (path, value)
        value = value[key]
    assert type(value) is int, (path, value)
    return value


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxOptions()) as sb:
        yield sb
