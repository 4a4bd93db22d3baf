"""Wires the stages together; the one place tasks are started.

    readers ──Change──► batcher ──Payload──► workers ──Outcome──► ledger writer

One task group owns every stage. Readers hand changes to the batcher (which bounds what it holds),
workers pull payloads from it, and every outcome goes through one bounded stream to the single
ledger writer, whose final flush is shielded from cancellation.

A run is new, a resume (the same run id: changes that already have a terminal outcome are skipped), or a
re-drive (a new run, linked to an earlier one, whose input is the source rows of that run's failures).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import anyio
import structlog

from syncengine.batcher import Batcher
from syncengine.config import Config, Secrets, SourceConfig, StreamConfig
from syncengine.crm.auth import TokenProvider
from syncengine.crm.transport import Transport
from syncengine.errors import (
    AuthError,
    LedgerError,
    SecretsError,
    SourceError,
    StreamHalted,
    SyncError,
    TransportError,
)
from syncengine.follow import follow_file, follow_table
from syncengine.intake import Intake
from syncengine.ledger import LedgerWriter, RunSummary, SqliteLedger
from syncengine.ledger.journal import CallJournal, journal_path
from syncengine.limits import CreditMeter, Limits
from syncengine.metrics import Telemetry
from syncengine.model import Outcome
from syncengine.plan import Plan, Redrive, finished_rows, make_plan, row_mark
from syncengine.positions import Checkpoints, ledger_rows
from syncengine.progress import RunProgress
from syncengine.readers import Reader, Row, SourceRow, open_reader
from syncengine.readers.sql import Position, SqlRow
from syncengine.unchanged import Passes, SkipUnchanged
from syncengine.workers import CallStats, RetryPolicy, Sender, Worker, failed_outcome

__all__ = ["Redrive", "RunControl", "RunOptions", "RunResult", "run_sync"]

log = structlog.get_logger("syncengine.pipeline")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run, beyond the config file."""

    streams: tuple[str, ...] = ()  # empty: every stream of the config
    dry_run_path: Path | None = None  # set: dry run, the would-be requests are written here as JSONL
    resume: int | None = None  # continue this run: what already has a terminal outcome is skipped
    redrive: Redrive | None = None
    full: bool = False  # send every change, even one identical to the last that succeeded for its key
    watch: float | None = None  # follow the sources, polling every this many seconds, until stopped
    environ: Mapping[str, str] | None = None  # where a postgres source's DSN variable is looked up
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_buffered: int = 10_000  # changes the batcher may hold: the memory bound of the pipeline
    outcome_buffer: int = 2_000
    stop_timeout: float = 30.0  # after a stop request, how long calls in flight may take to finish


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """The run as the ledger recorded it, plus what the engine saw on the wire."""

    summary: RunSummary
    halted: tuple[str, ...]  # messages of streams stopped by a request-level config error
    stopped: str | None  # why the run stopped early (credits, budget, auth, a signal), if it did
    fatal: bool  # stopped by something only the user can fix (credentials): exit code 2
    interrupted: bool  # stopped on request (Ctrl-C, SIGTERM): exit code 130
    calls: int
    throttled: int
    refreshes: int
    max_in_flight: int
    watched: bool = False  # a watch (stopped on request, as a watch is meant to be)
    planned_calls: int = 0  # dry run: calls it would make
    planned_credits: int = 0  # dry run: credits they would cost
    credits_left: int | None = None  # of the daily budget, when one is set, at the start of the run


class RunControl:
    """Stop a run from outside: ``stop`` lets calls in flight finish, ``abort`` cancels them."""

    def __init__(self) -> None:
        self.stop_requested = anyio.Event()
        self.abort_requested = anyio.Event()

    def stop(self) -> None:
        self.stop_requested.set()

    def abort(self) -> None:
        self.stop_requested.set()
        self.abort_requested.set()


