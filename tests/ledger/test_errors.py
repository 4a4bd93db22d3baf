"""A ledger that cannot be opened or written is a LedgerError naming the file and the reason."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import anyio
import pytest

from syncengine.errors import LedgerError
from syncengine.ledger import SqliteLedger

from .builders import outcome

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holding the database's write lock (an open EXCLUSIVE transaction)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    """Opening a file that is not a SQLite database names the file and says so."""
    path = tmp_path / "notes.txt"
    path.write_text("this is not a database, it is a text file that happens to be long enough\n" * 20)
    with pytest.raises(LedgerError, match="not a database") as caught:
        await SqliteLedger.open(path)
    assert caught.value.location == str(path) and str(path) in str(caught.value)
    assert path.read_text().startswith("this is not a database")  # and it is left as it was


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    """A path that is a directory is a LedgerError, not a cryptic 'unable to open'."""
    with pytest.raises(LedgerError, match="directory") as caught:
        async with SqliteLedger(tmp_path):
            pass
    assert caught.value.location == str(tmp_path)


async def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    """A ledger whose parent directory cannot be created is a LedgerError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "ledger.db"
    with pytest.raises(LedgerError, match="cannot open") as caught:
        await SqliteLedger.open(path)
    assert caught.value.location == str(path)


OPEN = textwrap.dedent("""
    import sys
    import anyio
    from syncengine.errors import LedgerError
    from syncengine.ledger import SqliteLedger

    try:
        anyio.run(SqliteLedger.open, sys.argv[1])
    except LedgerError as exc:
        print(f"LEDGER-ERROR {exc.location}|{exc.reason}", flush=True)
    else:
        print("OPENED", flush=True)
""")


def unprivileged(command: list[str]) -> list[str]:
    """``command`` run so that file permissions apply: as root, without the capability to override them."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod does not stop root's writes")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]


async def test_a_read_only_ledger_is_refused_at_open(tmp_path: Path) -> None:
    """A ledger file and directory without write permission fail at open, not mid-run."""
    path = tmp_path / "ro" / "ledger.db"
    async with SqliteLedger(path) as ledger:
        await ledger.start_run(config_file="c.toml", streams=["s"])
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        done = await anyio.run_process(unprivileged([sys.executable, "-c", OPEN, str(path)]), cwd=REPO, check=False)
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)
    stdout = done.stdout.decode()
    assert stdout.startswith("LEDGER-ERROR"), stdout + done.stderr.decode()
    location, reason = stdout.removeprefix("LEDGER-ERROR ").strip().split("|")
    assert location == str(path)
    assert reason.startswith("cannot open: ") and ("readonly" in reason or "not writable" in reason)


async def test_a_locked_ledger_fails_at_open_after_the_busy_timeout(tmp_path: Path) -> None:
    """Another process holding the write lock makes open wait busy_timeout, then fail saying 'locked'."""
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path):
        pass
    with write_locked(path):
        started = time.monotonic()
        with pytest.raises(LedgerError, match="locked") as caught:
            await SqliteLedger.open(path, busy_timeout=0.2)
        waited = time.monotonic() - started
    assert caught.value.location == str(path)
    assert waited >= 0.15  # it waited for the lock rather than failing at once


async def test_a_lock_taken_mid_run_fails_the_append_with_the_reason(tmp_path: Path) -> None:
    """An append that cannot get the write lock in time is a LedgerError; nothing of the batch is written."""
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path, busy_timeout=0.2) as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        with write_locked(path), pytest.raises(LedgerError, match=r"cannot append 2 outcomes.*locked"):
            await ledger.append(run_id, [outcome(1), outcome(2)])
        await ledger.append(run_id, [outcome(3)])  # the lock is gone: the ledger works on
        assert [r.seq async for r in ledger.outcomes(run_id)] == [3]


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    import anyio
    from syncengine.errors import LedgerError
    from syncengine.ledger import SqliteLedger
    from tests.ledger.builders import outcome

    async def main(path):
        async with SqliteLedger(path) as ledger:
            run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
            # From here on no file may grow past 1 MiB: the disk is "full" for the ledger.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
            for batch in range(1000):
                try:
                    await ledger.append(run_id, [outcome(batch * 500 + i) for i in range(500)])
                except LedgerError as exc:
                    print(f"LEDGER-ERROR {exc.location}|{exc.reason}|after {batch}", flush=True)
                    return
        print("NEVER-FULL", flush=True)

    anyio.run(main, sys.argv[1])
""")


async def test_a_full_disk_fails_the_append_with_the_reason(tmp_path: Path) -> None:
    """When the file cannot grow, append raises LedgerError naming the file; committed batches stay whole."""
    path = tmp_path / "ledger.db"
    done = await anyio.run_process([sys.executable, "-c", DISK_FULL, str(path)], cwd=REPO, check=False)
    stdout = done.stdout.decode()
    assert done.returncode == 0 and stdout.startswith("LEDGER-ERROR"), stdout + done.stderr.decode()
    location, reason, after = stdout.removeprefix("LEDGER-ERROR ").strip().split("|")
    assert location == str(path)
    assert reason.startswith("cannot append 500 outcomes to run 1: ")
    assert "disk" in reason or "full" in reason
    batches = int(after.split()[-1])
    async with SqliteLedger(path) as ledger:
        seqs = await ledger.terminal_seqs(1, "contacts")
    assert batches > 0 and list(seqs.ranges()) == [(0, batches * 500 - 1)]
