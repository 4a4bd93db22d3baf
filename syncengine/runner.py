"""One run as a person sees it: the live progress line, then the summary and the exit code."""

from __future__ import annotations

import contextlib
import signal
from contextlib import AsyncExitStack

import anyio
from rich.console import Console

from syncengine.config import Config, Secrets
from syncengine.ledger import render_summary
from syncengine.metrics import Telemetry, serve_metrics
from syncengine.pipeline import RunControl, RunEnd, RunOptions, RunResult, run_sync, selected_sources
from syncengine.progress import RunProgress, count_lines, show_progress

__all__ = ["EXIT_INTERRUPTED", "EXIT_NOT_ALL_SUCCESS", "EXIT_OK", "EXIT_USAGE", "exit_code", "run_with_progress"]

EXIT_OK, EXIT_NOT_ALL_SUCCESS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


async def run_with_progress(
    config: Config,
    secrets: Secrets | None,
    options: RunOptions,
    console: Console,
    *,
    metrics: tuple[str, int] | None = None,
) -> RunResult:
    """Run while showing progress; print the summary that adds up, and what stopped the run early.

    ``metrics``: (host, port) to serve /healthz and /metrics on while the run lasts (a watch).
    """
    total = (
        None
        if options.watch
        else await anyio.to_thread.run_sync(count_lines, selected_sources(config, options.streams))
    )
    progress = RunProgress(total=total or None)
    control = RunControl()
    telemetry = Telemetry()
    async with AsyncExitStack() as stack:
        if metrics is not None:
            url = await stack.enter_async_context(serve_metrics(telemetry, host=metrics[0], port=metrics[1]))
            console.print(f"Metrics at {url}/metrics, health at {url}/healthz", highlight=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(show_progress, progress, console)
            tg.start_soon(_stop_on_signals, control, console)
            result = await run_sync(
                config, secrets, options=options, progress=progress, control=control, telemetry=telemetry
            )
            tg.cancel_scope.cancel()
    if control.stop_requested.is_set():
        _ignore_signals()
    _report(config, options, result, console)
    return result


def _ignore_signals() -> None:
    """The run has stopped on request and its ledger is closed: a signal sent again while the summary prints
    has nothing left to stop, and must not kill the process before it exits with 130 (it exits next)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: nothing to guard
            signal.signal(sig, signal.SIG_IGN)


def _report(config: Config, options: RunOptions, result: RunResult, console: Console) -> None:
    """The summary that adds up, and what stopped the run early."""
    render_summary(result.summary, console)
    for message in result.halted:
        console.print(f"[red]stream halted[/] {message}")
    if result.stopped:
        console.print(f"[yellow]Stopped:[/] {result.stopped}")
    if result.summary.pending and not options.watch:
        # After a fatal stop a resume helps only once the cause is fixed (credentials, a certificate).
        first = "Once that is fixed, resume" if result.fatal else "Resume"
        console.print(
            f"[yellow]{result.summary.pending:,} changes pending.[/] {first} with "
            f"`syncengine resume {result.summary.run_id} -c {config.file}` "
            f"(or `syncengine run {config.file} --resume`)."
        )
    if result.summary.dry_run:
        budget = "" if result.credits_left is None else f" · daily budget left: {result.credits_left:,}"
        console.print(
            f"[bold]Plan:[/] {result.planned_calls:,} calls, {result.planned_credits:,} credits{budget}",
            highlight=False,
        )
        if result.credits_left is not None and result.planned_credits > result.credits_left:
            console.print("[yellow]Over budget:[/] the run would stop at the budget with the rest pending.")
    for used in result.external:
        console.print(used.line(), highlight=False)
    where = (
        "dry run: nothing recorded"
        if result.summary.dry_run
        else f"ledger {config.ledger.path} (run {result.summary.run_id})"
    )
    console.print(
        f"calls {result.calls:,} · credits {result.credits:,} · 429s {result.throttled:,} · "
        f"token refreshes {result.refreshes} · "
        f"max in flight {result.max_in_flight} · {where}",
        highlight=False,
    )


async def _stop_on_signals(control: RunControl, console: Console) -> None:
    """First SIGINT/SIGTERM: stop reading and let calls in flight finish. Second: stop now."""
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if control.stop_requested.is_set():
                    console.print("[red]Stopping now.[/] The run stays resumable.")
                    control.abort()
                else:
                    console.print("[yellow]Stopping:[/] calls in flight finish; signal again to stop at once.")
                    control.stop()
    except (NotImplementedError, ValueError):  # not the main thread, or no signals here: nothing to watch
        await anyio.sleep_forever()


def exit_code(result: RunResult) -> int:
    """0 when every change is SUCCESS or SKIPPED, 2 when credentials were refused, 130 when stopped on
    request, else 1 (a paused run too, even one that stopped before it read a row: a token lockout)."""
    if result.end is RunEnd.FATAL:
        return EXIT_USAGE
    if result.end is RunEnd.INTERRUPTED:
        return EXIT_OK if result.watched else EXIT_INTERRUPTED  # SIGTERM is how a watch is meant to stop
    if result.end is RunEnd.PAUSED:
        return EXIT_NOT_ALL_SUCCESS
    s = result.summary
    return EXIT_OK if s.rejected + s.failed + s.invalid + s.pending == 0 else EXIT_NOT_ALL_SUCCESS
