"""The results ledger in one SQLite file: runs, outcomes, checkpoints, positions, chains and credits.

The connection and its thread are ``connection.py``'s, the paged reads ``reads.py``'s, the summaries
``summaries.py``'s.

Durability: WAL with ``synchronous=NORMAL``. A commit is in the WAL file before ``append`` returns, so a
killed process (SIGKILL, OOM killer, Ctrl-C) loses nothing it committed and never leaves half a batch:
SQLite rolls an unfinished transaction back when the file is next opened. What NORMAL gives up, against
FULL, is the fsync at each commit: an OS crash or a power cut can lose the last few transactions (never
corrupt the file). Those outcomes then count as pending and a resumed run sends them again, which the
keyed, idempotent operations tolerate; an fsync per batch would cost far more on the hot path.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import anyio
import orjson

from syncengine.errors import LedgerError
from syncengine.ledger.chains import Chain, chain_rows, load_chains, upsert_chains
from syncengine.ledger.connection import transaction
from syncengine.ledger.crmids import CrmIdStore
from syncengine.ledger.reads import OUTCOME_SQL_COLUMNS, LedgerReads, filters
from syncengine.ledger.summaries import count_run, snapshot, summary_from
from syncengine.ledger.values import (
    RunState,
    RunSummary,
)
from syncengine.model import JSON, TERMINAL, Outcome, Status

__all__ = ["SqliteLedger", "open_ledger"]


# OR REPLACE: exactly one row per (run, stream, seq); a later outcome of the same change in the same run wins.
_INSERT: Final = f"INSERT OR REPLACE INTO outcomes ({OUTCOME_SQL_COLUMNS}) VALUES ({', '.join('?' * 19)})"
# A checkpoint only moves forward, even if a caller hands an older one later.
_CHECKPOINT: Final = (
    "INSERT INTO checkpoints (run_id, stream, position, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (run_id, stream) DO UPDATE "
    "SET position = max(position, excluded.position), updated_at = excluded.updated_at"
)
_RUN_COLUMNS: Final = "id, started_at, finished_at, state, config_file, streams, dry_run, retry_of, read, counts"


def _to_json(value: Any) -> JSON:
    """orjson's fallback: a write must not fail on a Mapping that is not a dict, or on a stray object."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _dumps(value: Mapping[str, JSON] | None) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, default=_to_json, option=orjson.OPT_NON_STR_KEYS).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _row(run_id: int, outcome: Outcome) -> tuple[object, ...]:
    change = outcome.change
    target = change.target
    return (
        run_id,
        change.stream,
        change.seq,
        target.operation.value,
        target.module,
        target.related_list,
        change.key,
        change.parent,
        outcome.status.value,
        outcome.code,
        outcome.message,
        _dumps(outcome.details),
        outcome.crm_id,
        outcome.http_status,
        outcome.attempts,
        outcome.started_at,
        outcome.finished_at,
        outcome.note,
        _dumps(change.source_row),
    )


