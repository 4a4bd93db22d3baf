"""`syncengine watch` as a real process, following a real PostgreSQL table through an outage and a restart."""

from __future__ import annotations

import os
import re
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from anyio.abc import Process

from syncengine.sandbox import Sandbox
from tests.conftest import stat, write_config
from tests.pg import postgres_database, postgres_dsn  # noqa: F401 - fixtures

ROLE = "111111000000026002"
CREDENTIALS = {
    "ZOHO_CLIENT_ID": "sandbox-client-id",
    "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
    "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
}

pytestmark = pytest.mark.slow


def seed(sb: Sandbox) -> None:
    sb.state.load(
        {
            "records": {
                "Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "X"} for i in range(200)],
                "Deals": [{"External_Deal_ID": f"D{i}", "Deal_Name": f"Deal {i}"} for i in range(5)],
            }
        }
    )


def crm_links(sb: Sandbox) -> set[tuple[str, str]]:
    names = {str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{i}")): f"C{i}" for i in range(200)}
    found = set()
    for d in range(5):
        deal = str(sb.state.find_id("Deals", "External_Deal_ID", f"D{d}"))
        found |= {(f"D{d}", names[c]) for c in sb.state.related("Deals", deal, "Contacts")}
    return found


async def wait_until(check: Callable[[], bool], limit: float = 30.0) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.1)


async def start_watch(config: Path, dsn: str, log: Path) -> tuple[Process, str]:
    """Start `syncengine watch`; returns the process and its metrics URL (read from its output)."""
    env = {**os.environ, **CREDENTIALS, "ERP_DSN": dsn}
    with log.open("wb") as handle:  # the process writes to its own copy of the descriptor
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "syncengine",
                "--json-logs",
                "watch",
                str(config),
                "--interval",
                "0.2",
                "--metrics-port",
                "0",
            ],
            env=env,
            stdout=handle,
            stderr=handle,
        )
    with anyio.fail_after(30):
        while not (found := re.search(rb"Metrics at (http://[0-9.:]+)/metrics", log.read_bytes())):
            await anyio.sleep(0.1)
    return process, found.group(1).decode()


async def stop(process: Process) -> int:
    process.send_signal(signal.SIGTERM)
    with anyio.fail_after(60):
        return await process.wait()


async def test_watch_process_follows_postgres_through_an_outage_and_a_restart(
    tmp_path: Path,
    sandbox: Sandbox,
    postgres_database: str,  # noqa: F811
) -> None:
    """Inserts, updates and deletes in PostgreSQL reach the CRM within seconds, across an outage and a restart."""
    seed(sandbox)
    db = await asyncpg.connect(postgres_database)
    await db.execute(
        "CREATE TABLE deal_contacts (id int PRIMARY KEY, deal text, contact text, role text,"
        " deleted boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL)"
    )
    # 60 rows share one timestamp across several 7-row pages: none may be skipped.
    await db.executemany(
        "INSERT INTO deal_contacts VALUES ($1, $2, $3, $4, false, '2026-11-23 10:00:00+00')",
        [(i, f"D{i % 5}", f"C{i}", ROLE) for i in range(60)],
    )
    stream: dict[str, Any] = {
        "name": "links",
        "operation": "update_related",
        "module": "Deals",
        "related_list": "Contacts",
        "parent": {"column": "deal", "field": "External_Deal_ID"},
        "match": {"column": "contact", "field": "External_Contact_ID"},
        "source": {
            "kind": "postgres",
            "dsn_env": "ERP_DSN",
            "table": "deal_contacts",
            "key": "id",
            "cursor": "updated_at",
            "page_size": 7,
            "lag_seconds": 1,
        },
        "fields": {"Contact_Role": "role"},
        "delete_when": {"column": "deleted", "values": ["true"]},
        "linger_ms": 20,
    }
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream])

    async def source_links() -> set[tuple[str, str]]:
        rows = await db.fetch("SELECT deal, contact FROM deal_contacts WHERE NOT deleted")
        return {(r["deal"], r["contact"]) for r in rows}

    async def converged() -> None:
        want = await source_links()
        await wait_until(lambda: crm_links(sandbox) == want)

    process, metrics = await start_watch(config.file, postgres_database, tmp_path / "watch1.log")
    try:
        await converged()
        await db.execute(  # inserts, updates (a role change) and deletes, while the watch runs
            "INSERT INTO deal_contacts SELECT i, 'D' || (i % 5), 'C' || i, $1, false, now()"
            " FROM generate_series(60, 89) i",
            ROLE,
        )
        await db.execute("UPDATE deal_contacts SET deleted = true, updated_at = now() WHERE id < 10")
        await db.execute("UPDATE deal_contacts SET role = '111111000000026003', updated_at = now() WHERE id = 20")
        await converged()
        deal = str(sandbox.state.find_id("Deals", "External_Deal_ID", "D0"))
        contact = str(sandbox.state.find_id("Contacts", "External_Contact_ID", "C20"))
        assert sandbox.state.related("Deals", deal, "Contacts")[contact]["Contact_Role"] in (
            "111111000000026003",
            {"id": "111111000000026003"},
        )

        def get(path: str) -> str:
            with urllib.request.urlopen(metrics + path, timeout=5) as response:
                return str(response.read().decode())

        text = await anyio.to_thread.run_sync(get, "/metrics")
        assert 'syncengine_changes_read_total{stream="links"} ' in text
        assert "syncengine_calls_in_flight" in text
        sandbox.set_faults(error_rate=1.0)  # the CRM goes down: the watch must wait, not die
        await db.execute(
            "INSERT INTO deal_contacts SELECT i, 'D' || (i % 5), 'C' || i, $1, false, now()"
            " FROM generate_series(90, 99) i",
            ROLE,
        )
        await wait_until(lambda: stat(sandbox, "errors_500") >= 3)
        assert process.returncode is None
    finally:
        code = await stop(process)
    assert code == 0
    sandbox.set_faults(error_rate=0.0)
    await db.execute("UPDATE deal_contacts SET deleted = true, updated_at = now() WHERE id BETWEEN 60 AND 64")
    process, _ = await start_watch(config.file, postgres_database, tmp_path / "watch2.log")
    try:
        await converged()
    finally:
        code = await stop(process)
    assert code == 0
    assert crm_links(sandbox) == await source_links()
    await db.close()
