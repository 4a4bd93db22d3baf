"""The SQLite reader on real files: SQLite's own types, text timestamps under lag, files that are not databases."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import anyio
import pytest

from syncengine.errors import SourceError
from syncengine.readers.sql import SqlRow, SqlSpec
from syncengine.readers.sqlite_reader import SqliteReader


def database(tmp_path: Path, *statements: str) -> Path:
    path = tmp_path / "erp.db"
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    db.close()
    return path


async def read_all(reader: SqliteReader) -> list[SqlRow]:
    async with reader:
        return [row async for row in reader]


async def test_sqlite_types_become_json(tmp_path: Path) -> None:
    """Integers, reals, text and NULL pass as they are; a blob becomes base64; inf becomes "Infinity"."""
    path = database(
        tmp_path,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, r REAL, s TEXT, b BLOB, z TEXT)",
        "INSERT INTO t VALUES (1, -7, 2.5, 'Zoë', x'00ff10', NULL)",
        "INSERT INTO t VALUES (2, 9007199254740993, 9e999, '', x'', NULL)",
        "INSERT INTO t VALUES (3, 0, -9e999, 'x', NULL, NULL)",
    )
    rows = await read_all(SqliteReader(path, SqlSpec(table="t", key="id")))
    assert [row.values for row in rows] == [
        {"id": 1, "n": -7, "r": 2.5, "s": "Zoë", "b": base64.b64encode(b"\x00\xff\x10").decode(), "z": None},
        {"id": 2, "n": 9007199254740993, "r": "Infinity", "s": "", "b": "", "z": None},
        {"id": 3, "n": 0, "r": "-Infinity", "s": "x", "b": None, "z": None},
    ]


@pytest.mark.parametrize(
    ("stamps", "since_index", "lag", "replayed"),
    [
        (["2024-03-01 09:00:00", "2024-03-01 09:00:03", "2024-03-01 09:00:04", "2024-03-01 09:00:09"], 2, 1.0, [2, 3]),
        (
            ["2024-03-01T09:00:00Z", "2024-03-01T09:00:03Z", "2024-03-01T09:00:04Z", "2024-03-01T09:00:09Z"],
            2,
            1,
            [2, 3],
        ),
        (["2024-03-01 09:00:00.100", "2024-03-01 09:00:00.250", "2024-03-01 09:00:00.300"], 2, 0.05, [2, 3]),
        (["2024-02-28", "2024-02-29", "2024-03-01", "2024-03-02"], 2, 86_400, [2, 3]),
        (["1709283600", "1709283603", "1709283604"], 2, 3, [2, 3]),
    ],
    ids=["space-separated", "zulu", "milliseconds", "dates", "epoch-seconds"],
)
async def test_lag_on_text_timestamps_keeps_their_shape(
    tmp_path: Path, stamps: list[str], since_index: int, lag: float, replayed: list[int]
) -> None:
    """Timestamps kept as text (any ISO shape) or epoch numbers: the lag window compares as the column does."""
    kind = "INTEGER" if stamps[0].isdigit() else "TEXT"
    path = database(tmp_path, f"CREATE TABLE t (id INTEGER PRIMARY KEY, changed {kind})")
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO t VALUES (?, ?)", [(i, int(s) if s.isdigit() else s) for i, s in enumerate(stamps, 1)]
        )
    db.close()
    spec = SqlSpec(table="t", key="id", cursor="changed", lag_seconds=lag)
    everything = await read_all(SqliteReader(path, SqlSpec(table="t", key="id", cursor="changed")))
    rows = await read_all(SqliteReader(path, spec, since=everything[since_index].position))
    assert [row.values["id"] for row in rows if row.replay] == replayed
    assert [row.values["id"] for row in rows if not row.replay] == list(range(since_index + 2, len(stamps) + 1))


async def test_lag_on_a_cursor_that_is_not_a_time_is_a_source_error(tmp_path: Path) -> None:
    """Lag on a cursor holding plain text: a SourceError naming the column, not a wrong window."""
    path = database(tmp_path, "CREATE TABLE t (id INTEGER, code TEXT)", "INSERT INTO t VALUES (1, 'abc')")
    spec = SqlSpec(table="t", key="id", cursor="code", lag_seconds=5)
    with pytest.raises(SourceError, match="lag_seconds needs a cursor that is a date, a timestamp or a number"):
        await read_all(SqliteReader(path, spec, since=("abc", 1)))


async def test_rows_committed_during_a_read_ahead_of_it_are_read(tmp_path: Path) -> None:
    """Each page is its own statement: a row a writer commits ahead of the read position is read too."""
    path = database(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", "PRAGMA journal_mode=WAL")
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO t VALUES (?, 'old')", [(i,) for i in range(1, 11)])
    db.close()
    seen: list[int] = []
    async with SqliteReader(path, SqlSpec(table="t", key="id", page_size=3)) as reader:
        async for row in reader:
            seen.append(int(str(row.values["id"])))
            if len(seen) == 4:
                with sqlite3.connect(path) as writer:  # a writer while the reader is open
                    writer.execute("INSERT INTO t VALUES (20, 'new')")
                writer.close()
    assert seen == [*range(1, 11), 20]


async def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    """A database file that does not exist is a SourceError naming it; none is created."""
    path = tmp_path / "nope.db"
    with pytest.raises(SourceError, match="cannot open: no such file") as caught:
        await read_all(SqliteReader(path, SqlSpec(table="t", key="id")))
    assert caught.value.source == str(path)
    assert not path.exists()


async def test_a_file_that_is_not_a_database_is_a_source_error(tmp_path: Path) -> None:
    """A file that is not SQLite is a SourceError saying so."""
    path = tmp_path / "export.csv"
    path.write_text("id,name\n" * 200)
    with pytest.raises(SourceError, match="not an SQLite database"):
        await read_all(SqliteReader(path, SqlSpec(table="t", key="id")))


async def test_the_reader_never_writes(tmp_path: Path) -> None:
    """The file is opened read-only: a query that would write is refused by SQLite."""
    path = database(tmp_path, "CREATE TABLE t (id INTEGER)")
    spec = SqlSpec(query="INSERT INTO t VALUES (1) RETURNING id", key="id")
    with pytest.raises(SourceError, match="the query cannot run"):
        await read_all(SqliteReader(path, spec))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    db.close()


async def test_schema_qualified_and_quoted_names(tmp_path: Path) -> None:
    """A qualified table name and names needing quotes (spaces, capitals) are read as written."""
    path = database(
        tmp_path,
        'CREATE TABLE "Contact List" ("Contact Id" INTEGER, "Updated At" TEXT)',
        """INSERT INTO "Contact List" VALUES (2, '2024-01-01'), (1, '2024-01-02')""",
    )
    spec = SqlSpec(table="main.Contact List", key="Contact Id", cursor="Updated At")
    rows = await read_all(SqliteReader(path, spec))
    assert [row.position for row in rows] == [("2024-01-01", 2), ("2024-01-02", 1)]


async def test_a_page_cancelled_mid_fetch_is_fetched_again(tmp_path: Path) -> None:
    """Cancelling a read while a page is fetched in the worker thread loses nothing, and repeats nothing."""
    path = database(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1, 10)])
    db.close()
    # A query whose every page first counts to three million: slow enough to be cancelled mid-fetch.
    slow = (
        "SELECT t.id FROM t, (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000000)"
        " SELECT max(x) AS m FROM n) AS pause"
    )
    source = SqliteReader(path, SqlSpec(query=slow, key="id", page_size=4))
    async with source:
        rows = [await anext(source) for _ in range(4)]
        with anyio.move_on_after(0.01):
            # The thread cannot be interrupted: the page completes and is kept, whether or not this
            # await returns it before the cancellation lands.
            rows.append(await anext(source))
        rows += [row async for row in source]
    assert [(row.seq, row.values["id"]) for row in rows] == [(i, i) for i in range(1, 10)]
