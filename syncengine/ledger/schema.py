"""The ledger's SQLite schema, versioned with ``PRAGMA user_version`` and created on open.

Why it is shaped like this (see DESIGN.md, "The ledger is on the hot path"):

- ``outcomes`` is append-only and keyed by what arrives in order: (run_id, stream, seq). Outcomes reach the
  writer roughly in seq order, so the primary-key index grows at its right edge and costs little. Nothing
  else is indexed: an index on external ids (``key``), which arrive in random order, would cut the append
  rate several times; lookups by key are rare and can scan one run, or build an index in bulk later.
- One row per change per run: the writer appends with ``INSERT OR REPLACE``, so a change written twice in
  one run (a later retry turning FAILED into SUCCESS) keeps only its latest outcome, and a summary that
  counts rows counts each change once.
- ``runs.counts`` is a snapshot written by ``finish_run``, so listing the history does not re-count
  millions of rows; a run with no snapshot (still running, or killed) is counted live.
- ``checkpoints`` is written in the same transaction as the outcomes it covers: after a kill, a checkpoint
  never points past an outcome that was lost.
"""

from __future__ import annotations

import sqlite3
from typing import Final

__all__ = ["SCHEMA_VERSION", "NewerSchema", "migrate"]

SCHEMA_VERSION: Final = 6

_V1: Final = """
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so retry_of stays true
    started_at  REAL NOT NULL,                      -- epoch seconds
    finished_at REAL,
    state       TEXT NOT NULL
                CHECK (state IN ('running', 'completed', 'interrupted', 'failed', 'halted', 'paused')),
    config_file TEXT NOT NULL,
    streams     TEXT NOT NULL,                      -- JSON array of stream names, in config order
    dry_run     INTEGER NOT NULL CHECK (dry_run IN (0, 1)),
    retry_of    INTEGER REFERENCES runs (id),
    read        TEXT,                               -- JSON {stream: changes read}, written at finish
    counts      TEXT                                -- JSON snapshot of the summary counts, written at finish
);

CREATE TABLE outcomes (
    run_id       INTEGER NOT NULL,
    stream       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    operation    TEXT NOT NULL,
    module       TEXT NOT NULL,
    related_list TEXT,
    key          TEXT NOT NULL,
    parent       TEXT,
    status       TEXT NOT NULL,
    code         TEXT,
    message      TEXT,
    details      TEXT,                              -- JSON object
    crm_id       TEXT,
    http_status  INTEGER,
    attempts     INTEGER NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    note         TEXT,
    source_row   TEXT,                              -- JSON object: the row as read, for the error export
    PRIMARY KEY (run_id, stream, seq)
);

CREATE TABLE checkpoints (
    run_id     INTEGER NOT NULL,
    stream     TEXT NOT NULL,
    position   INTEGER NOT NULL,                    -- every seq <= position has a terminal outcome
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, stream)
) WITHOUT ROWID;
"""

# A resumed run must read the same input: each stream's source is fingerprinted when the run starts.
_V2: Final = """
CREATE TABLE run_sources (
    run_id      INTEGER NOT NULL,
    stream      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (run_id, stream)
) WITHOUT ROWID;
"""

# Skip-unchanged: per stream and key, the digest of the last change that succeeded. Written only for
# SUCCESS outcomes (an unchanged nightly export writes nothing), read in chunks of keys, never per row.
# Credits: what each flush of outcomes cost, so a daily budget holds over a rolling 24 hours across runs.
_V3: Final = """
CREATE TABLE digests (
    stream TEXT NOT NULL,
    key    INTEGER NOT NULL,                    -- Change.key_digest(): module, parent and key
    digest INTEGER NOT NULL,                    -- Change.digest(): the operation and fields sent
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;

CREATE TABLE credits (
    at      REAL NOT NULL,                      -- epoch seconds
    run_id  INTEGER NOT NULL,
    credits INTEGER NOT NULL
);

CREATE INDEX credits_at ON credits (at);
"""

# Incremental database sources: per stream, the (cursor, key) position up to which every row read has a
# terminal outcome; the next run (or watch) reads after it. Written with the outcomes that advance it.
_V4: Final = """
CREATE TABLE positions (
    stream     TEXT PRIMARY KEY,
    position   TEXT NOT NULL,                   -- JSON [cursor, key]
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Skip-unchanged remembers a key's whole sequence of changes, not only the last (``ledger/chains.py``): the
# pass that wrote it and the digests packed as big-endian int64s (NULL in rows of older ledgers: ``digest``
# alone).
_V5: Final = """
ALTER TABLE digests ADD COLUMN run_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE digests ADD COLUMN chain BLOB;
"""

# Updates by external value through looked-up record ids (``external.py``): per org, module and external
# field, the record id a value addresses, so a second run costs no lookups; and what the org answered
# about a strategy (``bulk`` works or ``resolve`` is needed), so the next run starts with it.
_V6: Final = """
CREATE TABLE crm_ids (
    org       TEXT NOT NULL,                    -- external.org_key(): API host and client, hashed
    module    TEXT NOT NULL,
    field     TEXT NOT NULL,
    value     TEXT NOT NULL,
    record_id TEXT NOT NULL,
    seen_at   REAL NOT NULL,
    PRIMARY KEY (org, module, field, value)
) WITHOUT ROWID;

CREATE TABLE org_facts (
    org        TEXT NOT NULL,
    name       TEXT NOT NULL,                   -- e.g. external_update:Contacts
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (org, name)
) WITHOUT ROWID;
"""

# Each entry takes the schema from version i to i + 1.
_MIGRATIONS: Final = (_V1, _V2, _V3, _V4, _V5, _V6)


class NewerSchema(Exception):
    """The file was written by a newer syncengine."""


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` in one write transaction.

    The transaction always writes (``user_version`` is set even when it is current), so opening a ledger
    also proves it is writable and not locked, instead of failing later in the middle of a run.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise NewerSchema(f"schema version {version} is newer than this syncengine reads ({SCHEMA_VERSION})")
        for script in _MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # some errors (a full disk) have already rolled it back
            conn.execute("ROLLBACK")
        raise
