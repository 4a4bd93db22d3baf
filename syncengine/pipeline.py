"""One run: ``async with Run(config, secrets, options) as run: result = await run.run()``.

    readers ──Change──► batcher ──Payload──► workers ──Outcome──► ledger writer

``Run`` opens what a run needs (the ledger, its plan, the call journal, the transport, tokens, limits, the
sender and the batcher; the first token is fetched while the ledger opens, so that refused credentials stop
the run before any row is read) and holds the task groups: the writer outlives every stage, and every stage reports
through ``RunStops`` (``control.py``), which says at the end how the run ended (``RunEnd``). What each stream
reads is its source's (``sources.py``); what a resumed or re-driven run skips is the plan's (``plan.py``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import anyio
import structlog

from syncengine.batcher import Batcher
from syncengine.config import Config, CrmConfig, Secrets, SourceConfig, StreamConfig
from syncengine.control import RunControl, RunEnd, RunStops
from syncengine.crm.auth import LockoutPolicy, TokenProvider
from syncengine.crm.tokencache import TokenCache
from syncengine.crm.transport import Transport
from syncengine.dryrun import DryRunSender
from syncengine.errors import LedgerError, SyncError, TransportError
from syncengine.external import StrategyReport, ladder_for
from syncengine.intake import Intake
from syncengine.ledger import LedgerWriter, RunSummary, SqliteLedger
from syncengine.ledger.checkpoints import Checkpoints
from syncengine.ledger.journal import CallJournal, journal_path
from syncengine.limits import CreditMeter, Limits
from syncengine.metrics import Telemetry
from syncengine.model import Outcome
from syncengine.plan import Plan, Redrive, make_plan
from syncengine.progress import RunProgress
from syncengine.sender import CallStats, RetryPolicy, Sender
from syncengine.sources import StreamSource, source_of
from syncengine.unchanged import Passes, SkipUnchanged
from syncengine.workers import Sends, Worker, WorkerSettings

__all__ = ["Redrive", "Run", "RunControl", "RunEnd", "RunOptions", "RunResult", "run_sync", "selected_sources"]

_log = structlog.get_logger("syncengine.pipeline")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run, beyond the config file."""

    streams: tuple[str, ...] = ()  # empty: every stream of the config
    dry_run_path: Path | None = None  # set: dry run, the would-be requests are written here as JSONL
    resume: int | None = None  # continue this run: what already has a terminal outcome is skipped
    redrive: Redrive | None = None
    full: bool = False  # send every change, even one the CRM already holds
    watch: float | None = None  # follow the sources, polling every this many seconds, until stopped
    environ: Mapping[str, str] | None = None  # where a postgres source's DSN variable is looked up
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)  # "Access Denied": a run pauses, a watch waits
    max_buffered: int = 10_000  # changes the batcher may hold: the memory bound of the pipeline
    outcome_buffer: int = 2_000
    stop_timeout: float = 30.0  # after a stop request, how long calls in flight may take to finish


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """The run as the ledger recorded it, how it ended, and what the engine saw on the wire."""

    summary: RunSummary
    end: RunEnd
    halted: tuple[str, ...]  # messages of streams stopped by a request-level config error or their source
    stopped: str | None  # why sending stopped early (credits, budget, auth, a signal), if it did
    calls: int
    throttled: int
    refreshes: int
    max_in_flight: int
    watched: bool = False  # a watch (stopped on request, as a watch is meant to be)
    planned_calls: int = 0  # dry run: calls it would make
    planned_credits: int = 0  # dry run: credits they would cost
    credits_left: int | None = None  # of the daily budget, when one is set, at the start of the run
    credits: int = 0  # spent by this run's calls (Zoho's cost table; dry run: 0, see planned_credits)
    external: tuple[StrategyReport, ...] = ()  # per stream updating by external value: how, and its cost

    @property
    def run_id(self) -> int:
        return self.summary.run_id

    @property
    def fatal(self) -> bool:
        """Stopped by something only the user can fix (credentials, a certificate): exit code 2."""
        return self.end is RunEnd.FATAL

    @property
    def interrupted(self) -> bool:
        """Stopped on request (Ctrl-C, SIGTERM): exit code 130, or 0 for a watch."""
        return self.end is RunEnd.INTERRUPTED


