"""A source row -> a :class:`~syncengine.model.Change`, or an ``INVALID`` :class:`~syncengine.model.Outcome`.

This runs once per row on the hot path, so each stream's mapping is compiled once into a tuple of
``(field, column, converter, required)`` and reused (:func:`compile_mapping`; :func:`to_change` keeps
the compiled form per stream).

Absent is not null: a column missing from the row is not sent; a present ``None`` is sent as JSON
null, which clears the field; constants are always sent. A row with several problems is refused once,
with the first problem's code and every problem in the message, so it can be fixed in one go.

Codes of refused rows: ``BAD_ROW`` (the reader could not read it), ``MISSING_KEY``, ``MISSING_PARENT``,
``BAD_KEY`` (the key or parent has the wrong type, or a record id is not all digits), ``BAD_VALUE`` (a
cell does not fit its type), ``MISSING_FIELD`` (a required column is absent, null or blank).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Final

import orjson

from syncengine.config import StreamConfig
from syncengine.model import JSON, Change, Outcome, Status
from syncengine.readers.base import BadRow, SourceRow

__all__ = [
    "Converter",
    "Mapper",
    "compile_mapping",
    "to_change",
]

Converter = Callable[[JSON], JSON]  # raises ValueError (or TypeError/OverflowError) when it cannot


def to_change(stream: StreamConfig, row: SourceRow | BadRow) -> Change | Outcome:
    """Map one row of ``stream``; the compiled mapping is cached per stream object."""
    entry = _compiled.get(id(stream))
    if entry is None or entry[0] is not stream:
        if len(_compiled) >= 256:  # streams are few; this only bounds what tests may create
            _compiled.clear()
        entry = _compiled[id(stream)] = (stream, Mapper(stream))
    return entry[1](row)


def compile_mapping(stream: StreamConfig) -> Mapper:
    """The mapping of ``stream``, compiled: call it with each row."""
    return Mapper(stream)


# Keyed by id() and holding the stream itself, so the id cannot be reused while the entry lives.
_compiled: dict[int, tuple[StreamConfig, Mapper]] = {}


class Mapper:
    """One stream's mapping, compiled. ``mapper(row)`` is :func:`to_change` without the cache lookup."""

    __slots__ = ("_by_id", "_columns", "_constants", "_delete", "_key", "_parent", "_parent_by_id", "stream")

    def __init__(self, stream: StreamConfig) -> None:
        self.stream = stream
        self._key = stream.match.column
        self._by_id = stream.match.field is None
        self._parent: str | None = stream.parent.column if stream.parent else None
        self._parent_by_id = stream.parent is not None and stream.parent.field is None
        self._delete = stream.delete_when
        self._constants: tuple[tuple[str, JSON], ...] = tuple(
            (f.field, f.value) for f in stream.fields if f.column is None
        )
        self._columns: tuple[tuple[str, str, Converter | None, bool], ...] = tuple(
            (f.field, f.column, _CONVERTERS[f.type], f.required) for f in stream.fields if f.column is not None
        )

    def __call__(self, row: SourceRow | BadRow) -> Change | Outcome:
        stream = self.stream
        if type(row) is BadRow:
            return _invalid(stream, row.seq, "", None, {"_raw": row.raw}, [("BAD_ROW", row.reason)])
        assert isinstance(row, SourceRow)
        values = row.values
        errors: list[tuple[str, str]] = []  # (code, message); the first code names the outcome
        key, parent = self._keys(values, errors)

        delete = self._delete
        if delete is not None and _flag(values.get(delete.column)) in delete.values:
            # A delink needs only the keys: the row's other cells do not matter.
            if errors:
                return _invalid(stream, row.seq, key, parent, values, errors)
            return Change(
                stream=stream.name,
                seq=row.seq,
                target=delete.target,
                key=key,
                parent=parent,
                fields={},
                source_row=values,
            )

        fields = self._fields(values, errors)
        if errors:
            return _invalid(stream, row.seq, key, parent, values, errors)
        return Change(
            stream=stream.name,
            seq=row.seq,
            target=stream.target,
            key=key,
            parent=parent,
            fields=fields,
            source_row=values,
        )

    def _keys(self, values: dict[str, JSON], errors: list[tuple[str, str]]) -> tuple[str, str | None]:
        """The record key and the parent key of a row ("" and None where missing: ``errors`` says why)."""
        key = _key_of(values, self._key, self._by_id)
        if type(key) is tuple:
            errors.append(key)
            key = ""
        parent: str | None = None
        if self._parent is not None:
            found = _key_of(values, self._parent, self._parent_by_id)
            if type(found) is tuple:
                errors.append(("MISSING_PARENT" if found[0] == "MISSING_KEY" else found[0], found[1]))
            else:
                assert isinstance(found, str)
                parent = found
        assert isinstance(key, str)
        return key, parent

    def _fields(self, values: dict[str, JSON], errors: list[tuple[str, str]]) -> dict[str, JSON]:
        """The CRM fields of a row: absent cells are not sent, nulls clear, bad values are ``errors``."""
        fields: dict[str, JSON] = dict(self._constants)
        for name, column, convert, required in self._columns:
            value = values.get(column)
            if value is None:
                if column not in values:  # absent: not sent
                    if required:
                        errors.append(("MISSING_FIELD", f"column {column!r} is required but missing"))
                elif required:
                    errors.append(("MISSING_FIELD", f"column {column!r} is required but null"))
                else:
                    fields[name] = None  # an explicit null clears the field
                continue
            if type(value) is str:
                if required and not value.strip():
                    errors.append(("MISSING_FIELD", f"column {column!r} is required but empty"))
                    continue
                if convert is None:  # a string to a string field: the common case, kept cheap
                    fields[name] = value
                    continue
            try:
                fields[name] = (convert or _string)(value)
            except (ValueError, TypeError, OverflowError):
                errors.append(("BAD_VALUE", f"column {column!r}: {_show(value)} is not {_NOUNS[convert]}"))
        return fields


