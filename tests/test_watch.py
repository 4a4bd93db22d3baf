"""`watch`: a table followed while it changes, through a CRM outage and a restart; metrics that count right."""

from __future__ import annotations

import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncengine.metrics import Telemetry, serve_metrics
from syncengine.pipeline import RunControl, RunOptions, RunResult, run_sync
from syncengine.sandbox import Sandbox
from tests.conftest import FAST, SECRETS, stat, write_config

ROLE = "111111000000026002"


def make_erp(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE deal_contacts (id INTEGER PRIMARY KEY, deal TEXT, contact TEXT, role TEXT,"
        " deleted INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)"
    )
    return db


def links_stream(db: Path) -> dict[str, Any]:
    return {
        "name": "links",
        "operation": "update_related",
        "module": "Deals",
        "related_list": "Contacts",
        "parent": {"column": "deal", "field": "External_Deal_ID"},
        "match": {"column": "contact", "field": "External_Contact_ID"},
        "source": {"kind": "sqlite", "path": str(db), "table": "deal_contacts", "key": "id", "cursor": "updated_at"},
        "fields": {"Contact_Role": "role"},
        "delete_when": {"column": "deleted", "values": ["1"]},
        "linger_ms": 20,
    }


def seed(sb: Sandbox, contacts: int, deals: int) -> None:
    sb.state.load(
        {
            "records": {
                "Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "X"} for i in range(contacts)],
                "Deals": [{"External_Deal_ID": f"D{i}", "Deal_Name": f"Deal {i}"} for i in range(deals)],
            }
        }
    )


def crm_links(sb: Sandbox, deals: int) -> set[tuple[str, str]]:
    names = {str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{i}")): f"C{i}" for i in range(100)}
    found = set()
    for d in range(deals):
        deal = str(sb.state.find_id("Deals", "External_Deal_ID", f"D{d}"))
        found |= {(f"D{d}", names[c]) for c in sb.state.related("Deals", deal, "Contacts")}
    return found


def source_links(db: sqlite3.Connection) -> set[tuple[str, str]]:
    return {(d, c) for d, c in db.execute("SELECT deal, contact FROM deal_contacts WHERE deleted = 0")}


async def wait_until(check: Callable[[], bool], limit: float = 15.0) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.05)


class Watch:
    """A watch running in the test's event loop, stopped like SIGTERM stops it."""

    def __init__(self, config: Any, telemetry: Telemetry | None = None) -> None:
        self.config, self.control, self.telemetry = config, RunControl(), telemetry
        self.result: RunResult | None = None

    async def run(self) -> None:
        options = RunOptions(policy=FAST, watch=0.1)
        self.result = await run_sync(
            self.config, SECRETS, options=options, control=self.control, telemetry=self.telemetry
        )


async def test_watch_follows_inserts_updates_deletes_across_an_outage_and_a_restart(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Links and unlinks made in the ERP while watch runs reach the CRM, through an outage and a restart."""
    seed(sandbox, 100, 5)
    erp = make_erp(tmp_path / "erp.db")
    config = write_config(tmp_path / "sync.toml", sandbox.url, [links_stream(tmp_path / "erp.db")])
    clock = iter(f"2026-11-23T10:{m:02d}:{s:02d}Z" for m in range(60) for s in range(60))

    def upsert(row_id: int, deal: str, contact: str, deleted: int = 0) -> None:
        erp.execute(
            "INSERT INTO deal_contacts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " deleted = excluded.deleted, role = excluded.role, updated_at = excluded.updated_at",
            (row_id, deal, contact, ROLE, deleted, next(clock)),
        )

    for i in range(40):
        upsert(i, f"D{i % 5}", f"C{i}")
    first = Watch(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await wait_until(lambda: crm_links(sandbox, 5) == source_links(erp))
        for i in range(40, 60):  # inserts
            upsert(i, f"D{i % 5}", f"C{i}")
        for i in range(0, 10):  # deletes
            upsert(i, f"D{i % 5}", f"C{i}", deleted=1)
        await wait_until(lambda: crm_links(sandbox, 5) == source_links(erp))
        sandbox.set_faults(error_rate=1.0)  # an outage: the watch waits it out
        for i in range(60, 70):
            upsert(i, f"D{i % 5}", f"C{i}")
        await wait_until(lambda: stat(sandbox, "errors_500") >= 5)
        first.control.stop()
    assert first.result is not None and first.result.interrupted
    sandbox.set_faults(error_rate=0.0)
    for i in range(70, 80):  # made while no watch runs
        upsert(i, f"D{i % 5}", f"C{i}")
    second = Watch(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(second.run)
        await wait_until(lambda: crm_links(sandbox, 5) == source_links(erp))
        second.control.stop()
    assert crm_links(sandbox, 5) == source_links(erp)
    assert second.result is not None and second.result.summary.adds_up
    # The restart read on from the stored position: only what changed since, not the whole table again.
    assert second.result.summary.read <= 30


async def test_metrics_count_what_the_watch_did(tmp_path: Path, sandbox: Sandbox) -> None:
    """/metrics reports changes read, outcomes by status and code, calls and refreshes; /healthz says ok."""
    seed(sandbox, 100, 5)
    erp = make_erp(tmp_path / "erp.db")
    for i in range(30):
        erp.execute(
            "INSERT INTO deal_contacts VALUES (?, ?, ?, ?, 0, ?)",
            (i, f"D{i % 5}", f"C{i}", ROLE, f"2026-01-01T00:00:{i:02d}Z"),
        )
    erp.execute("INSERT INTO deal_contacts VALUES (99, 'D404', 'C1', ?, 0, '2026-01-01T00:01:00Z')", (ROLE,))
    config = write_config(tmp_path / "sync.toml", sandbox.url, [links_stream(tmp_path / "erp.db")])
    telemetry = Telemetry()
    watch = Watch(config, telemetry)
    async with serve_metrics(telemetry, host="127.0.0.1", port=0) as url, anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await wait_until(lambda: telemetry.progress is not None and telemetry.progress.finished == 31)

        def get(path: str) -> str:
            with urllib.request.urlopen(url + path, timeout=5) as response:
                return str(response.read().decode())

        health = await anyio.to_thread.run_sync(get, "/healthz")
        text = await anyio.to_thread.run_sync(get, "/metrics")
        watch.control.stop()
    assert '"status": "ok"' in health or '"status":"ok"' in health
    assert 'syncengine_changes_read_total{stream="links"} 31.0' in text
    assert 'syncengine_outcomes_total{code="SUCCESS",status="SUCCESS",stream="links"} 30.0' in text
    assert 'status="REJECTED"' in text
    assert "syncengine_token_refreshes_total 1.0" in text
    calls = next(line for line in text.splitlines() if line.startswith("syncengine_calls_total"))
    assert float(calls.split()[-1]) == stat(sandbox, "calls", "update_related")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
