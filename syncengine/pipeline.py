"""Wires the stages together; the one place tasks are started.

    readers ──Change──► batcher ──Payload──► workers ──Outcome──► ledger writer

One task group owns every stage. Readers hand changes to the batcher (which bounds what it holds),
workers pull payloads from it, and every outcome goes through one bounded stream to the single
ledger writer, whose final flush is shielded from cancellation.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher
from syncengine.config import Config, Secrets, StreamConfig
from syncengine.crm.auth import TokenProvider
from syncengine.crm.requests import max_items
from syncengine.crm.transport import Transport
from syncengine.errors import AuthError, SecretsError, StreamHalted
from syncengine.ledger import LedgerWriter, RunSummary, SqliteLedger
from syncengine.limits import CreditMeter, Limits
from syncengine.mapping import to_change
from syncengine.model import Outcome
from syncengine.progress import RunProgress
from syncengine.readers import open_reader
from syncengine.workers import CallStats, RetryPolicy, Sender, Worker, failed_outcome

__all__ = ["RunOptions", "RunResult", "run_sync"]

log = structlog.get_logger("syncengine.pipeline")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run, beyond the config file."""

    streams: tuple[str, ...] = ()  # empty: every stream of the config
    dry_run_path: Path | None = None  # set: dry run, the would-be requests are written here as JSONL
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_buffered: int = 10_000  # changes the batcher may hold: the memory bound of the pipeline
    outcome_buffer: int = 2_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """The run as the ledger recorded it, plus what the engine saw on the wire."""

    summary: RunSummary
    halted: tuple[str, ...]  # messages of streams stopped by a request-level config error
    stopped: str | None  # why the run stopped early (credits, budget, auth), if it did
    fatal: bool  # stopped by something only the user can fix (credentials): exit code 2
    calls: int
    throttled: int
    refreshes: int
    max_in_flight: int


async def run_sync(
    config: Config,
    secrets: Secrets | None,
    *,
    options: RunOptions,
    progress: RunProgress | None = None,
) -> RunResult:
    """One run of the selected streams. Returns once every change read has its outcome in the ledger."""
    streams = [config.stream(name) for name in options.streams] if options.streams else list(config.streams)
    progress = progress or RunProgress()
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
        dry_out: IO[bytes] | None = (
            stack.enter_context(options.dry_run_path.open("wb")) if options.dry_run_path is not None else None
        )
        transport = await stack.enter_async_context(
            Transport(timeout=crm.timeout, max_connections=crm.concurrency + 2, ca_file=crm.ca_file)
        )
        tokens = None if dry_run or secrets is None else TokenProvider(transport, crm.token_url, secrets)
        limits = Limits(
            concurrency=crm.concurrency,
            sub_concurrency=crm.sub_concurrency,
            requests_per_second=crm.requests_per_second,
        )
        sender = Sender(
            request=transport.request,
            tokens=tokens,
            limits=limits,
            credits=CreditMeter(crm.credit_budget),
            policy=options.policy,
            stats=stats,
        )
        batcher = Batcher(max_buffered=options.max_buffered)
        run_id = await ledger.start_run(
            config_file=str(config.file), streams=[s.name for s in streams], dry_run=dry_run
        )
        log.info("syncengine.run_started", run_id=run_id, streams=[s.name for s in streams], dry_run=dry_run)
        send, receive = anyio.create_memory_object_stream[Outcome](options.outcome_buffer)
        writer = LedgerWriter(ledger, run_id, on_flush=progress.on_flush)

        def on_stop(reason: Exception) -> None:
            nonlocal stopped, fatal
            if stopped is None:
                stopped, fatal = str(reason), isinstance(reason, AuthError | SecretsError)
                log.error("syncengine.run_stopping", reason=stopped, cause=type(reason).__name__)
            batcher.stop()

        async def on_halt(error: StreamHalted) -> None:
            if error.stream in {h.split(":", 1)[0] for h in halted}:
                return
            halted.append(f"{error.stream}: {error.code}: {error.message}")
            log.error("syncengine.stream_halted", stream=error.stream, code=error.code, message=error.message)
            for change in batcher.halt(error.stream):
                await send.send(
                    failed_outcome(
                        change, code=error.code, message=error.message, note=f"stream {error.stream!r} halted"
                    )
                )

        state = "interrupted"  # unless the run gets to say otherwise
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run, receive)
                async with send, anyio.create_task_group() as stages:
                    for stream in streams:
                        batcher.open_input()
                        stages.start_soon(_read, stream, batcher, send.clone(), progress)
                    for _ in range(crm.concurrency):
                        worker = Worker(
                            sender=sender,
                            batcher=batcher,
                            outcomes=send,
                            api_base=crm.api_base,
                            trigger=crm.trigger,
                            policy=options.policy,
                            on_halt=on_halt,
                            on_stop=on_stop,
                            dry_run_out=dry_out,
                        )
                        stages.start_soon(worker.run)
            if batcher.stopped:
                state = "failed" if fatal else "paused"
            else:
                state = "halted" if halted else "completed"
        finally:
            # Ctrl-C or a crash still closes the run in the ledger with what was committed.
            with anyio.CancelScope(shield=True):
                summary = await ledger.finish_run(run_id, state=state, read=dict(progress.read))
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
        calls=stats.calls,
        throttled=stats.throttled,
        refreshes=tokens.refreshes if tokens is not None else 0,
        max_in_flight=limits.general.max_in_flight,
    )


async def _read(
    stream: StreamConfig, batcher: Batcher, send: MemoryObjectSendStream[Outcome], progress: RunProgress
) -> None:
    """Stream one source into the batcher; bad rows go straight to the ledger as INVALID outcomes."""
    per_call = max_items(stream.target, stream.batch_size)
    try:
        async with send:
            async for row in open_reader(stream.source):
                progress.on_read(stream.name)
                result = to_change(stream, row)
                if isinstance(result, Outcome):
                    await send.send(result)
                elif not await batcher.put(result, max_items=per_call, linger=stream.linger):
                    if batcher.stopped:
                        return  # the run is stopping: this change stays pending, for a resumed run
                    await send.send(
                        failed_outcome(
                            result, code="STREAM_HALTED", message="not sent: the stream was halted by an earlier error"
                        )
                    )
                    return
    finally:
        batcher.close_input()


def selected_sources(config: Config, names: Sequence[str]) -> list[Path]:
    """The source files a run will read, for the progress estimate."""
    streams = [config.stream(n) for n in names] if names else list(config.streams)
    return [s.source.path for s in streams]
