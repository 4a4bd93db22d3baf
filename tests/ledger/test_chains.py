"""The chain upsert's rules, on a real SQLite ledger schema: replace, append, repeat, legacy rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing

import pytest

from syncengine.ledger.chains import load_chains, register, upsert_chains
from syncengine.ledger.schema import migrate


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as db:
        register(db)
        migrate(db)
        yield db


def test_a_new_key_gets_its_chain(conn: sqlite3.Connection) -> None:
    upsert_chains(conn, {("s", 1): (10, (5, 6)), ("s", 2): (10, (7,))})
    assert load_chains(conn, "s", [1, 2, 3]) == {1: (10, (5, 6)), 2: (10, (7,))}


def test_the_same_pass_appends_and_a_later_pass_replaces(conn: sqlite3.Connection) -> None:
    upsert_chains(conn, {("s", 1): (10, (5,))})
    upsert_chains(conn, {("s", 1): (10, (6, 7))})
    assert load_chains(conn, "s", [1]) == {1: (10, (5, 6, 7))}
    upsert_chains(conn, {("s", 1): (11, (8,))})
    assert load_chains(conn, "s", [1]) == {1: (11, (8,))}


def test_a_pass_that_repeats_the_chain_keeps_the_pass_that_wrote_it(conn: sqlite3.Connection) -> None:
    upsert_chains(conn, {("s", 1): (10, (5, 6))})
    upsert_chains(conn, {("s", 1): (12, (5, 6))})
    assert load_chains(conn, "s", [1]) == {1: (10, (5, 6))}
    upsert_chains(conn, {("s", 1): (12, (5,))})  # not a repeat: shorter
    assert load_chains(conn, "s", [1]) == {1: (12, (5,))}


def test_a_row_from_before_chains_counts_as_its_one_digest(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO digests (stream, key, digest, run_id, chain) VALUES ('s', 1, 5, 3, NULL)")
    upsert_chains(conn, {("s", 1): (3, (6,))})
    assert load_chains(conn, "s", [1]) == {1: (3, (5, 6))}
    conn.execute("INSERT INTO digests (stream, key, digest, run_id, chain) VALUES ('s', 2, 9, 3, NULL)")
    upsert_chains(conn, {("s", 2): (4, (9,))})
    assert load_chains(conn, "s", [2]) == {2: (3, (9,))}


def test_streams_are_apart(conn: sqlite3.Connection) -> None:
    upsert_chains(conn, {("a", 1): (10, (5,)), ("b", 1): (10, (6,))})
    assert load_chains(conn, "a", [1]) == {1: (10, (5,))}
    assert load_chains(conn, "b", [1]) == {1: (10, (6,))}
