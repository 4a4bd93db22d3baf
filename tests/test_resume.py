"""Stop, resume and re-drive: every change ends with exactly one terminal outcome, nothing sent twice needlessly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from syncengine.errors import SourceError
from syncengine.ledger import SqliteLedger
from syncengine.model import Outcome, Status
from syncengine.pipeline import Redrive, RunControl, RunOptions, run_sync
from syncengine.progress import RunProgress
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.workers import RetryPolicy
from tests.conftest import FAST, SECRETS, run, stat, write_config, write_csv


def contacts(sb: Sandbox, tmp_path: Path, n: int, **stream: Any) -> Path:
    sb.state.load({"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "Old"} for i in range(n)]}})
    return write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [[f"C{i}", f"New{i}"] for i in range(n)])


def stream(src: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(src)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
        **extra,
    }


class StopAfter(RunProgress):
    """Progress that asks the run to stop once ``count`` outcomes are committed."""

    def __init__(self, control: RunControl, count: int) -> None:
        super().__init__()
        self._control, self._count = control, count

    def on_flush(self, outcomes: Sequence[Outcome]) -> None:
        super().on_flush(outcomes)
        if self.finished >= self._count:
            self._control.stop()


async def ledger_rows(path: Path, run_id: int) -> list[Any]:
    async with SqliteLedger(path) as ledger:
        return [row async for row in ledger.outcomes(run_id)]


async def test_stop_then_resume_ends_with_one_outcome_per_change(tmp_path: Path) -> None:
    """A stopped run leaves the rest pending; resuming it sends only the rest and completes the same run."""
    async with Sandbox(SandboxOptions(latency_ms=(5, 10))) as sb:
        src = contacts(sb, tmp_path, 2000)
        config = write_config(tmp_path / "sync.toml", sb.url, [stream(src, batch_size=50)], concurrency=2)
        control = RunControl()
        first = await run_sync(
            config, SECRETS, options=RunOptions(policy=FAST), progress=StopAfter(control, 300), control=control
        )
        s = first.summary
        assert first.interrupted and s.state == "interrupted" and s.adds_up
        assert 300 <= s.succeeded < 2000 and s.pending == s.read - s.succeeded
        calls_before = stat(sb, "calls", "update")
        second = await run(config, resume=s.run_id)
        r = second.summary
        assert (r.run_id, r.state, r.read, r.succeeded, r.pending) == (s.run_id, "completed", 2000, 2000, 0)
        # Only what had no outcome was sent again: at most a few in-flight payloads of overlap.
        resent = stat(sb, "calls", "update") - calls_before
        assert resent <= (2000 - s.succeeded) // 50 + 2
        rows = await ledger_rows(config.ledger.path, s.run_id)
        assert sorted(r.seq for r in rows) == list(range(1, 2001))
        assert all(r.status is Status.SUCCESS for r in rows)
        for i in range(0, 2000, 97):
            assert (sb.state.find_by_field("Contacts", "External_Contact_ID", f"C{i}") or {})["Last_Name"] == f"New{i}"


async def test_checkpoint_reaches_the_last_row(tmp_path: Path, sandbox: Sandbox) -> None:
    """A completed run's checkpoint covers every row: a resume would read nothing."""
    src = contacts(sandbox, tmp_path, 250)
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream(src)])
    result = await run(config)
    async with SqliteLedger(config.ledger.path) as ledger:
        assert await ledger.checkpoints(result.summary.run_id) == {"contacts": 250}


async def test_resume_refuses_a_changed_source(tmp_path: Path, sandbox: Sandbox) -> None:
    """If the export changed since the run started, resuming would misalign rows: refused, clearly."""
    src = contacts(sandbox, tmp_path, 10)
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream(src)])
    first = await run(config)
    src.write_text(src.read_text() + "C99,Extra\n")
    with pytest.raises(SourceError, match="changed since run"):
        await run(config, resume=first.summary.run_id)


async def test_retry_redrives_failed_changes_as_a_linked_run(tmp_path: Path) -> None:
    """FAILED changes (an outage outlasted the retries) are re-driven from the ledger once the CRM is back."""
    async with Sandbox(SandboxOptions(error_rate=1.0)) as sb:
        src = contacts(sb, tmp_path, 120)
        config = write_config(tmp_path / "sync.toml", sb.url, [stream(src)])
        first = await run(config, policy=RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.002))
        assert first.summary.failed == 120
        sb.set_faults(error_rate=0.0)
        second = await run(config, redrive=Redrive(run_id=first.summary.run_id))
        r = second.summary
        assert (r.retry_of, r.read, r.succeeded, r.adds_up) == (first.summary.run_id, 120, 120, True)
        assert (sb.state.find_by_field("Contacts", "External_Contact_ID", "C7") or {})["Last_Name"] == "New7"
        rows = await ledger_rows(config.ledger.path, r.run_id)
        assert sorted(row.seq for row in rows) == list(range(1, 121))  # the original source positions


