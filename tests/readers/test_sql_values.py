"""The SQL readers' pure parts: what an SqlSpec accepts, how values become JSON, how lag is subtracted."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest

from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers.sql import SqlRow, SqlSpec, minus_lag, quote_name, to_json
from syncengine.readers.sqlite_reader import SqliteReader


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": "id"}, "exactly one of table and query"),
        ({"key": "id", "table": "t", "query": "SELECT 1"}, "exactly one of table and query"),
        ({"key": " ", "table": "t"}, "key must not be empty"),
        ({"key": "id", "table": "t", "cursor": "id"}, "cursor must be a column other than the key"),
        ({"key": "id", "table": "t", "page_size": 0}, "page_size must be at least 1"),
        ({"key": "id", "table": "t", "cursor": "c", "lag_seconds": -1}, "lag_seconds must be a number >= 0"),
        ({"key": "id", "table": "t", "cursor": "c", "lag_seconds": math.inf}, "lag_seconds must be a number >= 0"),
        ({"key": "id", "table": "t", "lag_seconds": 5}, "lag_seconds needs a cursor column"),
    ],
    ids=["neither", "both", "blank-key", "cursor-is-key", "page-0", "negative-lag", "inf-lag", "lag-no-cursor"],
)
def test_spec_refuses_what_cannot_be_paged(kwargs: dict[str, object], message: str) -> None:
    """An SqlSpec that could not be read correctly is refused when built (config.py says it first, in its terms)."""
    with pytest.raises(ValueError, match=message):
        SqlSpec(**kwargs)  # type: ignore[arg-type]


def test_relation_quotes_names_and_drops_trailing_semicolons() -> None:
    """A table is quoted part by part; a query loses its trailing semicolons and blanks."""
    assert SqlSpec(table='sales.My "Odd" Table', key="id").relation == 'SELECT * FROM "sales"."My ""Odd"" Table"'
    assert SqlSpec(query="  SELECT 1 AS id ;; \n", key="id").relation == "SELECT 1 AS id"
    assert quote_name("a") == '"a"'


def test_sql_row_is_a_source_row_with_a_position() -> None:
    """SqlRow is a frozen SourceRow: the pipeline treats it as one, and can read its position."""
    row = SqlRow(seq=3, values={"id": 7}, position=("2024-01-01", 7))
    assert (row.seq, row.values, row.raw, row.position, row.replay) == (3, {"id": 7}, None, ("2024-01-01", 7), False)
    with pytest.raises(AttributeError):
        row.seq = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("text", "text"),
        (True, True),
        (2**70, 2**70),
        (0.5, 0.5),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (Decimal("12.50"), "12.50"),
        (Decimal("1E+3"), "1E+3"),
        (datetime(2024, 3, 1, 9, 0, 0, 250000, tzinfo=UTC), "2024-03-01T09:00:00.250000+00:00"),
        (datetime(2024, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5))), "2024-03-01T09:00:00-05:00"),
        (datetime(2024, 3, 1, 9, 0), "2024-03-01T09:00:00"),
        (date(2024, 2, 29), "2024-02-29"),
        (time(13, 45), "13:45:00"),
        (timedelta(minutes=90), 5400.0),
        (UUID(int=7), "00000000-0000-0000-0000-000000000007"),
        (b"\x00\xff", "AP8="),
        (memoryview(b"hi"), "aGk="),
        ([1, Decimal("2.0"), None], [1, "2.0", None]),
        ({"a": {"b": date(2024, 1, 1)}}, {"a": {"b": "2024-01-01"}}),
        (Path("x"), "x"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_values_become_json(value: object, expected: JSON) -> None:
    """Each database type has one JSON form (the module docstring lists them)."""
    assert to_json(value) == expected


@pytest.mark.parametrize(
    ("value", "lag", "expected"),
    [
        (100, 5, 95),
        (100, 0.5, 99),  # an integer cursor stays an integer, rounded down
        (10.0, 2.5, 7.5),
        ("2024-03-01T09:00:05+00:00", 5, "2024-03-01T09:00:00+00:00"),
        ("2024-03-01 09:00:05", 5, "2024-03-01 09:00:00"),
        ("2024-03-01T09:00:05Z", 5, "2024-03-01T09:00:00Z"),
        ("2024-03-01T09:00:05.250", 0.1, "2024-03-01T09:00:05.150"),
        ("2024-03-01T09:00:05.250000+02:00", 86_400, "2024-02-29T09:00:05.250000+02:00"),
        ("2024-03-01T09:00:05", 0.5, "2024-03-01T09:00:04"),  # no fraction: truncated, the window only widens
        ("2024-03-01", 1, "2024-02-29"),  # a date: whole days, rounded up
        ("2024-03-01", 86_400 * 2, "2024-02-28"),
    ],
)
def test_minus_lag_keeps_the_shape(value: JSON, lag: float, expected: JSON) -> None:
    """Lag subtracts seconds and writes the result as the cursor is written, so text comparison holds."""
    assert minus_lag(value, lag, "changed") == expected


@pytest.mark.parametrize("value", ["abc", True, None, [1]], ids=["text", "bool", "null", "list"])
def test_minus_lag_refuses_what_is_not_a_time(value: JSON) -> None:
    """A cursor value that is no date, timestamp or number cannot be lagged."""
    with pytest.raises(ValueError, match="column 'changed'"):
        minus_lag(value, 5, "changed")


def test_since_with_a_cursor_on_a_source_without_one_is_refused(tmp_path: Path) -> None:
    """A stored position with a cursor value cannot resume a read by key alone: it could skip rows."""
    with pytest.raises(SourceError, match="read without a cursor column"):
        SqliteReader(tmp_path / "x.db", SqlSpec(table="t", key="id"), since=("2024-01-01", 3))
    with pytest.raises(ValueError, match="must name a key"):
        SqliteReader(tmp_path / "x.db", SqlSpec(table="t", key="id"), since=(None, None))
