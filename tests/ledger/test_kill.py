"""Kill safety: a process SIGKILLed while appending leaves every committed batch whole and no partial one."""

from __future__ import annotations

import signal
import sqlite3
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from syncengine.ledger import SqliteLedger

REPO = Path(__file__).resolve().parents[2]
BATCH = 1000

APPENDER = textwrap.dedent(f"""
    import sys
    import anyio
    from syncengine.ledger import SqliteLedger
    from tests.ledger.builders import outcome

    async def main(path):
        async with SqliteLedger(path) as ledger:
            run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
            batch = 0
            while True:  # until killed
                first = batch * {BATCH}
                await ledger.append(run_id, [outcome(first + i) for i in range({BATCH})],
                                    {{"contacts": first + {BATCH} - 1}})
                batch += 1
                print(batch, flush=True)  # after the commit: this many batches are durable

    anyio.run(main, sys.argv[1])
""")


@pytest.mark.parametrize("after", [1, 7, 20], ids=lambda n: f"after-{n}-batches")
async def test_sigkill_mid_append_loses_no_committed_batch(tmp_path: Path, after: int) -> None:
    """Kill -9 while appending; reopening finds every reported batch, whole, and checkpoints that match."""
    path = tmp_path / "ledger.db"
    async with await anyio.open_process([sys.executable, "-c", APPENDER, str(path)], cwd=REPO) as child:
        assert child.stdout is not None and child.stderr is not None
        lines = BufferedByteReceiveStream(child.stdout)
        committed = 0
        with anyio.fail_after(60):
            while committed < after:
                try:
                    committed = int(await lines.receive_until(b"\n", 100))
                except anyio.IncompleteRead:
                    pytest.fail(f"the appender died: {(await child.stderr.receive()).decode()}")
        child.kill()  # SIGKILL; the loop is tight, so this lands in or between transactions
        assert await child.wait() == -signal.SIGKILL

    async with SqliteLedger(path) as ledger:  # reopens (and recovers the WAL) cleanly
        seqs = await ledger.terminal_seqs(1, "contacts")
        checkpoints = await ledger.checkpoints(1)
        summary = await ledger.summary(1)
    assert len(seqs) % BATCH == 0, "a partial batch was written"
    assert len(seqs) >= committed * BATCH, "a batch reported committed was lost"
    assert list(seqs.ranges()) == [(0, len(seqs) - 1)]
    assert checkpoints == {"contacts": len(seqs) - 1}  # the checkpoint went in with its batch
    assert summary.adds_up and summary.succeeded == len(seqs)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