class Run:
    """One run of the selected streams; ``run()`` returns once every change read has its outcome."""

    def __init__(
        self,
        config: Config,
        secrets: Secrets | None,
        options: RunOptions,
        *,
        progress: RunProgress | None = None,
        control: RunControl | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._config, self._secrets, self._options = config, secrets, options
        self._progress = progress or RunProgress()
        self._control = control or RunControl()
        self._telemetry = telemetry
        self._stack = AsyncExitStack()
        self._stats = CallStats()
        self._dry_run = options.dry_run_path is not None
        self._started = time.monotonic()
        self._sources: dict[str, StreamSource] = {}
        self._end = RunEnd.INTERRUPTED  # unless the run gets to say otherwise (Ctrl-C, a crash)

    async def __aenter__(self) -> Run:
        await self._stack.__aenter__()
        try:
            await self._open()
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _open(self) -> None:
        config, options, stack, crm = self._config, self._options, self._stack, self._config.crm
        self._transport = await stack.enter_async_context(
            Transport(timeout=crm.timeout, max_connections=crm.concurrency + 2, ca_file=crm.ca_file)
        )
        self._batcher = Batcher(max_buffered=options.max_buffered)
        self._tokens = _token_provider(config, self._secrets, self._transport, options)
        if self._tokens is not None:  # a wait for a lockout ends when the run stops
            self._tokens.stopping = (self._batcher.stopping, self._control.stop_requested)
        start = _Start(api_base=crm.api_base)
        try:
            async with anyio.create_task_group() as tg:  # the first token while the ledger opens (_first_token)
                tg.start_soon(_first_token, self._tokens, crm, start, options.watch is not None)
                self._ledger, self._history = await _ledgers(stack, config.ledger.path, self._dry_run)
                self._plan = await make_plan(
                    config,
                    self._ledger,
                    self._source_of,
                    names=options.streams,
                    resume=options.resume,
                    redrive=options.redrive,
                    dry_run=self._dry_run,
                )
        except ExceptionGroup as group:  # the fetch raises nothing: the ledger's or the plan's own error
            raise (group.exceptions[0] if len(group.exceptions) == 1 else group) from None
        self._api_base = start.api_base
        # A dry run's throwaway ledger numbers its runs anew: its passes must not pass for a real run's.
        self._passes = Passes(-1 if self._dry_run else self._plan.run_id)
        self._limits = Limits(
            concurrency=crm.concurrency,
            sub_concurrency=crm.sub_concurrency,
            requests_per_second=crm.requests_per_second,
        )
        self._credits = CreditMeter(await _credits_left(crm.credit_budget, self._history))
        sender = _sender(options, stack, self._transport, self._tokens, self._limits, self._credits, self._stats)
        client = self._secrets.client_id if self._secrets is not None else None
        ladder = ladder_for(sender, self._plan.streams, self._api_base, client, store=self._ledger, trigger=crm.trigger)
        self._ladder = ladder
        self._sender: Sends = ladder or sender
        self._outcomes, self._receive = anyio.create_memory_object_stream[Outcome](options.outcome_buffer)
        self._stops = RunStops(self._control, self._batcher, self._outcomes)
        if start.stop is not None:
            self._stops.stop(start.stop)  # before a row is read: the run ends with nothing sent
        self._checkpoints = Checkpoints(self._plan.start_after)
        self._unchanged = _skips(self._plan, self._passes, self._history, full=options.full)

    def _source_of(self, stream: StreamConfig) -> StreamSource:
        source = source_of(stream, redrive=self._options.redrive, environ=self._options.environ)
        self._sources[stream.name] = source
        return source

    async def run(self) -> RunResult:
        plan, config = self._plan, self._config
        self._announce()
        journal = None
        if not self._dry_run:
            # Every call is journaled right before it goes out: a resume knows what this process may have sent.
            journal = self._stack.enter_context(CallJournal(journal_path(config.ledger.path, plan.run_id)))
        settings = WorkerSettings(
            api_base=self._api_base,
            trigger=config.crm.trigger,
            policy=_watch_policy(self._options),
            persistent=self._options.watch is not None,
            possibly_sent=plan.possibly_sent if plan.resumed else None,
            journal=journal.record if journal is not None else None,
        )
        stops = self._stops
        try:
            try:
                async with anyio.create_task_group() as tg:  # the ledger writer outlives every stage
                    tg.start_soon(self._write, tg.cancel_scope)
                    # The stages: a watch on stop requests, the readers and the workers; they end with the work.
                    async with self._outcomes, anyio.create_task_group() as stages:
                        stages.start_soon(stops.watch_requests, stages.cancel_scope, self._options.stop_timeout)
                        readers = anyio.CancelScope()  # a stop cancels the readers at once; workers finish
                        stages.start_soon(_cancel_on, self._batcher.stopping, readers)
                        async with anyio.create_task_group() as work:  # the work: readers and workers
                            _open_inputs(self._plan, self._batcher, self._progress)
                            work.start_soon(self._read_all, readers)
                            for _ in range(config.crm.concurrency):
                                work.start_soon(
                                    Worker(self._sender, self._batcher, self._outcomes, stops, settings).run
                                )
                        stages.cancel_scope.cancel()  # the work is done: stop waiting for a stop request
            except BaseExceptionGroup as group:
                closed = (anyio.BrokenResourceError, anyio.ClosedResourceError)
                if stops.ledger_failure is None or group.split(closed)[1] is not None:
                    raise
            self._end = stops.end()
            if stops.ledger_failure is not None:
                raise stops.ledger_failure
        finally:
            summary = await self._finish()
        return self._result(summary)

    async def _read_all(self, readers: anyio.CancelScope) -> None:
        """Every stream's intake, under ``readers``: they hold nothing in flight, so a stop cancels them at once
        (a quiet source may be sleeping between polls), while the workers finish their calls."""
        with readers:
            async with anyio.create_task_group() as intakes:
                for stream in self._plan.streams:
                    intake = Intake(
                        stream,
                        self._plan.of(stream.name),
                        batcher=self._batcher,
                        outcomes=self._outcomes.clone(),
                        progress=self._progress,
                        checkpoints=self._checkpoints,
                        stops=self._stops,
                        unchanged=self._unchanged.get(stream.name),
                    )
                    rows = self._sources[stream.name].rows(self._plan, self._ledger, watch=self._options.watch)
                    intakes.start_soon(intake.run, rows)

    async def _write(self, cancel: anyio.CancelScope) -> None:
        """The ledger failing (a full disk) ends the run: everything committed stays, the rest is pending.
        Its error is the one to report, not the closed stream the workers then meet."""
        writer = LedgerWriter(
            self._ledger,
            self._plan.run_id,
            on_flush=self._flushed,
            checkpoints=self._checkpoints,
            credits=self._credits.take,
            positions=self._checkpoints.positions,
            passes=self._passes.of,
        )
        try:
            await writer.run(self._receive)
        except LedgerError as exc:
            self._stops.ledger_failed(exc)
            cancel.cancel()

    def _flushed(self, batch: Sequence[Outcome]) -> None:
        self._progress.on_flush(batch)
        for decisions in self._unchanged.values():
            decisions.committed(batch)

    def _announce(self) -> None:
        _log_started(self._plan, self._options, self._dry_run)
        telemetry, tokens = self._telemetry, self._tokens
        if telemetry is not None:
            telemetry.progress, telemetry.stats, telemetry.limits = self._progress, self._stats, self._limits
            telemetry.refreshes = (lambda: tokens.refreshes) if tokens is not None else (lambda: 0)
            telemetry.run_id, telemetry.state = self._plan.run_id, "running"

    async def _finish(self) -> RunSummary | None:
        """Ctrl-C or a crash still closes the run in the ledger with what was committed."""
        state = self._end.state(watch=self._options.watch is not None)
        if self._telemetry is not None:
            self._telemetry.state = state.value
        with anyio.CancelScope(shield=True):
            try:
                return await self._ledger.finish_run(self._plan.run_id, state=state, read=dict(self._progress.read))
            except LedgerError:
                if self._stops.ledger_failure is None:
                    raise
                # The ledger cannot be written (still full): the run stays "running" in it, and a resume
                # picks it up; the first error is the one reported.
                return None
        return None  # not reached: the shielded scope swallows nothing

    def _result(self, summary: RunSummary | None) -> RunResult:
        assert summary is not None  # a ledger failure raised before here
        stats = self._stats
        _log_finished(self._plan.run_id, summary, stats, self._limits, time.monotonic() - self._started)
        external = self._ladder.report() if self._ladder is not None else ()
        return RunResult(
            summary=summary,
            end=self._end,
            halted=tuple(self._stops.halted),
            stopped=self._stops.reason,
            calls=stats.calls,
            throttled=stats.throttled,
            refreshes=self._tokens.refreshes if self._tokens is not None else 0,
            max_in_flight=self._limits.general.max_in_flight,
            watched=self._options.watch is not None,
            planned_calls=stats.planned_calls,
            planned_credits=stats.planned_credits,
            credits_left=self._credits.budget,
            credits=self._credits.spent,
            external=external,
        )


@dataclass(slots=True, kw_only=True)
class _Start:
    """What the token fetch at the start found: where the calls go, and what stops the run before it reads."""

    api_base: str
    stop: SyncError | None = None


async def _first_token(tokens: TokenProvider | None, crm: CrmConfig, start: _Start, watch: bool) -> None:
    """One token fetch at the start, while the ledger opens and the plan is made, so that what no call can get
    past stops the run before any row is read: refused credentials (fatal, nothing to resume), a lockout or an
    accounts server out of reach (a run pauses; a watch waited the lockout out as long as its policy allows, and
    leaves an outage to its workers). A certificate the transport refuses is met again by the first call.

    The token's ``api_domain`` is where the calls go when the config named a data centre.
    """
    if tokens is None:
        return
    try:
        await tokens.token()
    except TransportError as trouble:
        start.stop = trouble if trouble.retryable and not watch else None
        return
    except SyncError as error:  # AuthError (TokenLockout), SecretsError
        start.stop = error
        return
    domain = tokens.call_domain()
    if domain is not None:
        start.api_base = f"{domain}/crm/{crm.api_version}"


def _token_provider(
    config: Config, secrets: Secrets | None, transport: Transport, options: RunOptions
) -> TokenProvider | None:
    """The run's tokens, shared with the host's other processes through the token cache; a watch waits lockouts
    out, a run pauses on them."""
    crm = config.crm
    if options.dry_run_path is not None or secrets is None:
        return None
    return TokenProvider(
        transport,
        crm.token_url,
        secrets,
        cache=TokenCache(crm.token_cache) if crm.token_cache is not None else None,
        lockout=replace(options.lockout, wait=options.watch is not None),
        api_domain=crm.api_domain,
        data_centre=crm.data_centre,
    )


async def _ledgers(stack: AsyncExitStack, path: Path, dry_run: bool) -> tuple[SqliteLedger, SqliteLedger | None]:
    """The ledger the run writes, and the one its history (chains, credits spent) is read from.

    A dry run changes no ledger state: its outcomes go to a throwaway ledger, while what earlier runs
    recorded still shapes it (its would-be requests are the real ones), read from the real ledger.
    """
    if not dry_run:
        ledger = await stack.enter_async_context(SqliteLedger(path))
        return ledger, ledger
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dry-run.db"
    ledger = await stack.enter_async_context(SqliteLedger(scratch))
    history = await stack.enter_async_context(SqliteLedger(path)) if await anyio.Path(path).is_file() else None
    return ledger, history


def _watch_policy(options: RunOptions) -> RetryPolicy:
    """A watch never gives records up to an outage: it waits the outage out and sends them again."""
    return replace(options.policy, outage_give_ups=1) if options.watch is not None else options.policy


def _open_inputs(plan: Plan, batcher: Batcher, progress: RunProgress) -> None:
    """Every stream is an input of the batcher; a resumed stream counts what it already read."""
    for stream in plan.streams:
        batcher.open_input()
        progress.read[stream.name] += plan.prior_read.get(stream.name, 0)
        if stream.name in plan.skip:
            progress.read[stream.name] += plan.skip[stream.name].count_upto(plan.start_after.get(stream.name, 0))


def _sender(
    options: RunOptions,
    stack: AsyncExitStack,
    transport: Transport,
    tokens: TokenProvider | None,
    limits: Limits,
    credits: CreditMeter,
    stats: CallStats,
) -> Sends:
    """The run's sender: the real one, or a dry run's, which writes the would-be calls instead."""
    if options.dry_run_path is not None:
        return DryRunSender(stack.enter_context(options.dry_run_path.open("wb")), stats)
    return Sender(
        request=transport.request,
        tokens=tokens,
        limits=limits,
        credits=credits,
        policy=_watch_policy(options),
        stats=stats,
    )


def _skips(plan: Plan, passes: Passes, history: SqliteLedger | None, *, full: bool) -> dict[str, SkipUnchanged]:
    """Per stream, what decides that a change the CRM already holds is SKIPPED (none without a history)."""
    if history is None:
        return {}
    return {
        s.name: SkipUnchanged(s.name, passes, chains=history, full=full, retry_of=plan.retry_of) for s in plan.streams
    }


def _log_started(plan: Plan, options: RunOptions, dry_run: bool) -> None:
    _log.info(
        "syncengine.run_started",
        run_id=plan.run_id,
        streams=[s.name for s in plan.streams],
        dry_run=dry_run,
        resumed=options.resume is not None,
        retry_of=options.redrive.run_id if options.redrive else None,
    )


def _log_finished(run_id: int, summary: RunSummary, stats: CallStats, limits: Limits, elapsed: float) -> None:
    _log.info(
        "syncengine.run_finished",
        run_id=run_id,
        state=summary.state.value,
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


async def run_sync(
    config: Config,
    secrets: Secrets | None,
    *,
    options: RunOptions,
    progress: RunProgress | None = None,
    control: RunControl | None = None,
    telemetry: Telemetry | None = None,
) -> RunResult:
    """One run of the selected streams (``Run`` as one call)."""
    async with Run(config, secrets, options, progress=progress, control=control, telemetry=telemetry) as run:
        return await run.run()


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
        _log.info("syncengine.credits_budget", budget=budget, spent_last_24h=spent, left=max(0, budget - spent))
    return max(0, budget - spent)


def selected_sources(config: Config, names: Sequence[str]) -> list[Path]:
    """The source files a run will read, for the progress estimate."""
    streams = [config.stream(n) for n in names] if names else list(config.streams)
    return [s.source.path for s in streams if isinstance(s.source, SourceConfig)]
