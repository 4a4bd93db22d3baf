"""Skip-unchanged's memory and the dispatch journal: the SQL behind two ledger methods each.

**Chains.** Per stream and key, the digests of the changes that make up what the CRM holds for that key as
far as the ledger knows: the key's changes, in source order, of the latest run that applied or confirmed
any of them (``SUCCESS``, or ``SKIPPED``/``UNCHANGED``). One digest is not enough: when an export holds
several rows of one key (a change log), a re-run reads the key's older rows first, and each of them differs
from the last digest; only the whole sequence says "this run repeats what the CRM already holds". A run
writes its own chain as its outcomes commit: the first contributing outcome of a key in a run replaces the
chain of an earlier run, the next ones append to it.

**Dispatches.** One row per call, written *before* the call goes out: which changes it carries, merged how
(one group of seqs per record). A resumed run reads the rows of the changes that still have no outcome, so
it knows exactly what the killed process may have sent, and re-sends each group merged as before.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from syncengine.model import Outcome, Status

__all__ = [
    "Chain",
    "Dispatch",
    "chain_rows",
    "contributes",
    "load_chains",
    "load_dispatches",
    "store_dispatch",
    "upsert_chains",
]

Chain = tuple[int, tuple[int, ...]]  # (the run that wrote it, the digests in source order)

_CHUNK: Final = 500  # SQLite caps the number of bound parameters


def _pack(digests: Sequence[int]) -> bytes:
    return struct.pack(f">{len(digests)}q", *digests)


def _unpack(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(blob) // 8}q", blob)


def contributes(outcome: Outcome) -> bool:
    """Does this outcome say the CRM holds the change's effect (so it belongs to its key's chain)?"""
    return outcome.status is Status.SUCCESS or (outcome.status is Status.SKIPPED and outcome.code == "UNCHANGED")


def chain_rows(pass_of: Callable[[str, int], int], outcomes: Iterable[Outcome]) -> dict[tuple[str, int], Chain]:
    """Per key of a batch: its contributing digests in seq order, tagged with the pass that read the last
    of them (``pass_of(stream, seq)``: see ``unchanged.Passes``)."""
    per_key: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for outcome in outcomes:
        if contributes(outcome):
            change = outcome.change
            per_key.setdefault((change.stream, change.key_digest()), []).append((change.seq, change.digest()))
    found: dict[tuple[str, int], Chain] = {}
    for (stream, key), entries in per_key.items():
        entries.sort()
        found[(stream, key)] = (pass_of(stream, entries[-1][0]), tuple(digest for _, digest in entries))
    return found


def upsert_chains(conn: sqlite3.Connection, batch: Mapping[tuple[str, int], Chain]) -> None:
    """Store a batch's chains: appended to the key's chain when the same pass wrote it, else replacing it."""
    if not batch:
        return
    per_stream: dict[str, list[int]] = {}
    for stream, key in batch:
        per_stream.setdefault(stream, []).append(key)
    rows: list[tuple[object, ...]] = []
    for stream, keys in per_stream.items():
        stored = load_chains(conn, stream, keys)
        for key in sorted(keys):  # in key order: the writes touch the index's pages in order
            written_by, digests = batch[(stream, key)]
            before = stored.get(key)
            if before is not None and before[0] == written_by:
                digests = before[1] + digests
            elif before is not None and before[1] == digests:
                continue  # a pass that repeated the chain: as good as the stored one, and no write
            rows.append((stream, key, digests[-1], written_by, _pack(digests)))
    conn.executemany("INSERT OR REPLACE INTO digests (stream, key, digest, run_id, chain) VALUES (?, ?, ?, ?, ?)", rows)


def load_chains(conn: sqlite3.Connection, stream: str, keys: Sequence[int]) -> dict[int, Chain]:
    """The chain of each of ``keys`` that has one."""
    found: dict[int, Chain] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT key, digest, run_id, chain FROM digests WHERE stream = ? AND key IN ({marks})"
        for key, digest, run_id, blob in conn.execute(query, (stream, *chunk)):
            found[key] = (run_id, (digest,) if blob is None else _unpack(blob))
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    """One call as journaled before it went out: its id, stream, and per record its key (``parent`` NUL
    ``key``) and the seqs merged into it."""

    id: int
    stream: str
    records: tuple[tuple[str, tuple[int, ...]], ...]


def store_dispatch(
    conn: sqlite3.Connection, run_id: int, stream: str, records: Sequence[tuple[str, Sequence[int]]]
) -> int:
    cursor = conn.execute(
        "INSERT INTO dispatches (run_id, stream, at, groups) VALUES (?, ?, ?, ?)",
        (run_id, stream, time.time(), orjson.dumps([[key, list(seqs)] for key, seqs in records]).decode()),
    )
    assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
    return cursor.lastrowid


def load_dispatches(conn: sqlite3.Connection, run_id: int) -> list[Dispatch]:
    """Every call the run journaled, oldest first."""
    rows = conn.execute("SELECT id, stream, groups FROM dispatches WHERE run_id = ? ORDER BY id", (run_id,))
    return [
        Dispatch(id=i, stream=stream, records=tuple((key, tuple(seqs)) for key, seqs in orjson.loads(groups)))
        for i, stream, groups in rows
    ]
