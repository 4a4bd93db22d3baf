"""The PostgreSQL reader against a real server: PostgreSQL's types, positions of every type, the DSN kept secret."""

from __future__ import annotations

import base64
import socket
from collections.abc import Sequence

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest

from syncengine.errors import SourceError
from syncengine.readers.postgres_reader import PostgresReader
from syncengine.readers.sql import Position, SqlRow, SqlSpec
from tests.pg import postgres_database, postgres_dsn  # noqa: F401 - fixtures


async def run(dsn: str, *statements: str) -> None:
    db = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await db.execute(statement)
    finally:
        await db.close()


def reader(dsn: str, spec: SqlSpec, since: Position | None = None) -> PostgresReader:
    return PostgresReader("ERP_DSN", spec, environ={"ERP_DSN": dsn}, since=since)


async def read_all(source: PostgresReader) -> list[SqlRow]:
    async with source:
        return [row async for row in source]


async def test_postgres_types_become_json(postgres_database: str) -> None:  # noqa: F811
    """numeric→str, timestamps and dates→ISO, uuid→str, bytea→base64, json→its value, arrays→lists."""
    await run(
        postgres_database,
        """CREATE TABLE t (
            id int PRIMARY KEY, amount numeric(12, 2), ratio float8, flag boolean, at timestamptz, local timestamp,
            day date, clock time, span interval, guid uuid, blob bytea, doc jsonb, raw json, tags text[], big bigint
        )""",
        """INSERT INTO t VALUES (
            1, 1234.50, 0.1, true, '2024-03-01 09:00:00.25+02', '2024-03-01 09:00:00', '2024-02-29', '13:45:00',
            '90 minutes', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{"a": [1, null]}', '[1, "x"]',
            '{red,green}', 9007199254740993
        )""",
        "INSERT INTO t (id, ratio, amount) VALUES (2, 'NaN', 'NaN'), (3, '-Infinity', NULL)",
    )
    rows = await read_all(reader(postgres_database, SqlSpec(table="t", key="id")))
    assert rows[0].values == {
        "id": 1,
        "amount": "1234.50",
        "ratio": 0.1,
        "flag": True,
        "at": "2024-03-01T07:00:00.250000+00:00",
        "local": "2024-03-01T09:00:00",
        "day": "2024-02-29",
        "clock": "13:45:00",
        "span": 5400.0,
        "guid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "blob": base64.b64encode(b"\x00\xff").decode(),
        "doc": {"a": [1, None]},
        "raw": [1, "x"],
        "tags": ["red", "green"],
        "big": 9007199254740993,
    }
    assert (rows[1].values["ratio"], rows[1].values["amount"]) == ("NaN", "NaN")
    assert (rows[2].values["ratio"], rows[2].values["amount"]) == ("-Infinity", None)


CURSOR_TYPES = [
    ("timestamptz", "timestamptz '2024-03-01 09:00:00+00' + (i / 3) * interval '1.5 seconds'"),
    ("timestamp", "timestamp '2024-03-01 09:00:00' + (i / 3) * interval '1 millisecond'"),
    ("date", "date '2024-03-01' + (i / 3)"),
    ("numeric", "(i / 3) * 0.1"),
    ("float8", "(i / 3) * 0.1::float8"),
    ("text", "'v' || lpad((i / 3)::text, 3, '0')"),
    ("uuid", "('00000000-0000-0000-0000-' || lpad((i / 3)::text, 12, '0'))::uuid"),
]