async def run_sync(
    config: Config,
    secrets: Secrets | None,
    *,
    options: RunOptions,
    progress: RunProgress | None = None,
    control: RunControl | None = None,
    telemetry: Telemetry | None = None,
) -> RunResult:
    """One run of the selected streams. Returns once every change read has its outcome in the ledger."""
    progress = progress or RunProgress()
    control = control or RunControl()
    dry_run = options.dry_run_path is not None
    crm = config.crm
    halted: list[str] = []
    stopped: str | None = None
    fatal = False
    stats = CallStats()
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        # A dry run changes no ledger state: its outcomes go to a throwaway ledger.
        ledger_path = (
            Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dry-run.db" if dry_run else config.ledger.path
        )
        ledger = await stack.enter_async_context(SqliteLedger(ledger_path))
        # What earlier runs recorded (digests of successes, credits spent) still shapes a dry run, so its
        # would-be requests are the real ones; it only reads the real ledger, if there is one.
        history: SqliteLedger | None = ledger
        if dry_run:
            history = (
                await stack.enter_async_context(SqliteLedger(config.ledger.path))
                if config.ledger.path.is_file()
                else None
            )
        plan = await make_plan(
            config, ledger, names=options.streams, resume=options.resume, redrive=options.redrive, dry_run=dry_run
        )
        run_id = plan.run_id
        # A dry run's throwaway ledger numbers its runs anew: its passes must not pass for a real run's.
        passes = Passes(-1 if dry_run else run_id)
        unchanged = (
            {}
            if history is None
            else {
                s.name: SkipUnchanged(s.name, passes, full=options.full, retry_of=plan.retry_of) for s in plan.streams
            }
        )
        dry_out: IO[bytes] | None = (
            stack.enter_context(options.dry_run_path.open("wb")) if options.dry_run_path is not None else None
        )
        # Every call is journaled right before it goes out, so a resume knows what this process may have sent.
        journal = None if dry_run else stack.enter_context(CallJournal(journal_path(config.ledger.path, run_id)))
        transport = await stack.enter_async_context(
            Transport(timeout=crm.timeout, max_connections=crm.concurrency + 2, ca_file=crm.ca_file)
        )
        tokens = None if dry_run or secrets is None else TokenProvider(transport, crm.token_url, secrets)
        limits = Limits(
            concurrency=crm.concurrency,
            sub_concurrency=crm.sub_concurrency,
            requests_per_second=crm.requests_per_second,
        )
        credits = CreditMeter(await _credits_left(crm.credit_budget, history))
        # A watch never gives records up to an outage: it waits the outage out and sends them again.
        policy = replace(options.policy, outage_give_ups=1) if options.watch is not None else options.policy
        sender = Sender(
            request=transport.request,
            tokens=tokens,
            limits=limits,
            credits=credits,
            policy=policy,
            stats=stats,
        )
        batcher = Batcher(max_buffered=options.max_buffered)
        checkpoints = Checkpoints(plan.start_after)
        log.info(
            "syncengine.run_started",
            run_id=run_id,
            streams=[s.name for s in plan.streams],
            dry_run=dry_run,
            resumed=options.resume is not None,
            retry_of=options.redrive.run_id if options.redrive else None,
        )
        if telemetry is not None:
            telemetry.progress, telemetry.stats, telemetry.limits = progress, stats, limits
            telemetry.refreshes = (lambda: tokens.refreshes) if tokens is not None else (lambda: 0)
            telemetry.run_id, telemetry.state = run_id, "running"
        send, receive = anyio.create_memory_object_stream[Outcome](options.outcome_buffer)

        def on_flush(batch: Sequence[Outcome]) -> None:
            progress.on_flush(batch)
            for decisions in unchanged.values():
                decisions.committed(batch)

        writer = LedgerWriter(
            ledger,
            run_id,
            on_flush=on_flush,
            checkpoints=checkpoints,
            credits=credits.take,
            positions=checkpoints.positions,
            passes=passes.of,
        )

        def on_stop(reason: Exception) -> None:
            nonlocal stopped, fatal
            if stopped is None:
                stopped = str(reason)
                fatal = isinstance(reason, AuthError | SecretsError) or (
                    isinstance(reason, TransportError) and not reason.retryable
                )
                level = log.info if control.stop_requested.is_set() else log.error
                level("syncengine.run_stopping", reason=stopped, cause=type(reason).__name__)
            batcher.stop()

        halted_streams: set[str] = set()

        async def on_halt(error: StreamHalted) -> None:
            if error.stream in halted_streams:
                return
            halted_streams.add(error.stream)
            halted.append(f"{error.stream}: {error.code}: {error.message}")
            log.error("syncengine.stream_halted", stream=error.stream, code=error.code, message=error.message)
            note = f"stream {error.stream!r} halted"
            for change in batcher.halt(error.stream):
                await send.send(failed_outcome(change, code=error.code, message=error.message, note=note))

        def _intake(stream: StreamConfig) -> Intake:
            return Intake(
                stream,
                batcher=batcher,
                outcomes=send.clone(),
                progress=progress,
                checkpoints=checkpoints,
                skip=plan.skip.get(stream.name),
                chains=history,
                unchanged=unchanged.get(stream.name),
                passes=passes,
                in_doubt=plan.in_doubt.get(stream.name),
                superseded=plan.superseded.get(stream.name),
                halt=halt,
                on_source_error=on_source_error,
            )

        async def halt(stream: str, code: str, message: str) -> None:
            await on_halt(StreamHalted(stream, code, message))

        def on_source_error(name: str, error: SourceError) -> None:
            halted.append(f"{name}: SOURCE_ERROR: {error}")
            log.error("syncengine.source_failed", stream=name, reason=str(error))

        async def on_request(stages: anyio.CancelScope) -> None:
            await control.stop_requested.wait()
            on_stop(SyncError("stopped on request (calls in flight finish, the rest stays pending)"))
            with anyio.move_on_after(options.stop_timeout):
                await control.abort_requested.wait()
            stages.cancel()  # a second request, or the calls in flight took too long

        state = "interrupted"  # unless the run gets to say otherwise
        ledger_failure: LedgerError | None = None

        async def write(cancel: anyio.CancelScope) -> None:
            # The ledger failing (a full disk) ends the run: everything committed stays, the rest is
            # pending. Its error is the one to report, not the closed stream the workers then meet.
            nonlocal ledger_failure
            try:
                await writer.run(receive)
            except LedgerError as exc:
                ledger_failure = exc
                log.error("syncengine.ledger_failed", reason=str(exc))
                cancel.cancel()

        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(write, tg.cancel_scope)
                    async with send, anyio.create_task_group() as stages:
                        stages.start_soon(on_request, stages.cancel_scope)
                        # Readers hold nothing in flight: a stop cancels them at once (a quiet source may be
                        # sleeping between polls), while workers finish their calls.
                        readers = anyio.CancelScope()
                        stages.start_soon(_cancel_on, batcher.stopping, readers)
                        async with anyio.create_task_group() as work:

                            async def read_all() -> None:
                                with readers:
                                    async with anyio.create_task_group() as intakes:
                                        for stream in plan.streams:
                                            intakes.start_soon(
                                                _intake(stream).run, _rows(stream, ledger, options, plan)
                                            )

                            for stream in plan.streams:
                                batcher.open_input()
                                progress.read[stream.name] += plan.prior_read.get(stream.name, 0)
                                if stream.name in plan.skip:
                                    progress.read[stream.name] += plan.skip[stream.name].count_upto(
                                        plan.start_after.get(stream.name, 0)
                                    )
                            work.start_soon(read_all)
                            for _ in range(crm.concurrency):
                                worker = Worker(
                                    sender=sender,
                                    batcher=batcher,
                                    outcomes=send,
                                    api_base=crm.api_base,
                                    trigger=crm.trigger,
                                    policy=policy,
                                    on_halt=on_halt,
                                    on_stop=on_stop,
                                    dry_run_out=dry_out,
                                    persistent=options.watch is not None,
                                    possibly_sent=plan.possibly_sent if plan.resumed else None,
                                    journal=journal.record if journal is not None else None,
                                )
                                work.start_soon(worker.run)
                        stages.cancel_scope.cancel()  # the work is done: stop waiting for a stop request
            except BaseExceptionGroup as group:
                closed = (anyio.BrokenResourceError, anyio.ClosedResourceError)
                if ledger_failure is None or group.split(closed)[1] is not None:
                    raise
            if ledger_failure is not None:
                state = "failed"
                raise ledger_failure
            if control.stop_requested.is_set():
                # A watch ends on request; what it held is read again from the stored positions next time.
                state = "completed" if options.watch is not None else "interrupted"
            elif batcher.stopped:
                state = "failed" if fatal else "paused"
            else:
                state = "halted" if halted else "completed"
        finally:
            # Ctrl-C or a crash still closes the run in the ledger with what was committed.
            with anyio.CancelScope(shield=True):
                try:
                    summary = await ledger.finish_run(run_id, state=state, read=dict(progress.read))
                except LedgerError:
                    if ledger_failure is None:
                        raise
                    # The ledger cannot be written (still full): the run stays "running" in it,
                    # and a resume picks it up; the first error is the one reported.
            if telemetry is not None:
                telemetry.state = state
    elapsed = time.monotonic() - started
    log.info(
        "syncengine.run_finished",
        run_id=run_id,
        state=state,
        read=summary.read,
        succeeded=summary.succeeded,
        rejected=summary.rejected,
        failed=summary.failed,
        invalid=summary.invalid,
        pending=summary.pending,
        calls=stats.calls,
        throttled=stats.throttled,
        max_in_flight=limits.general.max_in_flight,
        elapsed_s=round(elapsed, 3),
        rate=round(summary.read / elapsed, 1) if elapsed > 0 else None,
    )
    return RunResult(
        summary=summary,
        halted=tuple(halted),
        stopped=stopped,
        fatal=fatal,
        interrupted=control.stop_requested.is_set(),
        calls=stats.calls,
        throttled=stats.throttled,
        refreshes=tokens.refreshes if tokens is not None else 0,
        max_in_flight=limits.general.max_in_flight,
        watched=options.watch is not None,
        planned_calls=stats.planned_calls,
        planned_credits=stats.planned_credits,
        credits_left=credits.budget,
    )


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when ``event`` is set (the task is cancelled with its group when the work is done)."""
    await event.wait()
    scope.cancel()


async def _credits_left(budget: int | None, ledger: SqliteLedger | None) -> int | None:
    """The daily budget less what every run spent in the last 24 hours (Zoho's window is rolling)."""
    if budget is None or ledger is None:
        return budget
    spent = await ledger.credits_since(time.time() - 86_400)
    if spent:
        log.info("syncengine.credits_budget", budget=budget, spent_last_24h=spent, left=max(0, budget - spent))
    return max(0, budget - spent)


async def _rows(
    stream: StreamConfig, ledger: SqliteLedger, options: RunOptions, plan: Plan
) -> AsyncIterator[Row | object]:
    """The rows a stream reads in this run: a file, a table after its stored position, or a re-drive's."""
    source = stream.source
    if options.redrive is not None:
        redrive = options.redrive
        rows = ledger_rows(ledger, redrive.run_id, stream.name, statuses=redrive.statuses, codes=redrive.codes)
        async for redriven in rows:
            yield redriven
        return
    if isinstance(source, SourceConfig):
        if options.watch is not None:
            async for item in follow_file(source, interval=options.watch):
                yield item
            return
        # Resumed: rows at or below the checkpoint all have their outcome; the reader skips them unparsed.
        async with open_reader(source, start_after=plan.start_after.get(stream.name, 0)) as reader:
            async for file_row in reader:
                yield file_row
        return
    stored = await ledger.source_position(stream.name)
    since = (stored[0], stored[1]) if isinstance(stored, list) and len(stored) == 2 else None
    environ = options.environ

    def table(after: Position | None) -> Reader:
        return open_reader(source, since=after, environ=environ)

    if options.watch is not None:
        finished = await finished_rows(ledger, stream, plan.run_id)

        def finished_before(row: SqlRow) -> bool:
            return row_mark(source, row.values) in finished

        skip = finished_before if finished else None
        async for item in follow_table(table, since=since, interval=options.watch, done=skip):
            yield item
        return
    offset = plan.seq_offsets.get(stream.name, 0)
    done = plan.done_rows.get(stream.name)
    async with open_reader(source, since=since, environ=environ) as reader:
        async for row in reader:
            if done and isinstance(row, SourceRow) and row_mark(source, row.values) in done:
                continue  # resumed: it already has its outcome in this run (counted in prior_read)
            yield replace(row, seq=row.seq + offset) if offset else row


def selected_sources(config: Config, names: Sequence[str]) -> list[Path]:
    """The source files a run will read, for the progress estimate."""
    streams = [config.stream(n) for n in names] if names else list(config.streams)
    return [s.source.path for s in streams if isinstance(s.source, SourceConfig)]