async def test_retry_codes_narrow_the_redrive(tmp_path: Path, sandbox: Sandbox) -> None:
    """--codes re-drives only the changes whose outcome had one of those codes."""
    src = contacts(sandbox, tmp_path, 5)
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream(src)])
    first = await run(config)
    second = await run(config, redrive=Redrive(run_id=first.summary.run_id, codes=frozenset({"RECORD_LOCKED"})))
    assert second.summary.read == 0 and second.summary.adds_up


async def test_resume_of_a_database_stream_redoes_nothing(tmp_path: Path) -> None:
    """A stopped run reading a table resumes from its stored position; no row gets a second outcome."""
    import sqlite3

    erp = sqlite3.connect(tmp_path / "erp.db")
    erp.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, erp_id TEXT, last_name TEXT, updated_at TEXT)")
    erp.executemany(
        "INSERT INTO contacts VALUES (?, ?, ?, ?)",
        [(i, f"C{i}", f"New{i}", f"2026-01-01T00:00:{i % 7:02d}Z") for i in range(2000)],
    )
    erp.commit()
    async with Sandbox(SandboxOptions(latency_ms=(5, 10))) as sb:
        sb.state.load(
            {"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "Old"} for i in range(2000)]}}
        )
        table = {
            "kind": "sqlite",
            "path": str(tmp_path / "erp.db"),
            "table": "contacts",
            "key": "id",
            "cursor": "updated_at",
            "page_size": 97,
        }
        config = write_config(
            tmp_path / "sync.toml",
            sb.url,
            [{**stream(tmp_path / "unused.csv", batch_size=50), "source": table}],
            concurrency=2,
        )
        control = RunControl()
        first = await run_sync(
            config, SECRETS, options=RunOptions(policy=FAST), progress=StopAfter(control, 300), control=control
        )
        assert first.interrupted and 300 <= first.summary.succeeded < 2000
        second = await run(config, resume=first.summary.run_id)
        r = second.summary
        assert (r.run_id, r.state, r.read, r.succeeded, r.pending) == (first.summary.run_id, "completed", 2000, 2000, 0)
        rows = await ledger_rows(config.ledger.path, r.run_id)
        keys = [row.key for row in rows]
        assert len(keys) == 2000 and len(set(keys)) == 2000  # one outcome per source row
        assert (sb.state.find_by_field("Contacts", "External_Contact_ID", "C1999") or {})["Last_Name"] == "New1999"


async def test_retry_never_sends_a_failure_that_a_later_run_overtook(tmp_path: Path) -> None:
    """A change that FAILED in run 1 is not re-driven after run 2 applied a newer row of its key: the CRM
    keeps the newer row, and the re-drive records the old change SKIPPED/OVERTAKEN."""
    async with Sandbox(SandboxOptions(error_rate=1.0)) as sb:
        src = contacts(sb, tmp_path, 3)
        config = write_config(tmp_path / "sync.toml", sb.url, [stream(src)])
        first = await run(config, policy=RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.002))
        assert first.summary.failed == 3
        sb.set_faults(error_rate=0.0)
        write_csv(src, ["erp_id", "last_name"], [["C0", "Newer0"], ["C1", "Newer1"]])  # C2 has no newer row
        assert (await run(config)).summary.succeeded == 2
        redrive = await run(config, redrive=Redrive(run_id=first.summary.run_id))
        r = redrive.summary
        assert (r.read, r.succeeded, r.skipped, r.adds_up) == (3, 1, 2, True)
        names = {
            k: (sb.state.find_by_field("Contacts", "External_Contact_ID", k) or {})["Last_Name"]
            for k in ("C0", "C1", "C2")
        }
        assert names == {"C0": "Newer0", "C1": "Newer1", "C2": "New2"}
        rows = await ledger_rows(config.ledger.path, r.run_id)
        assert sorted((row.seq, row.code) for row in rows) == [(1, "OVERTAKEN"), (2, "OVERTAKEN"), (3, "SUCCESS")]
