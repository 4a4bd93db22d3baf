"""What a stream reads in a run: one object per kind of source, with one interface.

``source_of(stream, ...)`` gives a ``FileSource`` (CSV, JSONL), a ``TableSource`` (SQLite, PostgreSQL) or, in
a re-drive, a ``RedriveSource`` (the source rows of an earlier run's failures, from the ledger). Each says:

- ``check()``: fail before the run starts, not halfway, when the source is not there;
- ``fingerprint()``: what a resume checks is unchanged (a file's size and both ends; ``None``: nothing to check);
- ``resume(plan, ledger, done)``: what a resumed run of this stream skips and how its seqs go on;
- ``rows(plan, ledger, watch=...)``: the rows, once, or followed (``watch``: poll every this many seconds,
  yielding ``IDLE`` before each wait, so what is held goes out then).

Followed sources: a table is re-read from the last position read, one cheap keyset query per poll; rows
re-read inside the lag window that this process already read are dropped, and so, after a restart, are the
rows above the stored position that the last runs already finished. A file is re-read whenever its contents
change; its rows get fresh, increasing seqs, and skip-unchanged makes the unchanged ones cost nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Protocol

import anyio
import structlog

from syncengine.config import SourceConfig, SqlSourceConfig, StreamConfig
from syncengine.errors import SourceError
from syncengine.ledger import SeqSet, SqliteLedger
from syncengine.model import JSON, Status
from syncengine.plan import Plan, Redrive, Source, finished_rows, row_mark
from syncengine.readers import IDLE, Reader, Row, SourceRow, open_reader
from syncengine.readers.sql import Position, SqlRow

__all__ = [
    "FileSource",
    "RedriveSource",
    "Rows",
    "StreamSource",
    "TableSource",
    "fingerprint",
    "follow_table",
    "source_of",
]

_log = structlog.get_logger("syncengine.sources")

_EDGE: Final = 1 << 20  # bytes hashed at each end of a file
_LAG_ROWS: Final = 20_000  # rows before a database stream's checkpoint that a resume's lag re-read may meet
_REPLAYS_KEPT: Final = 100_000  # rows remembered to drop their lag-window replays: bounded memory

Rows = AsyncIterator[Row | object]


def fingerprint(source: SourceConfig) -> str:
    """Size and a hash of both ends of the file: cheap, and it changes when the export is rewritten."""
    path = Path(source.path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            digest.update(handle.read(_EDGE))
            if size > _EDGE:
                handle.seek(max(_EDGE, size - _EDGE))
                digest.update(handle.read(_EDGE))
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"
    return f"{source.kind}:{size}:{digest.hexdigest()[:32]}"


class StreamSource(Source, Protocol):
    """The interface of the module docstring (``plan.Source`` is what the plan needs of it)."""

    def rows(self, plan: Plan, ledger: SqliteLedger, *, watch: float | None) -> Rows: ...


@dataclass(frozen=True, slots=True)
class FileSource:
    """A CSV or JSONL export. Its rows keep their seqs across a resume (the file must not change)."""

    stream: StreamConfig
    source: SourceConfig
    stable_seqs: bool = True

    def check(self) -> None:
        if not Path(self.source.path).is_file():
            raise SourceError(str(self.source.path), f"stream {self.stream.name!r}: no such file")

    def fingerprint(self) -> str | None:
        return fingerprint(self.source)

    async def resume(self, plan: Plan, ledger: SqliteLedger, done: SeqSet) -> None:
        plan.skip[self.stream.name] = done

    async def rows(self, plan: Plan, ledger: SqliteLedger, *, watch: float | None) -> Rows:
        if watch is not None:
            async for item in _follow_file(self.source, interval=watch):
                yield item
            return
        # Resumed: rows at or below the checkpoint all have their outcome; the reader skips them unparsed.
        async with open_reader(self.source, start_after=plan.start_after.get(self.stream.name, 0)) as reader:
            async for row in reader:
                yield row


@dataclass(frozen=True, slots=True)
class TableSource:
    """A table or query, read in keyset pages after the stream's stored (cursor, key) position."""

    stream: StreamConfig
    source: SqlSourceConfig
    environ: Mapping[str, str] | None = None
    stable_seqs: bool = False

    def check(self) -> None:
        """A database is checked when its reader opens (a watch waits for one that is down)."""

    def fingerprint(self) -> str | None:
        return None

    async def resume(self, plan: Plan, ledger: SqliteLedger, done: SeqSet) -> None:
        """Seqs go on after the ones already recorded (a re-read row gets a new one), and rows above the
        checkpoint that already have an outcome in this run are not redone."""
        name = self.stream.name
        offset = plan.seq_offsets[name] = await ledger.max_seq(plan.run_id, name)
        plan.prior_read[name] = len(done)
        # Above the checkpoint, and the last rows before it too: the lag window re-reads those.
        after = max(0, min(plan.start_after.get(name, 0), offset - _LAG_ROWS))
        rows = await ledger.source_rows_after(plan.run_id, name, after)
        plan.done_rows[name] = {row_mark(self.source, row) for row in rows if isinstance(row, dict)}

    async def rows(self, plan: Plan, ledger: SqliteLedger, *, watch: float | None) -> Rows:
        name, source = self.stream.name, self.source
        stored = await ledger.source_position(name)
        since = (stored[0], stored[1]) if isinstance(stored, list) and len(stored) == 2 else None

        def table(after: Position | None) -> Reader:
            return open_reader(source, since=after, environ=self.environ)

        if watch is not None:
            finished = await finished_rows(ledger, self.stream, plan.run_id)

            def finished_before(row: SqlRow) -> bool:
                return row_mark(source, row.values) in finished

            skip = finished_before if finished else None
            async for item in follow_table(table, since=since, interval=watch, done=skip):
                yield item
            return
        offset = plan.seq_offsets.get(name, 0)
        done = plan.done_rows.get(name)
        async with table(since) as reader:
            async for row in reader:
                if done and isinstance(row, SourceRow) and row_mark(source, row.values) in done:
                    continue  # resumed: it already has its outcome in this run (counted in prior_read)
                yield replace(row, seq=row.seq + offset) if offset else row


