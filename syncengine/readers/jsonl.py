"""Streaming JSONL: one JSON object per line, ``seq`` = the line number.

Blank lines are skipped but counted, so ``seq`` always names the line an operator would open. A line
that is not JSON, not valid in the encoding, or not an object becomes a :class:`BadRow`. Values keep
their JSON types: ``null`` stays ``None`` (it clears the field), a missing key stays missing (not sent).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import BinaryIO

import orjson

from syncengine.config import SourceConfig
from syncengine.readers.base import BadRow, ChunkedFileReader, Row, SourceRow

__all__ = ["JsonlReader"]

_BOM = b"\xef\xbb\xbf"
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class JsonlReader(ChunkedFileReader):
    """Reads one JSONL file as configured by a stream's ``source``."""

    def __init__(self, source: SourceConfig, *, start_after: int = 0) -> None:
        super().__init__(source.path, start_after=start_after)
        self.source = source

    def _parse(self, file: BinaryIO) -> Generator[Row, None, None]:
        encoding = self.source.encoding
        utf8 = encoding == "utf-8"  # orjson reads UTF-8 bytes directly, and checks them itself
        skip = self.start_after
        seq = 0
        for data in file:
            seq += 1
            if seq <= skip:  # resuming: not even decoded
                continue
            if seq == 1 and data.startswith(_BOM):
                data = data[len(_BOM) :]
            try:
                value = orjson.loads(data if utf8 else data.decode(encoding))
            except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
                if not data.strip():
                    continue  # a blank line: checked only here, off the hot path
                yield BadRow(seq=seq, raw=_raw(data, encoding), reason=_reason(data, encoding, exc))
                continue
            if type(value) is not dict:
                kind = "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)
                yield BadRow(seq=seq, raw=_raw(data, encoding), reason=f"line is {kind}, not a JSON object")
                continue
            yield SourceRow(seq=seq, values=value)


def _raw(data: bytes, encoding: str) -> str:
    return data.decode(encoding, "replace").rstrip("\r\n")


def _reason(data: bytes, encoding: str, exc: Exception) -> str:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as bad:
        return f"byte 0x{data[bad.start]:02x} at position {bad.start} is not valid {encoding}"
    return f"not valid JSON: {exc}"
