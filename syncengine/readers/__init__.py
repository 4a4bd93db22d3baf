"""Readers: stream a source's rows, in order, as :class:`SourceRow` or :class:`BadRow`.

One module per source kind, all behind the :class:`Reader` protocol::

    async with open_reader(stream.source, start_after=checkpoint) as reader:
        async for row in reader:
            ...

A file source resumes after a seq (``start_after``). A database source (``sqlite``, ``postgres``)
resumes after a position (``since``): each row it yields is an :class:`SqlRow` carrying its
``(cursor, key)`` position, and seqs count 1, 2, 3… afresh in every read.

Bad input never crashes a reader and never vanishes: a row that cannot be read is a ``BadRow`` with
the reason, and gets its own outcome. Only a source that cannot be read at all raises ``SourceError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from syncengine.config import SourceConfig, SqlSourceConfig
from syncengine.errors import SourceError
from syncengine.readers.base import IDLE, BadRow, Idle, Reader, Row, SourceRow
from syncengine.readers.csv_reader import CsvReader
from syncengine.readers.jsonl import JsonlReader
from syncengine.readers.postgres_reader import PostgresReader
from syncengine.readers.sql import Position, SqlRow, SqlSpec
from syncengine.readers.sqlite_reader import SqliteReader

__all__ = [
    "IDLE",
    "BadRow",
    "Idle",
    "CsvReader",
    "JsonlReader",
    "Position",
    "PostgresReader",
    "Reader",
    "Row",
    "SourceRow",
    "SqlRow",
    "SqlSpec",
    "SqliteReader",
    "open_reader",
]


def open_reader(
    source: SourceConfig | SqlSourceConfig,
    *,
    start_after: int = 0,
    since: Position | None = None,
    environ: Mapping[str, str] | None = None,
) -> Reader:
    """A reader for ``source``; the file or database opens on first use.

    A file source skips rows with ``seq <= start_after``; a database source reads strictly after the
    position ``since``. ``environ`` supplies a postgres source's DSN variable (default: ``os.environ``).
    """
    if isinstance(source, SqlSourceConfig):
        if start_after:
            raise ValueError("a database source resumes after a position (since), not after a seq (start_after)")
        spec = SqlSpec(
            table=source.table,
            query=source.query,
            key=source.key,
            cursor=source.cursor,
            lag_seconds=source.lag_seconds,
            page_size=source.page_size,
        )
        if source.kind == "sqlite" and source.path is not None:
            return SqliteReader(source.path, spec, since=since)
        if source.kind == "postgres" and source.dsn_env is not None:
            env = os.environ if environ is None else environ
            return PostgresReader(source.dsn_env, spec, environ=env, since=since)
        raise SourceError(source.kind, f"no reader for database source kind {source.kind!r}")
    if since is not None:
        raise ValueError("a file source resumes after a seq (start_after), not after a position (since)")
    if source.kind == "csv":
        return CsvReader(source, start_after=start_after)
    if source.kind == "jsonl":
        return JsonlReader(source, start_after=start_after)
    # config.py admits only the kinds above; a hand-built SourceConfig may not.
    raise SourceError(str(source.path), f"no reader for source kind {source.kind!r}")
