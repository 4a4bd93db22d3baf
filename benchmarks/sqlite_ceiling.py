"""The ledger's physical ceiling: what SQLite itself takes on this machine, in the same run.

``python -m benchmarks.sqlite_ceiling --rows N --dir DIR`` writes N rows shaped like the engine's outcome
rows (19 columns, the source row and details as JSON text) into a fresh WAL file (``synchronous=NORMAL``)
with ``executemany`` in transactions of 500 rows, three ways:

- ``append``: the primary key arrives in order (run, stream, seq), so the index grows at its right edge;
- ``append+random_key``: the same, plus a second table keyed by a random 64-bit integer per row (as a
  digest of an external ID is), written in the same transaction: every insert lands somewhere else in
  that B-tree;
- ``random_key_late``: the rate of that second table's inserts once it already holds N rows.

Prints one JSON line with rows/s for each.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import time
from pathlib import Path

import orjson

__all__ = ["main"]

BATCH = 500
_OUTCOMES = """CREATE TABLE outcomes (run_id INTEGER NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
 operation TEXT NOT NULL, module TEXT NOT NULL, related_list TEXT, key TEXT NOT NULL, parent TEXT,
 status TEXT NOT NULL, code TEXT, message TEXT, details TEXT, crm_id TEXT, http_status INTEGER,
 attempts INTEGER NOT NULL, started_at REAL, finished_at REAL, note TEXT, source_row TEXT,
 PRIMARY KEY (run_id, stream, seq))"""
_DIGESTS = (
    "CREATE TABLE digests (stream TEXT NOT NULL, key INTEGER NOT NULL, digest INTEGER NOT NULL, "
    "PRIMARY KEY (stream, key)) WITHOUT ROWID"
)
_INSERT = f"INSERT OR REPLACE INTO outcomes VALUES ({', '.join('?' * 19)})"
_DIGEST = "INSERT OR REPLACE INTO digests VALUES (?, ?, ?)"
_DETAILS = orjson.dumps(
    {
        "Modified_Time": "2024-05-01T10:00:00+00:00",
        "Modified_By": {"name": "Bench User", "id": "111111000000000001"},
        "Created_Time": "2024-01-01T10:00:00+00:00",
        "id": "111111000000100001",
    }
).decode()


def _rows(start: int, n: int) -> list[tuple[object, ...]]:
    now = time.time()
    return [
        (1, "contacts", i, "update", "Contacts", None, f"C{i:07d}", None, "SUCCESS", "SUCCESS", "record updated",
         _DETAILS, "111111000000100001", 200, 1, now, now, None,
         orjson.dumps({"erp_id": f"C{i:07d}", "last_name": f"After{i}", "title": "Buyer"}).decode())
        for i in range(start, start + n)
    ]  # fmt: skip


def _connect(path: Path) -> sqlite3.Connection:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(_OUTCOMES)
    conn.execute(_DIGESTS)
    return conn


def _write(conn: sqlite3.Connection, start: int, n: int, rng: random.Random | None) -> float:
    """Seconds to write rows start..start+n (row building included, as the engine builds them too)."""
    t0 = time.perf_counter()
    for first in range(start, start + n, BATCH):
        rows = _rows(first, min(BATCH, start + n - first))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        if rng is not None:
            conn.executemany(_DIGEST, [("contacts", rng.getrandbits(63), 1) for _ in rows])
        conn.execute("COMMIT")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqlite_ceiling")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    n = args.rows
    result: dict[str, float] = {"rows": n, "batch": BATCH}
    conn = _connect(args.dir / "ceiling-append.db")
    result["append"] = round(n / _write(conn, 0, n, None))
    conn.close()
    conn = _connect(args.dir / "ceiling-random.db")
    rng = random.Random(7)
    result["append+random_key"] = round(n / _write(conn, 0, n, rng))
    late = max(BATCH, n // 4)
    result["random_key_late"] = round(late / _write(conn, n, late, rng))
    conn.close()
    for name in ("ceiling-append.db", "ceiling-random.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.dir / name}{suffix}").unlink(missing_ok=True)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