@dataclass(frozen=True, slots=True)
class RedriveSource:
    """The source rows of an earlier run's changes with these statuses (and codes), in seq order."""

    stream: StreamConfig
    redrive: Redrive
    stable_seqs: bool = True

    def check(self) -> None:
        """The rows come from the ledger: nothing to check."""

    def fingerprint(self) -> str | None:
        return None

    async def resume(self, plan: Plan, ledger: SqliteLedger, done: SeqSet) -> None:
        raise SourceError(f"run {plan.run_id}", "a re-drive cannot be resumed; re-drive its parent again instead")

    async def rows(self, plan: Plan, ledger: SqliteLedger, *, watch: float | None) -> Rows:
        redrive = self.redrive
        async for row in _ledger_rows(ledger, redrive.run_id, self.stream.name, redrive.statuses, redrive.codes):
            yield row


def source_of(
    stream: StreamConfig, *, redrive: Redrive | None = None, environ: Mapping[str, str] | None = None
) -> StreamSource:
    """The one place that looks at a stream's kind of source."""
    if redrive is not None:
        return RedriveSource(stream, redrive)
    if isinstance(stream.source, SqlSourceConfig):
        return TableSource(stream, stream.source, environ)
    return FileSource(stream, stream.source)


async def _ledger_rows(
    ledger: SqliteLedger, run_id: int, stream: str, statuses: Collection[Status], codes: Collection[str] | None
) -> AsyncIterator[SourceRow]:
    async for row in ledger.outcomes(run_id, statuses=statuses, codes=codes, stream=stream):
        values: dict[str, JSON] = dict(row.source_row) if isinstance(row.source_row, Mapping) else {}
        yield SourceRow(seq=row.seq, values=values)


async def _follow_file(source: SourceConfig, *, interval: float) -> Rows:
    """The file's rows each time its contents change, with seqs that keep increasing."""
    seen: str | None = None
    offset = 0
    while True:
        now = fingerprint(source)
        if now != seen and not now.startswith("unreadable"):
            last = 0
            try:
                async with open_reader(source) as reader:
                    async for row in reader:
                        last = row.seq
                        yield replace(row, seq=offset + row.seq)
                seen = now
            except SourceError as exc:  # replaced mid-read, say: try again at the next poll
                _log.warning("syncengine.source_retrying", source=str(source.path), reason=str(exc))
            offset += last
        yield IDLE
        await anyio.sleep(interval)


async def follow_table(
    open_table: Callable[[Position | None], Reader],
    *,
    since: Position | None,
    interval: float,
    done: Callable[[SqlRow], bool] | None = None,
) -> Rows:
    """New and changed rows of a table after ``since``, poll after poll, less those ``done`` says an earlier
    watch finished (it is asked only until the follower has caught up once)."""
    position = since
    seq = 0
    read: OrderedDict[tuple[str, str], None] = OrderedDict()  # (key, cursor) of rows read lately
    while True:
        try:
            async with open_table(position) as reader:
                async for row in reader:
                    assert isinstance(row, SqlRow)
                    mark = (repr(row.position[1]), repr(row.position[0]))
                    if row.replay and mark in read:
                        continue  # read before by this follower, unchanged since: not a new change
                    read[mark] = None
                    if len(read) > _REPLAYS_KEPT:
                        read.popitem(last=False)
                    if not row.replay:
                        position = row.position
                    if done is not None and done(row):
                        continue  # finished by the last watch, after a change that was still pending
                    seq += 1
                    yield replace(row, seq=seq)
        except SourceError as exc:  # a locked or unreachable database: a watch waits for it
            _log.warning("syncengine.source_retrying", source=str(exc.source), reason=exc.reason)
        else:
            done = None  # caught up: every row read from here on is newer than what the last watch saw
        yield IDLE
        await anyio.sleep(interval)
