"""The ledger's one SQLite connection: opened in WAL mode and migrated, used by one caller at a time.

Every statement runs in a worker thread through a ``CapacityLimiter(1)``, so the event loop never waits on
the disk and no two transactions ever interleave on the connection (a single connection shared by
concurrent tasks was seen to raise and lose rows). Every SQLite or OS error becomes a ``LedgerError`` naming
the file and the reason.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio

from syncengine.errors import LedgerError
from syncengine.ledger.chains import register
from syncengine.ledger.schema import NewerSchema, migrate

__all__ = ["SqliteConnection", "transaction"]

_T = TypeVar("_T")


class SqliteConnection:
    """The connection and its thread; ``SqliteLedger`` builds its statements on it."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 10.0) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout  # seconds to wait for another process's lock before giving up
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(str(self._path), "the ledger is not open")
        return self._conn

    def _open_sync(self) -> None:
        if self._path.is_dir():
            raise LedgerError(str(self._path), "cannot open: it is a directory, not a file")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        register(conn)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)  # writes, so a read-only or locked file fails here, not mid-run
            if str(mode).lower() != "wal":
                raise LedgerError(str(self._path), f"cannot open: WAL mode refused (journal_mode={mode})")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _run(self, action: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the connection's thread; SQLite and OS errors become ``LedgerError``s."""
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        except NewerSchema as exc:
            raise LedgerError(str(self._path), f"{action}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(str(self._path), f"{action}: {self._reason(exc)}") from exc

    def _reason(self, exc: sqlite3.Error | OSError) -> str:
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith("SQLITE_BUSY") or "locked" in str(exc):
            return f"{exc} (another process holds a lock on it; waited {self._busy_timeout:g}s)"
        if name == "SQLITE_NOTADB":
            return f"{exc} (it is not a syncengine ledger)"
        if name.startswith("SQLITE_READONLY"):
            return f"{exc} (the file or its directory is not writable)"
        if name.startswith("SQLITE_IOERR") or name == "SQLITE_FULL":
            return f"{exc} ({name}: the disk may be full, or the file cannot grow)"
        if name.startswith("SQLITE_CANTOPEN"):
            return f"{exc} (check that the directory exists and is writable)"
        return str(exc)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

    IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN, after the busy timeout,
    rather than half way through a batch.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    finally:
        # An error in the block or in COMMIT itself (a full disk) must not leave the transaction open;
        # some errors have rolled it back already.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
