"""Skip-unchanged's memory in the ledger: per key, the chain of digests of what the CRM holds.

**Chains.** Per stream and key, the digests of the changes that make up what the CRM holds for that key as
far as the ledger knows: the key's changes, in source order, of the latest run that applied or confirmed
any of them (``SUCCESS``, or ``SKIPPED``/``UNCHANGED``). One digest is not enough: when an export holds
several rows of one key (a change log), a re-run reads the key's older rows first, and each of them differs
from the last digest; only the whole sequence says "this run repeats what the CRM already holds". A run
writes its own chain as its outcomes commit: the first contributing outcome of a key in a run replaces the
chain of an earlier run, the next ones append to it.

"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from syncengine.model import Outcome, Status

__all__ = [
    "Chain",
    "chain_rows",
    "contributes",
    "load_chains",
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
    return outcome.status is Status.SUCCESS or (
        outcome.status is Status.SKIPPED and outcome.code in ("UNCHANGED", "SUPERSEDED")
    )


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
