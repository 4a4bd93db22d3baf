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
    "register",
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


# One statement per batch, no read first: a key's chain is replaced by a pass's first write to it and
# appended to by the same pass's later writes; a pass that repeats the stored chain exactly writes nothing
# (the row keeps the pass that first wrote it). A row from before chains were stored has a NULL chain:
# its one digest is its chain. ``chain_of`` and ``chain_cat`` (SQLite's ``||`` makes text of blobs) are
# Python functions registered per connection; they run only for keys that already have a row.
_UPSERT: Final = """
INSERT INTO digests (stream, key, digest, run_id, chain) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (stream, key) DO UPDATE SET
    digest = excluded.digest,
    run_id = excluded.run_id,
    chain = CASE WHEN digests.run_id = excluded.run_id
                 THEN chain_cat(chain_of(digests.digest, digests.chain), excluded.chain)
                 ELSE excluded.chain END
WHERE digests.run_id = excluded.run_id OR chain_of(digests.digest, digests.chain) != excluded.chain
"""


def _chain_of(digest: int, blob: bytes | None) -> bytes:
    return _pack((digest,)) if blob is None else blob


def _chain_cat(before: bytes, after: bytes) -> bytes:
    return before + after


def register(conn: sqlite3.Connection) -> None:
    """Give a new connection the SQL functions the chain upsert uses."""
    conn.create_function("chain_of", 2, _chain_of, deterministic=True)
    conn.create_function("chain_cat", 2, _chain_cat, deterministic=True)


def upsert_chains(conn: sqlite3.Connection, batch: Mapping[tuple[str, int], Chain]) -> None:
    """Store a batch's chains: appended to the key's chain when the same pass wrote it, else replacing it."""
    if not batch:
        return
    # In key order: the writes touch the index's pages in order.
    rows = [
        (stream, key, digests[-1], written_by, _pack(digests))
        for (stream, key), (written_by, digests) in sorted(batch.items())
    ]
    conn.executemany(_UPSERT, rows)


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
