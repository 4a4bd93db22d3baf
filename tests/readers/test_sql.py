"""The SQL readers' keyset paging, on real SQLite files and a real PostgreSQL server alike.

Every test here runs once per database: rows in (cursor, key) order, page boundaries among equal cursor
values, resuming after a position, the lag window, NULL cursors, and the errors a wrong source gives.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers.base import Reader, SourceRow
from syncengine.readers.postgres_reader import PostgresReader
from syncengine.readers.sql import KeysetReader, Position, SqlRow, SqlSpec
from syncengine.readers.sqlite_reader import SqliteReader
from tests.pg import postgres_database, postgres_dsn  # noqa: F401 - fixtures used by the postgres backend

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

_TYPES = {  # a column kind -> (SQLite type, PostgreSQL type)
    "int": ("INTEGER", "bigint"),
    "text": ("TEXT", "text"),
    "ts": ("TEXT", "timestamptz"),  # SQLite keeps timestamps as ISO-8601 text
}


class Backend:
    """One database holding test tables, and readers over it."""

    kind: str

    async def create(self, table: str, columns: dict[str, str], rows: Sequence[Sequence[object]]) -> None:
        raise NotImplementedError

    def reader(self, spec: SqlSpec, since: Position | None = None) -> KeysetReader:
        raise NotImplementedError


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def create(self, table: str, columns: dict[str, str], rows: Sequence[Sequence[object]]) -> None:
        ddl = ", ".join(f"{name} {_TYPES[kind][0]}" for name, kind in columns.items())
        marks = ", ".join("?" for _ in columns)
        with sqlite3.connect(self.path) as db:
            db.execute(f"CREATE TABLE {table} ({ddl})")
            db.executemany(
                f"INSERT INTO {table} VALUES ({marks})",
                [[v.isoformat() if isinstance(v, datetime) else v for v in row] for row in rows],
            )
        db.close()

    def reader(self, spec: SqlSpec, since: Position | None = None) -> KeysetReader:
        return SqliteReader(self.path, spec, since=since)


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def create(self, table: str, columns: dict[str, str], rows: Sequence[Sequence[object]]) -> None:
        ddl = ", ".join(f"{name} {_TYPES[kind][1]}" for name, kind in columns.items())
        db = await asyncpg.connect(self.dsn)
        try:
            await db.execute(f"CREATE TABLE {table} ({ddl})")
            if rows:
                await db.copy_records_to_table(table, records=[tuple(row) for row in rows])
        finally:
            await db.close()

    def reader(self, spec: SqlSpec, since: Position | None = None) -> KeysetReader:
        return PostgresReader("ERP_DSN", spec, environ={"ERP_DSN": self.dsn}, since=since)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "erp.db")
    return PostgresBackend(request.getfixturevalue("postgres_database"))


async def read_all(reader: KeysetReader) -> list[SqlRow]:
    async with reader:
        return [row async for row in reader]


def iso(moment: datetime) -> str:
    return moment.isoformat()


CONTACTS = {"id": "int", "updated_at": "ts", "name": "text"}


async def test_full_table_read(db: Backend) -> None:
    """A table is read whole in (cursor, key) order: JSON values, seq 1, 2, 3…, and each row's position."""
    await db.create("contacts", CONTACTS, [(2, T0, "Grace"), (1, T0 + timedelta(seconds=1), "Ada"), (3, None, "Alan")])
    reader = db.reader(SqlSpec(table="contacts", key="id", cursor="updated_at"))
    assert isinstance(reader, Reader)
    rows = await read_all(reader)
    assert rows == [
        SqlRow(seq=1, values={"id": 3, "updated_at": None, "name": "Alan"}, position=(None, 3)),
        SqlRow(seq=2, values={"id": 2, "updated_at": iso(T0), "name": "Grace"}, position=(iso(T0), 2)),
        SqlRow(
            seq=3,
            values={"id": 1, "updated_at": iso(T0 + timedelta(seconds=1)), "name": "Ada"},
            position=(iso(T0 + timedelta(seconds=1)), 1),
        ),
    ]
    assert all(isinstance(row, SourceRow) and not row.replay for row in rows)


async def test_key_only_read(db: Backend) -> None:
    """Without a cursor, rows come in key order and the position is (None, key)."""
    await db.create("contacts", CONTACTS, [(i, T0, f"n{i}") for i in (5, 3, 9, 1)])
    rows = await read_all(db.reader(SqlSpec(table="contacts", key="id", page_size=2)))
    assert [(row.seq, row.position) for row in rows] == [(1, (None, 1)), (2, (None, 3)), (3, (None, 5)), (4, (None, 9))]