class SqliteLedger(LedgerReads, CrmIdStore):
    """The results ledger in one SQLite file: ``async with SqliteLedger(path) as ledger: ...``.

    Opening creates the file and its schema if needed and proves the file is a writable, unlocked ledger;
    every failure, then or later, is a ``LedgerError`` naming the file and the reason.
    """

    @classmethod
    async def open(cls, path: Path | str, *, busy_timeout: float = 10.0) -> SqliteLedger:
        ledger = cls(path, busy_timeout=busy_timeout)
        await ledger._run("cannot open", ledger._open_sync)
        return ledger

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self._path)!r}, open={self._conn is not None})"

    async def __aenter__(self) -> SqliteLedger:
        if self._conn is None:
            await self._run("cannot open", self._open_sync)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (SQLite folds the WAL back into the file). Closing twice is harmless."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    # --- runs -------------------------------------------------------------------------------------------

    async def start_run(
        self, *, config_file: str, streams: Sequence[str], dry_run: bool = False, retry_of: int | None = None
    ) -> int:
        """Record a new run as ``running``; returns its id (ids increase and are never reused)."""
        if isinstance(streams, str):
            raise TypeError("streams must be a sequence of stream names, not one string")

        def start() -> int:
            conn = self._connection()
            with transaction(conn):
                if retry_of is not None:
                    self._run_row(conn, retry_of)
                cursor = conn.execute(
                    "INSERT INTO runs (started_at, state, config_file, streams, dry_run, retry_of) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        time.time(),
                        RunState.RUNNING.value,
                        config_file,
                        orjson.dumps(list(streams)).decode(),
                        int(dry_run),
                        retry_of,
                    ),
                )
                run_id = cursor.lastrowid
            assert run_id is not None  # an INSERT into a rowid table always sets it
            return run_id

        return await self._run("cannot start a run", start)

    async def finish_run(self, run_id: int, *, state: str, read: Mapping[str, int]) -> RunSummary:
        """Record how the run ended and snapshot its counts; ``read`` is the changes read per stream."""
        final = RunState(state)
        if final is RunState.RUNNING:
            raise ValueError("finish_run needs a final state, not 'running'")

        def finish() -> RunSummary:
            conn = self._connection()
            with transaction(conn):
                row = self._run_row(conn, run_id)
                finished_at = time.time()
                summary = count_run(conn, row, read=read, state=final, finished_at=finished_at)
                conn.execute(
                    "UPDATE runs SET state = ?, finished_at = ?, read = ?, counts = ? WHERE id = ?",
                    (final.value, finished_at, orjson.dumps(dict(read)).decode(), snapshot(summary), run_id),
                )
            return summary

        return await self._run(f"cannot finish run {run_id}", finish)

    async def reopen_run(self, run_id: int) -> RunSummary:
        """Mark a stopped run ``running`` again, to resume it; returns how it stood."""

        def reopen() -> RunSummary:
            conn = self._connection()
            with transaction(conn):
                row = self._run_row(conn, run_id)
                before = self._summary(conn, row)
                conn.execute(
                    "UPDATE runs SET state = ?, finished_at = NULL WHERE id = ?", (RunState.RUNNING.value, run_id)
                )
            return before

        return await self._run(f"cannot reopen run {run_id}", reopen)

    async def resumable_run(self, config_file: str) -> int | None:
        """The newest run of this config that did not complete (a resume candidate), if any."""

        def load() -> int | None:
            row = (
                self._connection()
                .execute(
                    "SELECT id, state FROM runs WHERE config_file = ? AND dry_run = 0 AND retry_of IS NULL"
                    " ORDER BY id DESC LIMIT 1",
                    (config_file,),
                )
                .fetchone()
            )
            return None if row is None or row[1] == RunState.COMPLETED.value else int(row[0])

        return await self._run("cannot look for a run to resume", load)

    async def set_sources(self, run_id: int, fingerprints: Mapping[str, str]) -> None:
        """Remember what each stream's source was when the run started."""

        def store() -> None:
            conn = self._connection()
            with transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO run_sources (run_id, stream, fingerprint) VALUES (?, ?, ?)",
                    [(run_id, stream, fp) for stream, fp in fingerprints.items()],
                )

        await self._run(f"cannot record the sources of run {run_id}", store)

    async def sources(self, run_id: int) -> dict[str, str]:
        """The source fingerprints recorded when the run started."""

        def load() -> dict[str, str]:
            rows = self._connection().execute("SELECT stream, fingerprint FROM run_sources WHERE run_id = ?", (run_id,))
            return {stream: fp for stream, fp in rows}

        return await self._run(f"cannot read the sources of run {run_id}", load)

    async def summary(self, run_id: int) -> RunSummary:
        """The run's summary: its snapshot once finished, else counted now from its outcomes."""

        def load() -> RunSummary:
            conn = self._connection()
            return self._summary(conn, self._run_row(conn, run_id))

        return await self._run(f"cannot read run {run_id}", load)

    async def runs(self, limit: int = 20) -> list[RunSummary]:
        """The latest ``limit`` runs, newest first."""

        def load() -> list[RunSummary]:
            conn = self._connection()
            query = f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?"
            return [self._summary(conn, row) for row in conn.execute(query, (limit,)).fetchall()]

        return await self._run("cannot list runs", load)

    async def has_run(self, run_id: int) -> bool:
        def load() -> bool:
            found = self._connection().execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
            return found is not None

        return await self._run(f"cannot read run {run_id}", load)

    async def latest_run_id(self) -> int | None:
        def load() -> int | None:
            value = self._connection().execute("SELECT max(id) FROM runs").fetchone()[0]
            return None if value is None else int(value)

        return await self._run("cannot read runs", load)

    # --- outcomes ---------------------------------------------------------------------------------------

    async def append(
        self,
        run_id: int,
        outcomes: Sequence[Outcome],
        checkpoints: Mapping[str, int] | None = None,
        *,
        credits: int = 0,
        remember: bool = True,
        positions: Mapping[str, JSON] | None = None,
        passes: Callable[[str, int], int] | None = None,
    ) -> None:
        """Write a batch of terminal outcomes, and the checkpoints they cover, in one transaction.

        All or nothing: after a kill at any instant, the batch is either wholly in the ledger or not at all.
        ``credits`` is what the calls behind the batch cost; with ``remember``, each SUCCESS (and each change
        skipped as unchanged) extends its key's chain of digests, so an unchanged export is skipped next time.
        """
        for outcome in outcomes:
            if outcome.status not in TERMINAL:
                raise ValueError(
                    f"the ledger records terminal outcomes only: {outcome.change.stream!r} seq "
                    f"{outcome.change.seq} is {outcome.status.value}"
                )
        if not outcomes and not checkpoints and not credits and not positions:
            return

        def append() -> None:
            conn = self._connection()
            rows = [_row(run_id, o) for o in outcomes]  # built here, off the event loop
            chains = chain_rows(passes or (lambda _stream, _seq: run_id << 20), outcomes) if remember else {}
            with transaction(conn):
                self._run_row(conn, run_id)
                conn.executemany(_INSERT, rows)
                upsert_chains(conn, chains)
                if positions:
                    conn.executemany(
                        "INSERT OR REPLACE INTO positions (stream, position, updated_at) VALUES (?, ?, ?)",
                        [(stream, orjson.dumps(p).decode(), time.time()) for stream, p in positions.items()],
                    )
                if credits:
                    conn.execute(
                        "INSERT INTO credits (at, run_id, credits) VALUES (?, ?, ?)", (time.time(), run_id, credits)
                    )
                if checkpoints:
                    now = time.time()
                    conn.executemany(_CHECKPOINT, [(run_id, s, p, now) for s, p in checkpoints.items()])

        await self._run(f"cannot append {len(outcomes)} outcomes to run {run_id}", append)

    async def chains(self, stream: str, keys: Sequence[int]) -> dict[int, Chain]:
        """For those of ``keys`` (``Change.key_digest``) that have one: the run that wrote the key's chain, and
        the digests of its changes that the CRM holds, in source order (``ledger/chains.py``)."""
        if not keys:
            return {}
        return await self._run(
            f"cannot read the digests of stream {stream!r}", lambda: load_chains(self._connection(), stream, keys)
        )

    async def overtaken(
        self, run_id: int, stream: str, *, statuses: Collection[Status], codes: Collection[str] | None
    ) -> dict[int, list[JSON]]:
        """Of a run's changes with these statuses (and codes), those whose key had a later change applied in
        the same run, each with the source rows of those later changes in seq order: a re-drive must not send
        a failed change after them as it was (the CRM would go back to an older row)."""
        where, params = filters(statuses, codes, stream)
        query = (
            "SELECT o.seq, n.source_row FROM outcomes o JOIN outcomes n ON n.run_id = o.run_id "
            "AND n.stream = o.stream AND n.key = o.key AND coalesce(n.parent, '') = coalesce(o.parent, '') "
            "AND n.seq > o.seq AND (n.status = 'SUCCESS' OR "
            "(n.status = 'SKIPPED' AND n.code IN ('UNCHANGED', 'SUPERSEDED'))) "
            f"WHERE o.run_id = ?{where.replace(' AND ', ' AND o.')} ORDER BY o.seq, n.seq"
        )

        def load() -> dict[int, list[JSON]]:
            found: dict[int, list[JSON]] = {}
            for seq, row in self._connection().execute(query, (run_id, *params)):
                found.setdefault(int(seq), []).append(orjson.loads(row) if row is not None else {})
            return found

        return await self._run(f"cannot read run {run_id}", load)

    async def unfinished_runs(self) -> set[int]:
        """The runs that did not complete: a resume may still need their call journals."""

        def load() -> set[int]:
            rows = self._connection().execute("SELECT id FROM runs WHERE state != ?", (RunState.COMPLETED.value,))
            return {int(run_id) for (run_id,) in rows}

        return await self._run("cannot list runs", load)

    async def source_position(self, stream: str) -> JSON:
        """Where a database stream's next read starts (its stored ``[cursor, key]``), or None."""

        def load() -> JSON:
            row = self._connection().execute("SELECT position FROM positions WHERE stream = ?", (stream,)).fetchone()
            return None if row is None else orjson.loads(row[0])

        return await self._run(f"cannot read the position of stream {stream!r}", load)

    async def max_seq(self, run_id: int, stream: str) -> int:
        """The highest seq recorded for a stream in a run (0 if none)."""

        def load() -> int:
            row = self._connection().execute(
                "SELECT COALESCE(MAX(seq), 0) FROM outcomes WHERE run_id = ? AND stream = ?", (run_id, stream)
            )
            return int(row.fetchone()[0])

        return await self._run(f"cannot read run {run_id}", load)

    async def source_rows_after(self, run_id: int, stream: str, seq: int) -> list[JSON]:
        """The source rows of a run's outcomes above ``seq`` (a checkpoint): what a resume must not redo."""

        def load() -> list[JSON]:
            rows = self._connection().execute(
                "SELECT source_row FROM outcomes WHERE run_id = ? AND stream = ? AND seq > ?", (run_id, stream, seq)
            )
            return [orjson.loads(r[0]) for r in rows if r[0] is not None]

        return await self._run(f"cannot read run {run_id}", load)

    async def credits_since(self, since: float) -> int:
        """Credits spent by every run since ``since`` (epoch seconds): a rolling budget's spending."""

        def load() -> int:
            row = self._connection().execute("SELECT COALESCE(SUM(credits), 0) FROM credits WHERE at > ?", (since,))
            return int(row.fetchone()[0])

        return await self._run("cannot read the credits spent", load)

    async def set_checkpoint(self, run_id: int, stream: str, seq: int) -> None:
        """Record that every change of ``stream`` up to ``seq`` is terminal (it never moves back)."""
        await self.append(run_id, (), {stream: seq})

    async def checkpoints(self, run_id: int) -> dict[str, int]:
        """The checkpoint of each stream of the run that has one."""

        def load() -> dict[str, int]:
            rows = self._connection().execute(
                "SELECT stream, position FROM checkpoints WHERE run_id = ? ORDER BY stream", (run_id,)
            )
            return {stream: int(position) for stream, position in rows}

        return await self._run(f"cannot read the checkpoints of run {run_id}", load)

    # --- internals --------------------------------------------------------------------------------------

    def _run_row(self, conn: sqlite3.Connection, run_id: int) -> tuple[Any, ...]:
        row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise LedgerError(str(self._path), f"no run {run_id} in the ledger")
        return tuple(row)

    def _summary(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> RunSummary:
        snapshot = _loads(row[9])
        if snapshot is None:  # not finished (running, or killed): count now, read = rows is the lower bound
            read = _loads(row[8]) or {}
            return count_run(conn, row, read=read, state=RunState(row[3]), finished_at=row[2])
        return summary_from(row, snapshot)


async def open_ledger(path: Path | str, *, busy_timeout: float = 10.0) -> SqliteLedger:
    """Open (creating if needed) the ledger at ``path``; close it with ``aclose`` or ``async with``."""
    return await SqliteLedger.open(path, busy_timeout=busy_timeout)