@pytest.mark.parametrize(("kind", "expression"), CURSOR_TYPES, ids=[kind for kind, _ in CURSOR_TYPES])
@pytest.mark.parametrize("key_kind", ["int", "text", "uuid"])
async def test_positions_of_every_type_page_exactly(
    postgres_database: str,  # noqa: F811
    kind: str,
    expression: str,
    key_kind: str,
) -> None:
    """A page boundary after each row: each position, sent back as JSON text, compares as the column does."""
    key = {
        "int": "i",
        "text": "'k' || lpad(i::text, 3, '0')",
        "uuid": "('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid",
    }[key_kind]
    await run(
        postgres_database, f"CREATE TABLE t AS SELECT {key} AS k, {expression} AS c FROM generate_series(1, 20) i"
    )
    spec = SqlSpec(table="t", key="k", cursor="c", page_size=1)
    rows = await read_all(reader(postgres_database, spec))
    assert len(rows) == 20
    ordered = await _ordered(postgres_database, "SELECT k, c FROM t ORDER BY c, k")
    assert [row.values for row in rows] == ordered
    resumed = await read_all(reader(postgres_database, spec, since=rows[7].position))
    assert [row.values for row in resumed] == ordered[8:]


async def _ordered(dsn: str, query: str) -> Sequence[dict[str, object]]:
    from syncengine.readers.sql import to_json

    db = await asyncpg.connect(dsn)
    try:
        return [{k: to_json(v) for k, v in record.items()} for record in await db.fetch(query)]
    finally:
        await db.close()


async def test_lag_on_date_and_number_cursors(postgres_database: str) -> None:  # noqa: F811
    """Lag subtracts days from a date cursor and seconds from a numeric one."""
    await run(
        postgres_database,
        "CREATE TABLE d AS SELECT i AS id, date '2024-03-01' + i AS day, i * 10 AS epoch FROM generate_series(1, 6) i",
    )
    by_day = SqlSpec(table="d", key="id", cursor="day", lag_seconds=2 * 86_400)
    rows = await read_all(reader(postgres_database, by_day, since=("2024-03-05", 4)))
    assert [(row.values["id"], row.replay) for row in rows] == [(2, True), (3, True), (4, True), (5, False), (6, False)]
    by_epoch = SqlSpec(table="d", key="id", cursor="epoch", lag_seconds=15)
    rows = await read_all(reader(postgres_database, by_epoch, since=(40, 4)))
    assert [(row.values["id"], row.replay) for row in rows] == [(3, True), (4, True), (5, False), (6, False)]


async def test_schema_qualified_case_sensitive_table(postgres_database: str) -> None:  # noqa: F811
    """``sales.Contacts`` names the table exactly as written: schema, then a mixed-case name."""
    await run(
        postgres_database,
        "CREATE SCHEMA sales",
        'CREATE TABLE sales."Contacts" ("Id" int, "Updated" timestamptz)',
        """INSERT INTO sales."Contacts" VALUES (1, '2024-01-01Z'), (2, NULL)""",
    )
    rows = await read_all(reader(postgres_database, SqlSpec(table="sales.Contacts", key="Id", cursor="Updated")))
    assert [row.position for row in rows] == [(None, 2), ("2024-01-01T00:00:00+00:00", 1)]