async def test_query_read(db: Backend) -> None:
    """A query is wrapped as a subquery: its own WHERE, aliases and a trailing semicolon all work."""
    await db.create("contacts", CONTACTS, [(i, T0 + timedelta(seconds=i), f"n{i}") for i in range(1, 8)])
    query = "SELECT id AS erp_id, updated_at AS changed, upper(name) AS name FROM contacts WHERE id % 2 = 1 ;\n"
    rows = await read_all(db.reader(SqlSpec(query=query, key="erp_id", cursor="changed", page_size=3)))
    assert [row.values["erp_id"] for row in rows] == [1, 3, 5, 7]
    assert rows[0].values == {"erp_id": 1, "changed": iso(T0 + timedelta(seconds=1)), "name": "N1"}
    assert rows[-1].position == (iso(T0 + timedelta(seconds=7)), 7)


async def test_empty_table(db: Backend) -> None:
    """An empty table yields nothing and no error."""
    await db.create("contacts", CONTACTS, [])
    assert await read_all(db.reader(SqlSpec(table="contacts", key="id", cursor="updated_at"))) == []


def shared_timestamps(count: int = 250, group: int = 37) -> list[tuple[int, datetime, str]]:
    """Rows whose cursor values repeat in runs of ``group``, shuffled so insert order says nothing."""
    rows = [(i, T0 + timedelta(seconds=i // group), f"n{i}") for i in range(1, count + 1)]
    random.Random(7).shuffle(rows)
    return rows


@pytest.mark.parametrize("page_size", [1, 7, 10, 37, 1000], ids=lambda n: f"page-{n}")
async def test_equal_cursors_across_page_boundaries(db: Backend, page_size: int) -> None:
    """Runs of equal cursor values spanning many page boundaries: no row skipped, none repeated."""
    data = shared_timestamps()
    await db.create("contacts", CONTACTS, data)
    rows = await read_all(db.reader(SqlSpec(table="contacts", key="id", cursor="updated_at", page_size=page_size)))
    expected = sorted((ts, i) for i, ts, _ in data)
    assert [row.position for row in rows] == [(iso(ts), i) for ts, i in expected]
    assert [row.seq for row in rows] == list(range(1, len(data) + 1))


@pytest.mark.parametrize("after", [0, 5, 36, 37, 100, 248, 249], ids=lambda n: f"after-row-{n}")
async def test_since_resumes_strictly_after_a_position(db: Backend, after: int) -> None:
    """Reading since a row's position yields exactly the rows after it, numbered from seq 1 again."""
    await db.create("contacts", CONTACTS, shared_timestamps())
    spec = SqlSpec(table="contacts", key="id", cursor="updated_at", page_size=10)
    everything = await read_all(db.reader(spec))
    resumed = await read_all(db.reader(spec, since=everything[after].position))
    assert [row.position for row in resumed] == [row.position for row in everything[after + 1 :]]
    assert [row.seq for row in resumed] == list(range(1, len(resumed) + 1))


async def test_since_without_cursor(db: Backend) -> None:
    """Without a cursor, since resumes after the key alone."""
    await db.create("contacts", CONTACTS, [(i, T0, "x") for i in range(1, 30)])
    rows = await read_all(db.reader(SqlSpec(table="contacts", key="id", page_size=4), since=(None, 17)))
    assert [row.values["id"] for row in rows] == list(range(18, 30))


async def test_rows_added_after_the_position_are_read_next_time(db: Backend) -> None:
    """Incremental: a later read from the stored position sees only rows changed since."""
    await db.create("contacts", CONTACTS, [(i, T0 + timedelta(seconds=i), "old") for i in range(1, 6)])
    spec = SqlSpec(table="contacts", key="id", cursor="updated_at")
    first = await read_all(db.reader(spec))
    await db.create("more", CONTACTS, [])  # a second table: creating it must not disturb the first read's position
    assert (await read_all(db.reader(spec, since=first[-1].position))) == []


def lag_rows() -> list[tuple[int, datetime, str]]:
    rows = [(i, T0 + timedelta(seconds=i - 1), f"n{i}") for i in range(1, 11)]  # id 1..10 at T0+0..9 s
    rows += [(11, T0 + timedelta(seconds=4), "late"), (12, T0 + timedelta(seconds=4), "late")]  # share T0+4 with id 5
    return rows


@pytest.mark.parametrize("page_size", [1, 2, 100], ids=lambda n: f"page-{n}")
async def test_lag_rereads_the_overlap(db: Backend, page_size: int) -> None:
    """With lag, the rows within lag of since (up to since) come again first, marked replay; then the rest."""
    await db.create("contacts", CONTACTS, lag_rows())
    spec = SqlSpec(table="contacts", key="id", cursor="updated_at", lag_seconds=2, page_size=page_size)
    since = (iso(T0 + timedelta(seconds=4)), 11)
    rows = await read_all(db.reader(spec, since=since))
    assert [(row.values["id"], row.replay) for row in rows] == [
        (3, True),  # T0+2 s: exactly lag before since
        (4, True),
        (5, True),
        (11, True),  # since itself
        (12, False),  # same cursor as since, higher key: new
        (6, False),
        (7, False),
        (8, False),
        (9, False),
        (10, False),
    ]
    assert [row.seq for row in rows] == list(range(1, 11))


async def test_lag_needs_no_overlap_on_a_first_read(db: Backend) -> None:
    """Lag only widens a resumed read; a read from the start reads everything once."""
    await db.create("contacts", CONTACTS, lag_rows())
    rows = await read_all(db.reader(SqlSpec(table="contacts", key="id", cursor="updated_at", lag_seconds=60)))
    assert len(rows) == 12
    assert not any(row.replay for row in rows)


async def test_null_cursors_come_first(db: Backend) -> None:
    """Rows with a NULL cursor sort lowest (key order), whatever the type; since can stop among them."""
    data: list[tuple[int, datetime | None, str]] = [
        (1, T0 + timedelta(seconds=2), "a"),
        (2, None, "b"),
        (3, T0, "c"),
        (4, T0 + timedelta(seconds=1), "d"),
        (5, None, "e"),
        (6, None, "f"),
    ]
    await db.create("contacts", CONTACTS, data)
    spec = SqlSpec(table="contacts", key="id", cursor="updated_at", page_size=2)
    ids = [row.values["id"] for row in await read_all(db.reader(spec))]
    assert ids == [2, 5, 6, 3, 4, 1]
    assert [row.values["id"] for row in await read_all(db.reader(spec, since=(None, 2)))] == [5, 6, 3, 4, 1]
    assert [row.values["id"] for row in await read_all(db.reader(spec, since=(None, 6)))] == [3, 4, 1]
    assert [row.values["id"] for row in await read_all(db.reader(spec, since=(iso(T0), 3)))] == [4, 1]


async def test_missing_table_is_a_source_error(db: Backend) -> None:
    """A table that does not exist: a SourceError naming it."""
    await db.create("contacts", CONTACTS, [])
    with pytest.raises(SourceError, match="table 'kontacts' does not exist"):
        await read_all(db.reader(SqlSpec(table="kontacts", key="id")))


async def test_bad_query_is_a_source_error(db: Backend) -> None:
    """A query that cannot run: a SourceError saying so, with the database's reason."""
    await db.create("contacts", CONTACTS, [])
    with pytest.raises(SourceError, match="the query cannot run"):
        await read_all(db.reader(SqlSpec(query="SELECT id FROM nowhere", key="id")))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            SqlSpec(table="contacts", key="erp_id"),
            r"key column 'erp_id' is not in table 'contacts' \(its columns: id, ",
        ),
        (SqlSpec(table="contacts", key="id", cursor="modified"), "cursor column 'modified' is not in table"),
        (SqlSpec(query="SELECT id, id AS id FROM contacts", key="id"), "returns two columns named 'id'"),
    ],
    ids=["key", "cursor", "duplicate-column"],
)
async def test_wrong_columns_are_source_errors(db: Backend, spec: SqlSpec, message: str) -> None:
    """A key or cursor column the source lacks, or a query with two equal column names, is refused up front."""
    await db.create("contacts", CONTACTS, [(1, T0, "a")])
    if db.kind == "sqlite" and spec.query is not None:
        # SQLite itself renames a repeated column of a subquery ("id:1"), so no value is lost.
        assert [row.values for row in await read_all(db.reader(spec))] == [{"id": 1, "id:1": 1}]
        return
    with pytest.raises(SourceError, match=message):
        await read_all(db.reader(spec))


