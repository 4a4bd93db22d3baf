"""Streaming CSV: one header row, then one :class:`SourceRow` per record (or a :class:`BadRow`).

The file is read as bytes and decoded line by line, so an undecodable byte spoils only the row it is
in; the stdlib parser runs in strict mode, so bad quoting is reported instead of guessed at. A quoted
cell may span lines: ``seq`` counts records, not lines. Blank lines are skipped but counted, so with
no multi-line cells ``seq`` is the line number minus one. Header names are stripped of surrounding
whitespace; an empty or repeated header name makes the whole file unreadable (``SourceError``),
since no row of it could be mapped reliably.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Generator, Iterator
from typing import BinaryIO

from syncengine.config import SourceConfig
from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers.base import BadRow, ChunkedFileReader, Row, SourceRow

__all__ = ["CsvReader"]

_BOM = b"\xef\xbb\xbf"


class CsvReader(ChunkedFileReader):
    """Reads one CSV file as configured by a stream's ``source``."""

    def __init__(self, source: SourceConfig, *, start_after: int = 0) -> None:
        super().__init__(source.path, start_after=start_after)
        self.source = source

    def _parse(self, file: BinaryIO) -> Generator[Row, None, None]:
        encoding = self.source.encoding
        record_text: list[str] = []  # the lines of the record being parsed: BadRow.raw
        bad_bytes: list[str] = []  # why lines of the record being parsed could not be decoded
        line_no = 0

        def lines() -> Iterator[str]:
            nonlocal line_no
            for data in file:
                line_no += 1
                if line_no == 1 and data.startswith(_BOM):
                    data = data[len(_BOM) :]
                try:
                    text = data.decode(encoding)
                except UnicodeDecodeError as exc:
                    text = data.decode(encoding, "replace")
                    bad_bytes.append(
                        f"line {line_no}: byte 0x{data[exc.start]:02x} at position {exc.start} is not valid {encoding}"
                    )
                record_text.append(text)
                yield text

        reader = csv.reader(lines(), delimiter=self.source.delimiter, quotechar=self.source.quotechar, strict=True)
        header = self._header(reader, bad_bytes)
        if header is None:
            return
        width = len(header)
        skip = self.start_after
        empty_is_null = self.source.empty == "null"
        seq = 0
        while True:
            record_text.clear()
            bad_bytes.clear()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                seq += 1
                if seq > skip:
                    yield BadRow(seq=seq, raw=_raw(record_text), reason=f"bad CSV quoting: {exc}")
                continue
            seq += 1
            if seq <= skip or not cells:  # resumed past it, or a blank line
                continue
            if bad_bytes:
                yield BadRow(seq=seq, raw=_raw(record_text), reason="; ".join(bad_bytes))
            elif len(cells) != width:
                reason = f"row has {len(cells)} cells, header has {width}"
                yield BadRow(seq=seq, raw=_raw(record_text), reason=reason)
            elif "" not in cells:
                yield SourceRow(seq=seq, values=dict(zip(header, cells, strict=True)))
            else:
                values: dict[str, JSON]
                if empty_is_null:
                    values = {h: (c or None) for h, c in zip(header, cells, strict=True)}
                else:  # absent: an empty cell says nothing about the field, so the key is left out
                    values = {h: c for h, c in zip(header, cells, strict=True) if c}
                yield SourceRow(seq=seq, values=values)

    def _header(self, reader: Iterator[list[str]], bad_bytes: list[str]) -> list[str] | None:
        """The first non-blank record, checked; ``None`` for an empty file."""
        where = str(self.path)
        for cells in _records(reader, where, bad_bytes, self.source.encoding):
            if bad_bytes:
                raise SourceError(where, f"the header is not valid {self.source.encoding}: {bad_bytes[0]}")
            if not cells:
                continue
            header = [c.strip() for c in cells]
            unnamed = [str(i) for i, name in enumerate(header, start=1) if not name]
            if unnamed:
                raise SourceError(where, f"header column(s) {', '.join(unnamed)} have no name")
            repeated = sorted(name for name, count in Counter(header).items() if count > 1)
            if repeated:
                raise SourceError(where, f"duplicate header name(s): {', '.join(map(repr, repeated))}")
            return header
        return None


def _records(reader: Iterator[list[str]], where: str, bad_bytes: list[str], encoding: str) -> Iterator[list[str]]:
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # Bytes in another encoding (UTF-16, say) often break the CSV syntax too: name the real cause.
            if bad_bytes:
                raise SourceError(where, f"the header is not valid {encoding}: {bad_bytes[0]}") from exc
            raise SourceError(where, f"the header cannot be parsed: {exc}") from exc


def _raw(lines: list[str]) -> str:
    return "".join(lines).rstrip("\r\n")
