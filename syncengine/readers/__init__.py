"""Readers: stream a source's rows, in order, as :class:`SourceRow` or :class:`BadRow`.

One module per source kind, all behind the :class:`Reader` protocol::

    async with open_reader(stream.source, start_after=checkpoint) as reader:
        async for row in reader:
            ...

Bad input never crashes a reader and never vanishes: a row that cannot be read is a ``BadRow`` with
the reason, and gets its own outcome. Only a source that cannot be read at all raises ``SourceError``.
"""

from __future__ import annotations

from syncengine.config import SourceConfig
from syncengine.errors import SourceError
from syncengine.readers.base import BadRow, Reader, Row, SourceRow
from syncengine.readers.csv_reader import CsvReader
from syncengine.readers.jsonl import JsonlReader

__all__ = ["BadRow", "CsvReader", "JsonlReader", "Reader", "Row", "SourceRow", "open_reader"]


def open_reader(source: SourceConfig, *, start_after: int = 0) -> Reader:
    """A reader for ``source``, skipping rows with ``seq <= start_after``; the file opens on first use."""
    if source.kind == "csv":
        return CsvReader(source, start_after=start_after)
    if source.kind == "jsonl":
        return JsonlReader(source, start_after=start_after)
    # config.py admits only the kinds above; a hand-built SourceConfig may not.
    raise SourceError(str(source.path), f"no reader for source kind {source.kind!r}")