async def test_a_key_that_is_not_unique_is_refused(db: Backend) -> None:
    """Two rows with one (cursor, key) in a page: a SourceError, since paging on such a key could skip rows."""
    await db.create("contacts", CONTACTS, [(1, T0, "a"), (1, T0, "b"), (2, T0, "c")])
    with pytest.raises(SourceError, match="key column 'id' is not unique"):
        await read_all(db.reader(SqlSpec(table="contacts", key="id", cursor="updated_at")))


async def test_aclose_mid_read_and_reuse_after_close(db: Backend) -> None:
    """Closing a reader mid-read releases it; iterating a closed reader ends at once."""
    await db.create("contacts", CONTACTS, [(i, T0, "x") for i in range(1, 50)])
    reader = db.reader(SqlSpec(table="contacts", key="id", page_size=5))
    first = await anext(reader)
    assert first.seq == 1
    await reader.aclose()
    await reader.aclose()  # harmless twice
    assert [row async for row in reader] == []


@pytest.mark.slow
async def test_memory_stays_flat_on_100k_rows(db: Backend) -> None:
    """100,000 rows stream through one page at a time: peak traced memory is a small fraction of the data."""
    import tracemalloc

    filler = "x" * 80
    data = [(i, T0 + timedelta(seconds=i // 10), filler) for i in range(1, 100_001)]
    await db.create("contacts", CONTACTS, data)
    del data
    tracemalloc.start()
    try:
        count = 0
        last: JSON = None
        async with db.reader(SqlSpec(table="contacts", key="id", cursor="updated_at")) as reader:
            async for row in reader:
                count += 1
                last = row.values["id"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last) == (100_000, 100_000)
    # The rows as dicts would take well over 40 MB at once; one page of 1,000 takes about 0.5 MB.
    assert peak < 5_000_000, f"peak {peak} bytes"