async def test_missing_dsn_variable_names_it(postgres_dsn: str) -> None:  # noqa: F811
    """An unset (or blank) DSN variable: a SourceError naming the variable."""
    for environ in ({}, {"ERP_DSN": "  "}):
        source = PostgresReader("ERP_DSN", SqlSpec(table="t", key="id"), environ=environ)
        with pytest.raises(SourceError, match="environment variable ERP_DSN is not set") as caught:
            await read_all(source)
        assert caught.value.source == "postgres $ERP_DSN"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://erp:S3cr%40t-pw@127.0.0.1:{port}/erp",
        "postgresql://erp:S3cr@t-pw@127.0.0.1:{port}/erp",
        "mysql://erp:S3cr@t-pw@127.0.0.1:{port}/erp",
        "postgresql://erp:S3cr@t-pw@127.0.0.1:notaport/erp",
    ],
    ids=["refused", "unquoted-at", "wrong-scheme", "bad-port"],
)
async def test_connection_errors_never_show_the_dsn(dsn: str) -> None:
    """A DSN that cannot connect: a SourceError naming the variable, with no trace of the DSN or its password."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens on it
    dsn = dsn.format(port=port)
    source = PostgresReader("ERP_DSN", SqlSpec(table="t", key="id"), environ={"ERP_DSN": dsn}, connect_timeout=5)
    with pytest.raises(SourceError, match=r"^postgres \$ERP_DSN: cannot connect: ") as caught:
        await read_all(source)
    shown = f"{caught.value!s} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
    for secret in ("S3cr", "t-pw", "%40"):
        assert secret not in shown
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "S3cr" not in repr(source)


async def test_refused_login_is_a_source_error(postgres_dsn: str) -> None:  # noqa: F811
    """A server refusing the login: a SourceError with the server's reason, without the password."""
    await run(
        postgres_dsn,
        "DROP ROLE IF EXISTS locked_out",
        "CREATE ROLE locked_out LOGIN PASSWORD 'right-one'",
    )
    host = postgres_dsn.split("@", 1)[1]
    # The test cluster trusts every local login, so refuse this one by a role that may not log in instead.
    await run(postgres_dsn, "ALTER ROLE locked_out NOLOGIN")
    source = reader(f"postgresql://locked_out:wrong-one@{host}", SqlSpec(table="t", key="id"))
    with pytest.raises(SourceError, match=r'cannot connect: .*"locked_out" is not permitted to log in') as caught:
        await read_all(source)
    assert "wrong-one" not in str(caught.value)


async def test_dropped_connection_mid_read_is_a_source_error(postgres_database: str) -> None:  # noqa: F811
    """The server ending the session between pages: a SourceError, not a hang or a silent end."""
    await run(postgres_database, "CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 10) i")
    source = reader(postgres_database, SqlSpec(table="t", key="id", page_size=2))
    async with source:
        first = await anext(source)
        assert first.values == {"id": 1}
        await run(
            postgres_database,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        with pytest.raises(SourceError, match="cannot read table 't'"):
            async for _ in source:
                pass


async def test_query_with_its_own_parameters_free_sql(postgres_database: str) -> None:  # noqa: F811
    """A query with joins, casts and its own ORDER BY is paged by the outer keyset order all the same."""
    await run(
        postgres_database,
        "CREATE TABLE a AS SELECT i AS id, 'n' || i AS name FROM generate_series(1, 9) i",
        "CREATE TABLE b AS SELECT i AS a_id, i % 3 AS grp FROM generate_series(1, 9) i",
    )
    query = "SELECT a.id, a.name, b.grp::text AS grp FROM a JOIN b ON b.a_id = a.id ORDER BY a.name DESC"
    rows = await read_all(reader(postgres_database, SqlSpec(query=query, key="id", cursor="grp", page_size=2)))
    assert [row.position for row in rows] == [
        ("0", 3),
        ("0", 6),
        ("0", 9),
        ("1", 1),
        ("1", 4),
        ("1", 7),
        ("2", 2),
        ("2", 5),
        ("2", 8),
    ]


async def test_a_page_cancelled_mid_fetch_is_fetched_again(postgres_database: str) -> None:  # noqa: F811
    """Cancelling a read while a page is being fetched loses nothing: reading on fetches that page again."""
    await run(postgres_database, "CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 9) i")
    slow = "SELECT t.id FROM t, (SELECT pg_sleep(0.2)) AS pause"  # every page takes 0.2 s
    source = reader(postgres_database, SqlSpec(query=slow, key="id", page_size=4))
    async with source:
        rows = [await anext(source) for _ in range(4)]
        with anyio.move_on_after(0.05) as scope:
            await anext(source)  # cancelled inside page 2's fetch
        assert scope.cancelled_caught
        rows += [row async for row in source]
    assert [(row.seq, row.values["id"]) for row in rows] == [(i, i) for i in range(1, 10)]
