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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import orjson
import structlog

from syncengine.config import Config, SqlSourceConfig, StreamConfig
from syncengine.errors import SourceError
from syncengine.ledger import SeqSet, SqliteLedger
from syncengine.ledger.journal import Dispatch, journal_path, prune_journals, read_journal
from syncengine.model import JSON, Change, Status

__all__ = ["InDoubt", "Plan", "Redrive", "Source", "StreamPlan", "finished_rows", "make_plan", "row_mark"]

_log = structlog.get_logger("syncengine.plan")

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
    calls: dict[int, set[int]] = field(default_factory=dict)  # seq -> every call that carried it
    keys: dict[str, set[int]] = field(default_factory=dict)  # parent NUL key -> its calls (database streams)

    def calls_of(self, change: Change) -> frozenset[int]:
        """The journaled calls (of earlier processes of the run) that may have applied this change."""
        found = self.calls.get(change.seq)
        if found is None:
            found = self.keys.get(change.record_key)
        return frozenset(found) if found else frozenset()

    @classmethod
    def build(cls, dispatches: Sequence[Dispatch], done: SeqSet, *, by_key: bool) -> InDoubt:
        """From the journal: every change without an outcome that a call carried, and per key one group.

        A key's in-doubt changes form one group even when several calls carried them (one after the other,
        in order): the CRM may hold the newest of them already, so a resume must write their merged state
        once, never the older ones again one by one.
        """
        doubt = cls()
        per_key: dict[str, set[int]] = {}
        for call in dispatches:
            for key, seqs in call.records:
                open_seqs = [s for s in seqs if s not in done]
                if not open_seqs:
                    continue
                if by_key:
                    doubt.keys.setdefault(key, set()).add(call.id)
                    continue
                per_key.setdefault(key, set()).update(open_seqs)
                for seq in open_seqs:
                    doubt.calls.setdefault(seq, set()).add(call.id)
        for merged in per_key.values():
            group = tuple(sorted(merged))
            for seq in group:
                doubt.groups[seq] = group
        return doubt

    def __len__(self) -> int:
        return len(self.calls) + len(self.keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamPlan:
    """What one stream of the run skips, re-sends as before, or must not send again."""

    skip: SeqSet | None = None  # resume: seqs that already have a terminal outcome
    in_doubt: InDoubt | None = None  # resume: what the killed process may have sent
    # A re-drive: failed changes whose key a later change of the run overtook -> those later source rows.
    superseded: Mapping[int, list[JSON]] | None = None


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
    sources: dict[str, Source] = field(default_factory=dict)  # what each stream reads
    in_doubt: dict[str, InDoubt] = field(default_factory=dict)  # resume: what the last process may have sent
    retry_of: int | None = None  # a re-drive: the run whose failures it sends again
    superseded: dict[str, dict[int, list[JSON]]] = field(default_factory=dict)  # re-drive: see StreamPlan

    def of(self, stream: str) -> StreamPlan:
        return StreamPlan(
            skip=self.skip.get(stream), in_doubt=self.in_doubt.get(stream), superseded=self.superseded.get(stream)
        )

    def possibly_sent(self, change: Change) -> frozenset[int]:
        """The calls of earlier processes of this run that may have applied ``change`` (none: never sent)."""
        doubt = self.in_doubt.get(change.stream)
        return doubt.calls_of(change) if doubt is not None else frozenset()


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


class Source(Protocol):
    """What the plan asks of a stream's source (``sources.StreamSource``)."""

    @property
    def stream(self) -> StreamConfig: ...

    @property
    def stable_seqs(self) -> bool:
        """A row keeps its seq across a resume (a file), or is re-read with a new one (a table)."""
        ...

    def check(self) -> None: ...

    def fingerprint(self) -> str | None: ...

    async def resume(self, plan: Plan, ledger: SqliteLedger, done: SeqSet) -> None: ...


async def make_plan(
    config: Config,
    ledger: SqliteLedger,
    source_of: Callable[[StreamConfig], Source],
    *,
    names: Sequence[str],
    resume: int | None,
    redrive: Redrive | None,
    dry_run: bool,
) -> Plan:
    """Start a new run, or reopen the one to resume after checking its sources are unchanged."""
    if resume is not None:
        return await _resume(config, ledger, source_of, resume)
    overtaken: dict[str, dict[int, list[JSON]]] = {}
    if redrive is not None:
        before = await ledger.summary(redrive.run_id)
        names = [n for n in before.streams if not names or n in names]
        for n in names:
            overtaken[n] = await ledger.overtaken(redrive.run_id, n, statuses=redrive.statuses, codes=redrive.codes)
    else:
        names = list(names) or [s.name for s in config.streams]
    sources = [source_of(config.stream(n)) for n in names]
    for source in sources:
        source.check()
    if not dry_run:  # the journals of runs that completed will never be read again
        await anyio.to_thread.run_sync(prune_journals, config.ledger.path, await ledger.unfinished_runs())
    run_id = await ledger.start_run(
        config_file=str(config.file), streams=names, dry_run=dry_run, retry_of=redrive.run_id if redrive else None
    )
    prints = {s.stream.name: p for s in sources if (p := s.fingerprint()) is not None}
    if prints:
        await ledger.set_sources(run_id, prints)
    return Plan(
        run_id=run_id,
        streams=[s.stream for s in sources],
        sources={s.stream.name: s for s in sources},
        retry_of=redrive.run_id if redrive else None,
        superseded=overtaken,
    )


async def _resume(
    config: Config, ledger: SqliteLedger, source_of: Callable[[StreamConfig], Source], run_id: int
) -> Plan:
    before = await ledger.summary(run_id)
    if before.retry_of is not None:
        raise SourceError(f"run {run_id}", "a re-drive cannot be resumed; re-drive its parent again instead")
    sources = [source_of(config.stream(n)) for n in before.streams]
    recorded = await ledger.sources(run_id)
    for source in sources:
        source.check()
        name = source.stream.name
        if name in recorded and recorded[name] != source.fingerprint():
            raise SourceError(
                str(getattr(source.stream.source, "path", name)),
                f"changed since run {run_id} started: resuming would send the wrong rows; "
                "run it as a new run instead (without --resume)",
            )
    plan = Plan(
        run_id=run_id,
        streams=[s.stream for s in sources],
        sources={s.stream.name: s for s in sources},
        resumed=True,
        start_after=await ledger.checkpoints(run_id),
    )
    calls = await anyio.to_thread.run_sync(read_journal, journal_path(config.ledger.path, run_id))
    for source in sources:
        name = source.stream.name
        done = await ledger.terminal_seqs(run_id, name)
        mine = [c for c in calls if c.stream == name]
        plan.in_doubt[name] = InDoubt.build(mine, done, by_key=not source.stable_seqs)
        await source.resume(plan, ledger, done)
    await ledger.reopen_run(run_id)
    _log.info(
        "syncengine.run_resuming",
        run_id=run_id,
        done={k: len(v) for k, v in plan.skip.items()},
        checkpoints=plan.start_after,
        in_doubt={k: len(v) for k, v in plan.in_doubt.items() if len(v)},
    )
    return plan
