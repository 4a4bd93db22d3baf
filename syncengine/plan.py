"""A run's plan: new, resumed or re-driven; what each stream skips, and what the last process may have sent.

- A **new** run checks its sources are there and records their fingerprints.
- A **resumed** run (the same run id) checks each file is unchanged, skips the rows below each checkpoint
  unread and the changes that already have a terminal outcome, and reads the dispatch journal: the changes
  without an outcome that a call of the killed process carried are *in doubt* (they may have been applied),
  each with the group it was merged into; every other change without an outcome was never sent.
- A **re-drive** is a new run, linked to an earlier one, whose input is the source rows of its failures; a
  failed change whose key had a later change applied (in that run, or by a later run) is not sent again,
  since it would take the CRM back to an older row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson
import structlog

from syncengine.config import Config, SourceConfig, SqlSourceConfig, StreamConfig
from syncengine.errors import SourceError
from syncengine.ledger import SeqSet, SqliteLedger
from syncengine.ledger.journal import Dispatch, journal_path, prune_journals, read_journal
from syncengine.model import JSON, Change, Status
from syncengine.positions import fingerprint

__all__ = ["InDoubt", "Plan", "Redrive", "finished_rows", "make_plan", "row_mark"]

log = structlog.get_logger("syncengine.plan")

_LAG_ROWS = 20_000  # rows before a database stream's checkpoint that a resume's lag re-read may meet
_RUNS_BACK = 5  # earlier runs whose rows above their checkpoint a restarted watch does not redo


@dataclass(frozen=True, slots=True, kw_only=True)
class Redrive:
    """Send again the changes of an earlier run whose outcome has one of these statuses (and codes)."""

    run_id: int
    statuses: frozenset[Status] = frozenset({Status.FAILED})
    codes: frozenset[str] | None = None


@dataclass(slots=True)
class InDoubt:
    """The changes of one stream that a call of the killed process carried and that have no outcome.

    A file stream's rows keep their seqs across a resume, so a change is known by its seq and re-sent in
    its group; a database stream's rows are re-read with new seqs, so a change is known by its key.
    """

    groups: dict[int, tuple[int, ...]] = field(default_factory=dict)  # seq -> the seqs merged with it
    calls: dict[int, int] = field(default_factory=dict)  # seq -> the last call that carried it
    keys: dict[str, int] = field(default_factory=dict)  # parent NUL key -> the last call (database streams)

    def call_of(self, change: Change) -> int | None:
        """The journaled call that may have applied this change before the last process died, if any."""
        found = self.calls.get(change.seq)
        return found if found is not None else self.keys.get(change.record_key)

    @classmethod
    def build(cls, dispatches: Sequence[Dispatch], done: SeqSet, *, by_key: bool) -> InDoubt:
        doubt = cls()
        for call in dispatches:  # oldest first: a later call of the same change wins
            for key, seqs in call.records:
                open_seqs = tuple(s for s in seqs if s not in done)
                if not open_seqs:
                    continue
                if by_key:
                    doubt.keys[key] = call.id
                    continue
                for seq in open_seqs:
                    doubt.groups[seq] = open_seqs
                    doubt.calls[seq] = call.id
        return doubt

    def __len__(self) -> int:
        return len(self.calls) + len(self.keys)


@dataclass(slots=True)
class Plan:
    """What each stream reads in this run, and what it may skip."""

    run_id: int
    streams: list[StreamConfig]
    resumed: bool = False
    skip: dict[str, SeqSet] = field(default_factory=dict)  # resume: seqs that already have a terminal outcome
    start_after: dict[str, int] = field(default_factory=dict)  # resume: checkpoints
    seq_offsets: dict[str, int] = field(default_factory=dict)  # resume: database streams' seqs go on from here
    # Resume of a database stream: rows above its checkpoint that already have an outcome in this run
    # (by key and cursor value), and how many outcomes it already has (they count as read).
    done_rows: dict[str, set[tuple[bytes, bytes]]] = field(default_factory=dict)
    prior_read: dict[str, int] = field(default_factory=dict)
    in_doubt: dict[str, InDoubt] = field(default_factory=dict)  # resume: what the last process may have sent
    retry_of: int | None = None  # a re-drive: the run whose failures it sends again
    superseded: dict[str, set[int]] = field(default_factory=dict)  # re-drive: seqs a later change overtook

    def possibly_sent(self, change: Change) -> int | None:
        """The call of an earlier process of this run that may have applied ``change`` (None: never sent)."""
        doubt = self.in_doubt.get(change.stream)
        return doubt.call_of(change) if doubt is not None else None


async def finished_rows(ledger: SqliteLedger, stream: StreamConfig, run_id: int) -> set[tuple[bytes, bytes]]:
    """Rows of a database stream (``row_mark``) that the last runs finished above their checkpoint.

    A stop leaves the stored position below a change still pending, so a restarted watch reads the rows done
    after it again: with these it drops them instead of sending them again (even with ``--full``).
    """
    source = stream.source
    if not isinstance(source, SqlSourceConfig):
        return set()
    marks: set[tuple[bytes, bytes]] = set()
    for run in await ledger.runs(limit=_RUNS_BACK + 1):
        if run.run_id == run_id or stream.name not in run.streams:
            continue
        after = (await ledger.checkpoints(run.run_id)).get(stream.name, 0)
        for row in await ledger.source_rows_after(run.run_id, stream.name, after):
            if isinstance(row, dict):
                marks.add(row_mark(source, row))
    return marks


def row_mark(source: SqlSourceConfig, values: Mapping[str, JSON]) -> tuple[bytes, bytes]:
    """A database row's identity for a resume: its key and cursor values, as read."""
    cursor = orjson.dumps(values.get(source.cursor)) if source.cursor else b""
    return orjson.dumps(values.get(source.key)), cursor


