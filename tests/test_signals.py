"""Ctrl-C and SIGTERM on a real `syncengine run` process: a clean stop, exit 130, and a resume that finishes."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import write_config, write_csv

CREDENTIALS = {
    "ZOHO_CLIENT_ID": "sandbox-client-id",
    "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
    "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
}
N = 3000


def rows_in(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
    except sqlite3.Error:
        return 0


async def run_cli(
    *args: str, cwd: Path, signals: tuple[signal.Signals, ...] = (), after_rows: int = 0
) -> tuple[int, str]:
    """Run the CLI; once the ledger holds ``after_rows`` outcomes, send ``signals`` (one per 50 ms)."""
    out = cwd / f"out-{len(list(cwd.glob('out-*')))}.txt"
    with out.open("wb") as handle:
        process = await anyio.open_process(
            [sys.executable, "-m", "syncengine", "--json-logs", *args],
            cwd=cwd,
            env={**os.environ, **CREDENTIALS, "COLUMNS": "200"},
            stdout=handle,
            stderr=handle,
        )
        with anyio.fail_after(120):
            if signals:
                while rows_in(cwd / "ledger.db") < after_rows and process.returncode is None:
                    await anyio.sleep(0.02)
                for sig in signals:
                    if process.returncode is None:
                        with contextlib.suppress(ProcessLookupError):  # it may be done stopping already
                            process.send_signal(sig)
                    await anyio.sleep(0.05)
            code = await process.wait()
    return code, out.read_text()


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
    ids=["ctrl-c", "sigterm", "twice"],
)
async def test_a_signal_stops_cleanly_and_resume_finishes(tmp_path: Path, signals: tuple[signal.Signals, ...]) -> None:
    """Stop reading, finish or cancel what is in flight, print the pending count, exit 130; resume completes."""
    async with Sandbox(SandboxOptions(latency_ms=(20, 40))) as sb:
        sb.state.load(
            {"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "Old"} for i in range(N)]}}
        )
        src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [[f"C{i}", f"New{i}"] for i in range(N)])
        write_config(
            tmp_path / "sync.toml",
            sb.url,
            [
                {
                    "name": "contacts",
                    "operation": "update",
                    "module": "Contacts",
                    "source": {"kind": "csv", "path": str(src)},
                    "batch_size": 20,
                    "match": {"column": "erp_id", "field": "External_Contact_ID"},
                    "fields": {"Last_Name": "last_name"},
                }
            ],
            concurrency=2,
        )
        code, text = await run_cli("run", "sync.toml", cwd=tmp_path, signals=signals, after_rows=200)
        assert code == 130, text
        assert "changes pending" in text and "adds up" in text
        stopped_at = rows_in(tmp_path / "ledger.db")
        assert 200 <= stopped_at < N
        code, text = await run_cli("run", "sync.toml", "--resume", cwd=tmp_path)
        assert code == 0, text
        assert rows_in(tmp_path / "ledger.db") == N
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            assert db.execute("SELECT COUNT(DISTINCT run_id), MIN(status), MAX(status) FROM outcomes").fetchone() == (
                1,
                "SUCCESS",
                "SUCCESS",
            )
        assert all(
            (sb.state.find_by_field("Contacts", "External_Contact_ID", f"C{i}") or {})["Last_Name"] == f"New{i}"
            for i in range(0, N, 101)
        )
