"""SQLite source: a table or query in an SQLite file, read in keyset pages (see :mod:`syncengine.readers.sql`).

The stdlib ``sqlite3`` runs in a worker thread, a page per trip, so the event loop stays free. The file
is opened read-only (``mode=ro``), lazily on first use; every page is its own statement, so a writer
committing meanwhile (WAL or not) is never held up for longer than a page takes. SQLite returns text,
integers, reals, NULL and blobs: blobs become base64 text, non-finite reals ``"Infinity"``/``"NaN"``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers.sql import KeysetReader, Position, SqlSpec, rows_as_dicts

__all__ = [
    "BUSY_TIMEOUT",
    "SqliteReader",
]

BUSY_TIMEOUT = 30.0  # seconds to wait on a lock held by a writer (rollback-journal mode) before failing


class SqliteReader(KeysetReader):
    """Reads ``spec`` from the SQLite file at ``path``, strictly after ``since`` if given."""

    def __init__(self, path: Path, spec: SqlSpec, *, since: Position | None = None) -> None:
        super().__init__(spec, since=since, source=str(path))
        self.path = path
        self._connection: sqlite3.Connection | None = None

    async def _open(self) -> Sequence[str]:
        return await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> list[str]:
        if not self.path.is_file():
            raise SourceError(self.source, "cannot open: no such file")
        try:
            # check_same_thread=False: each page may run on a different worker thread, never two at once.
            self._connection = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT, check_same_thread=False
            )
            cursor = self._connection.execute(f"SELECT * FROM ({self.spec.relation}) AS q LIMIT 0")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        columns = [column[0] for column in cursor.description]
        cursor.close()
        return columns

    async def _fetch(self, sql: str, params: list[JSON]) -> list[dict[str, JSON]]:
        return await anyio.to_thread.run_sync(self._fetch_sync, sql, params)

    def _fetch_sync(self, sql: str, params: list[JSON]) -> list[dict[str, JSON]]:
        assert self._connection is not None
        try:
            cursor = self._connection.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        columns = [column[0] for column in cursor.description]
        return rows_as_dicts(columns, rows)

    def _placeholder(self, index: int, column: str) -> str:
        return "?"

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _error(self, exc: sqlite3.Error) -> SourceError:
        text = str(exc)
        if self.spec.table is not None and text.startswith("no such table"):
            return SourceError(self.source, f"table {self.spec.table!r} does not exist")
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return SourceError(self.source, "cannot open: not an SQLite database")
        if "unable to open" in text:
            return SourceError(self.source, f"cannot open: {text}")
        if self.spec.query is not None:
            return SourceError(self.source, f"the query cannot run: {text}")
        return SourceError(self.source, f"cannot read {self.spec.subject}: {text}")