def check_sources(streams: Sequence[StreamConfig]) -> None:
    """Fail before the run starts, not halfway, when a source file is not there."""
    for stream in streams:
        if not isinstance(stream.source, SourceConfig):
            continue  # a database is checked when its reader opens
        path = Path(stream.source.path)
        if not path.is_file():
            raise SourceError(str(path), f"stream {stream.name!r}: no such file")


async def make_plan(
    config: Config,
    ledger: SqliteLedger,
    *,
    names: Sequence[str],
    resume: int | None,
    redrive: Redrive | None,
    dry_run: bool,
) -> Plan:
    """Start a new run, or reopen the one to resume after checking its sources are unchanged."""
    if resume is not None:
        return await _resume(config, ledger, resume)
    if redrive is not None:
        before = await ledger.summary(redrive.run_id)
        names = [n for n in before.streams if not names or n in names]
        overtaken = {
            n: await ledger.superseded_seqs(redrive.run_id, n, statuses=redrive.statuses, codes=redrive.codes)
            for n in names
        }
    else:
        names = list(names) or [s.name for s in config.streams]
    streams = [config.stream(n) for n in names]
    if redrive is None:
        check_sources(streams)
    if not dry_run:  # the journals of runs that completed will never be read again
        await anyio.to_thread.run_sync(prune_journals, config.ledger.path, await ledger.unfinished_runs())
    run_id = await ledger.start_run(
        config_file=str(config.file),
        streams=names,
        dry_run=dry_run,
        retry_of=redrive.run_id if redrive else None,
    )
    if redrive is None:
        await ledger.set_sources(
            run_id, {s.name: fingerprint(s.source) for s in streams if isinstance(s.source, SourceConfig)}
        )
        return Plan(run_id=run_id, streams=streams)
    return Plan(run_id=run_id, streams=streams, retry_of=redrive.run_id, superseded=overtaken)


async def _resume(config: Config, ledger: SqliteLedger, run_id: int) -> Plan:
    before = await ledger.summary(run_id)
    if before.retry_of is not None:
        raise SourceError(f"run {run_id}", "a re-drive cannot be resumed; re-drive its parent again instead")
    streams = [config.stream(n) for n in before.streams]
    check_sources(streams)
    recorded = await ledger.sources(run_id)
    for stream in streams:
        if not isinstance(stream.source, SourceConfig):
            continue  # a database source resumes from its stored position, not a file's seq
        if stream.name in recorded and recorded[stream.name] != fingerprint(stream.source):
            raise SourceError(
                str(stream.source.path),
                f"changed since run {run_id} started: resuming would send the wrong rows; "
                "run it as a new run instead (without --resume)",
            )
    plan = Plan(run_id=run_id, streams=streams, resumed=True, start_after=await ledger.checkpoints(run_id))
    done = {s.name: await ledger.terminal_seqs(run_id, s.name) for s in streams}
    dispatches = await anyio.to_thread.run_sync(read_journal, journal_path(config.ledger.path, run_id))
    for stream in streams:
        table = isinstance(stream.source, SqlSourceConfig)
        calls = [d for d in dispatches if d.stream == stream.name]
        plan.in_doubt[stream.name] = InDoubt.build(calls, done[stream.name], by_key=table)
        if not table:
            plan.skip[stream.name] = done[stream.name]
        elif isinstance(stream.source, SqlSourceConfig):
            await _resume_table(plan, ledger, stream.name, stream.source, len(done[stream.name]))
    await ledger.reopen_run(run_id)
    log.info(
        "syncengine.run_resuming",
        run_id=run_id,
        done={k: len(v) for k, v in plan.skip.items()},
        checkpoints=plan.start_after,
        in_doubt={k: len(v) for k, v in plan.in_doubt.items() if len(v)},
    )
    return plan


async def _resume_table(plan: Plan, ledger: SqliteLedger, name: str, source: SqlSourceConfig, done: int) -> None:
    """A database stream resumes from its stored position; its seqs go on after the ones already recorded,
    and rows re-read above the checkpoint that already have an outcome in this run are not redone."""
    offset = plan.seq_offsets[name] = await ledger.max_seq(plan.run_id, name)
    plan.prior_read[name] = done
    # Above the checkpoint, and the last rows before it too: the lag window re-reads those.
    after = max(0, min(plan.start_after.get(name, 0), offset - _LAG_ROWS))
    rows = await ledger.source_rows_after(plan.run_id, name, after)
    plan.done_rows[name] = {row_mark(source, row) for row in rows if isinstance(row, dict)}