def _flag(value: JSON) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value).strip().lower() if value is not None else ""


def _key_of(values: dict[str, JSON], column: str, by_id: bool) -> str | tuple[str, str]:
    """The key in ``column`` as a stripped string, or the (code, message) saying why there is none."""
    value = values.get(column)
    if type(value) is str:
        key = value.strip()
    elif type(value) is int:
        key = str(value)
    elif value is None:
        key = ""
    else:
        return ("BAD_KEY", f"column {column!r}: {_show(value)} is not a key (a string or an integer)")
    if not key:
        return ("MISSING_KEY", f"column {column!r} is empty or missing")
    if by_id and not (key.isascii() and key.isdigit()):
        return ("BAD_KEY", f"column {column!r}: {_show(value)} is not a record id (Zoho ids are all digits)")
    return key


def _invalid(
    stream: StreamConfig,
    seq: int,
    key: str,
    parent: str | None,
    source_row: dict[str, JSON],
    errors: list[tuple[str, str]],
) -> Outcome:
    change = Change(
        stream=stream.name,
        seq=seq,
        target=stream.target,
        key=key,
        parent=parent,
        fields={},
        source_row=source_row,
    )
    message = "; ".join(message for _, message in errors)
    return Outcome(change=change, status=Status.INVALID, code=errors[0][0], message=message)


def _show(value: JSON) -> str:
    shown = repr(value) if isinstance(value, str) else orjson.dumps(value).decode()
    return shown if len(shown) <= 60 else shown[:57] + "..."


# --------------------------------------------------------------------------------------------------
# Converters: JSON value in (a CSV cell is a string), JSON value out, ValueError when it does not fit.

_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})")
_BOOLEANS: Final = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _string(value: JSON) -> JSON:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ValueError  # an object or array is not a string


def _integer(value: JSON) -> JSON:
    if type(value) is int:
        return value
    if type(value) is str and _INTEGER.fullmatch(text := value.strip()):
        return int(text)
    if type(value) is float and value.is_integer():
        return int(value)
    raise ValueError


def _float(value: JSON) -> JSON:
    if type(value) is int or type(value) is float:
        result = float(value)
    elif type(value) is str and _FLOAT.fullmatch(text := value.strip()):
        result = float(text)
    else:
        raise ValueError
    if not math.isfinite(result):  # JSON has no inf
        raise ValueError
    return result


def _boolean(value: JSON) -> JSON:
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if type(value) is str and (found := _BOOLEANS.get(value.strip().lower())) is not None:
        return found
    raise ValueError


def _date(value: JSON) -> JSON:
    if type(value) is str and _DATE.fullmatch(text := value.strip()):
        return date.fromisoformat(text).isoformat()  # raises on 2024-02-30
    raise ValueError


def _datetime(value: JSON) -> JSON:
    """Zoho wants ``yyyy-MM-ddTHH:mm:ss±HH:mm``: normalised to that, to the second."""
    if type(value) is str and _DATETIME.fullmatch(text := value.strip()):
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is not None:
            return moment.replace(microsecond=0).isoformat()
    raise ValueError


def _json(value: JSON) -> JSON:
    if isinstance(value, str):
        parsed: JSON = orjson.loads(value)  # orjson.JSONDecodeError is a ValueError
        return parsed
    return value  # from JSONL: already JSON


_CONVERTERS: Final[dict[str, Converter | None]] = {
    "string": None,  # None: strings pass untouched; other JSON values go through _string
    "integer": _integer,
    "float": _float,
    "boolean": _boolean,
    "date": _date,
    "datetime": _datetime,
    "json": _json,
}
_NOUNS: Final[dict[Converter | None, str]] = {
    None: "a string",
    _integer: "an integer",
    _float: "a float",
    _boolean: "a boolean (true/false, yes/no, 1/0)",
    _date: "a date (YYYY-MM-DD)",
    _datetime: "an ISO 8601 datetime with an offset (2024-05-10T14:30:00+02:00)",
    _json: "valid JSON",
}
