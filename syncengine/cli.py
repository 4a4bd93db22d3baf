"""The command line: the only place that reads argv and the environment, and configures logging.

Exit codes: 0 every change SUCCESS (or skipped), 1 some changes not SUCCESS (or the run paused: a token
lockout, spent credits, an outage), 2 usage, config or credentials error, 130 interrupted (the run is resumable).
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import anyio
import click
from rich.console import Console

from syncengine.config import Config, Secrets, load_config, load_secrets
from syncengine.errors import LedgerError, SecretsError, SourceError, SyncError
from syncengine.ledger import SqliteLedger, render_runs, write_report
from syncengine.logs import configure_logging
from syncengine.model import Status
from syncengine.pipeline import Redrive, RunOptions
from syncengine.runner import EXIT_INTERRUPTED, EXIT_USAGE, exit_code, run_with_progress

__all__ = [
    "TOKEN_CACHE_ENV",
    "cli",
    "demo",
    "execute",
    "main",
    "report",
    "resume",
    "retry",
    "run",
    "runs",
    "watch",
]

_T = TypeVar("_T")

TOKEN_CACHE_ENV = "SYNCENGINE_TOKEN_CACHE"  # the token cache file, over crm.token_cache; "off": none


def _console() -> Console:
    # Off a terminal (a log file, CI) rich would wrap at 80 columns; tables read better wider.
    return Console() if sys.stdout.isatty() else Console(width=132)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"syncengine: {message}", err=True)
    sys.exit(code)


def _ledger_options(command: Callable[..., None]) -> Callable[..., None]:
    """-c CONFIG / --ledger FILE: which ledger a reading command reads."""
    command = click.option(
        "--ledger",
        "ledger_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Ledger file to read (default: the config's, or ./syncengine.db).",
    )(command)
    return click.option(
        "-c",
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Config whose ledger to read.",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json-logs/--no-json-logs", default=None, help="Force JSON logs (default: JSON unless on a terminal).")
@click.version_option(package_name="syncengine")
def cli(json_logs: bool | None) -> None:
    """Push changes from business systems into Zoho CRM, as fast as its limits allow, record by record."""
    configure_logging(json=json_logs)


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stream", "streams", multiple=True, help="Run only this stream (repeatable).")
@click.option("--dry-run", is_flag=True, help="Build every request but send none; write them to --requests-out.")
@click.option(
    "--requests-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where a dry run writes the would-be requests (JSONL). Default: <config>.dry-run.jsonl",
)
@click.option("--plan", is_flag=True, help="A dry run that prints the calls and credits the run would need.")
@click.option("--full", is_flag=True, help="Send every change, even one identical to the last success for its key.")
@click.option(
    "--resume",
    is_flag=True,
    help="If this config's last run did not complete, continue it: changes with an outcome are skipped.",
)
def run(
    config_file: Path,
    streams: tuple[str, ...],
    dry_run: bool,
    requests_out: Path | None,
    plan: bool,
    full: bool,
    resume: bool,
) -> None:
    """Run every stream of CONFIG_FILE once (or only --stream NAME).

    Changes identical to the last one that succeeded for their key are SKIPPED (no call, no credit)
    unless --full.
    """
    dry_run = dry_run or plan
    config = _load(config_file)
    for name in streams:
        _guard(functools.partial(config.stream, name))
    secrets = None if dry_run else _guard(lambda: load_secrets(config.crm, os.environ))
    out = (requests_out or config_file.with_suffix(".dry-run.jsonl")) if dry_run else None
    resume_run = _guard(lambda: anyio.run(_resumable, config)) if resume and not dry_run else None
    if resume and resume_run is None and not dry_run:
        click.echo("Nothing to resume: the last run of this config completed. Starting a new run.", err=True)
    options = RunOptions(streams=streams, dry_run_path=out, resume=resume_run, full=full, environ=dict(os.environ))
    code = execute(config, secrets, options)
    if out is not None:
        click.echo(f"Would-be requests: {out}")
    sys.exit(code)


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stream", "streams", multiple=True, help="Follow only this stream (repeatable).")
@click.option(
    "--interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between polls of each source once it is caught up.",
)
@click.option(
    "--metrics-port",
    default=9108,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Serve /metrics (Prometheus) and /healthz on this port (0: any free port).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Interface for the metrics server.")
@click.option("--full", is_flag=True, help="Send every change, even one the CRM already holds (no skip-unchanged).")
def watch(
    config_file: Path, streams: tuple[str, ...], interval: float, metrics_port: int, metrics_host: str, full: bool
) -> None:
    """Follow every stream of CONFIG_FILE continuously until SIGTERM or Ctrl-C.

    Database sources are read incrementally from their stored position (cursor, key), which advances only
    when every change at or below it has an outcome; file sources are read again whenever the file
    changes (unchanged rows are skipped). CRM outages are waited out, never a reason to stop.
    """
    config = _load(config_file)
    for name in streams:
        _guard(functools.partial(config.stream, name))
    secrets = _guard(lambda: load_secrets(config.crm, os.environ))
    options = RunOptions(streams=streams, watch=interval, full=full, environ=dict(os.environ))
    sys.exit(execute(config, secrets, options, metrics=(metrics_host, metrics_port)))


@cli.command()
@click.argument("run_id", type=int)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The run's config (default: the file the run was started with).",
)
def resume(run_id: int, config_file: Path | None) -> None:
    """Continue RUN_ID after a crash, a kill or a stop: changes that already have an outcome are skipped."""
    config = _run_config(run_id, config_file)
    secrets = _guard(lambda: load_secrets(config.crm, os.environ))
    sys.exit(execute(config, secrets, RunOptions(resume=run_id, environ=dict(os.environ))))


@cli.command()
@click.argument("run_id", type=int)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The run's config (default: the file the run was started with).",
)
@click.option("--codes", default=None, help="Only changes whose outcome has one of these codes (comma-separated).")
@click.option("--stream", "streams", multiple=True, help="Only this stream (repeatable).")
def retry(run_id: int, config_file: Path | None, codes: str | None, streams: tuple[str, ...]) -> None:
    """Re-drive RUN_ID's FAILED changes (transient trouble that outlasted the retries) as a new, linked run.

    The input is the source rows recorded in the ledger, mapped again with the current config, so a
    mapping fixed since can be re-driven too. REJECTED changes are the CRM's refusals: fix the data and
    feed the error export back instead (see `syncengine report --errors`).
    """
    config = _run_config(run_id, config_file)
    secrets = _guard(lambda: load_secrets(config.crm, os.environ))
    wanted = frozenset(c.strip() for c in codes.split(",") if c.strip()) if codes else None
    options = RunOptions(streams=streams, redrive=Redrive(run_id=run_id, codes=wanted), environ=dict(os.environ))
    sys.exit(execute(config, secrets, options))


async def _resumable(config: Config) -> int | None:
    async with SqliteLedger(config.ledger.path) as ledger:
        return await ledger.resumable_run(str(config.file))


def _run_config(run_id: int, config_file: Path | None) -> Config:
    """The config a run was made with (or the one given), checked to use the same ledger."""
    if config_file is not None:
        return _load(config_file)

    async def find() -> str:
        for ledger_file in (Path("syncengine.db"),):
            if ledger_file.exists():
                async with SqliteLedger(ledger_file) as ledger:
                    return (await ledger.summary(run_id)).config_file
        raise LedgerError("syncengine.db", "no ledger here: pass -c CONFIG to say which run's config to use")

    return _load(Path(_guard(lambda: anyio.run(find))))


def execute(
    config: Config, secrets: Secrets | None, options: RunOptions, *, metrics: tuple[str, int] | None = None
) -> int:
    """Run with progress and the summary on the terminal; return the exit code."""
    console = _console()
    try:
        result = anyio.run(functools.partial(run_with_progress, config, secrets, options, console, metrics=metrics))
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/] Outcomes written so far are in the ledger.")
        return EXIT_INTERRUPTED
    except (SyncError, OSError, ExceptionGroup) as exc:
        errors = _leaves(exc)
        if not all(isinstance(e, SyncError | OSError) for e in errors):
            raise
        for error in errors:
            console.print(f"[red]error:[/] {error}")
        return EXIT_USAGE
    return exit_code(result)


@cli.command()
@click.argument("run_id", required=False, type=int)
@_ledger_options
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Only these statuses (repeatable).",
)
@click.option("--errors", is_flag=True, help="Only REJECTED, FAILED and INVALID: the error export.")
@click.option("--code", "codes", multiple=True, help="Only these CRM or syncengine codes (repeatable).")
@click.option("--stream", default=None, help="Only this stream.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "jsonl"]),
    default="table",
    show_default=True,
    help="table to read; csv or jsonl to export (the source row's columns follow the outcome's).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
def report(
    run_id: int | None,
    config_file: Path | None,
    ledger_path: Path | None,
    statuses: tuple[str, ...],
    errors: bool,
    codes: tuple[str, ...],
    stream: str | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Per-record outcomes of RUN (default: the latest run) as a table, CSV or JSONL.

    CSV and JSONL carry the source row's columns after the outcome's, so an error export can be fixed
    and fed back as a source.
    """
    path = _ledger_path(config_file, ledger_path)
    wanted = {Status(s) for s in statuses} | ({Status.REJECTED, Status.FAILED, Status.INVALID} if errors else set())

    async def main() -> int:
        async with SqliteLedger(path) as ledger:
            rid = run_id if run_id is not None else await ledger.latest_run_id()
            if rid is None:
                raise LedgerError(str(path), "no runs recorded yet")
            recorded = (await ledger.summary(rid)).streams
            if stream is not None and stream not in recorded:
                raise LedgerError(str(path), f"run {rid} has no stream {stream!r}; its streams: {', '.join(recorded)}")
            if output is None:
                return await write_report(
                    ledger, rid, sys.stdout, fmt=fmt, statuses=wanted or None, codes=codes or None, stream=stream
                )
            with output.open("w", newline="", encoding="utf-8") as handle:
                return await write_report(
                    ledger, rid, handle, fmt=fmt, statuses=wanted or None, codes=codes or None, stream=stream
                )

    rows = _guard(lambda: anyio.run(main))
    if output is not None:
        click.echo(f"{rows:,} rows written to {output}", err=True)


@cli.command()
@_ledger_options
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs to list.")
def runs(config_file: Path | None, ledger_path: Path | None, limit: int) -> None:
    """The history of runs with their counts."""
    path = _ledger_path(config_file, ledger_path)

    async def main() -> None:
        async with SqliteLedger(path) as ledger:
            render_runs(await ledger.runs(limit), _console())

    _guard(lambda: anyio.run(main))


@cli.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Where the sample export, ledger and reports go.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("configs/demo.toml"),
    show_default=True,
    help="The demo's config: its sandbox port, ledger and streams.",
)
@click.option("--contacts", default=5000, show_default=True, help="Contacts in the sample export.")
@click.option(
    "--strict", is_flag=True, help="Run the sandbox in its real-Zoho profile (as `syncengine sandbox --strict`)."
)
def demo(workdir: Path, config_file: Path, contacts: int, strict: bool) -> None:
    """Start the sandbox, write a sample ERP export, sync it with configs/demo.toml, and report."""
    from syncengine.demo import run_demo

    code = run_demo(workdir=workdir, config_file=config_file, contacts=contacts, console=_console(), strict=strict)
    sys.exit(code)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (possibly nested) exception groups from task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _load(path: Path) -> Config:
    return _token_cache_from_env(_guard(lambda: load_config(path)), os.environ)


def _token_cache_from_env(config: Config, environ: Mapping[str, str]) -> Config:
    """SYNCENGINE_TOKEN_CACHE names the token cache file (over crm.token_cache), or ``off``: none."""
    value = environ.get(TOKEN_CACHE_ENV, "").strip()
    if not value:
        return config
    path = None if value.lower() in ("off", "false", "0", "none") else Path(value).expanduser().resolve()
    if path is not None and path == config.ledger.path.resolve():
        _fail(f"{TOKEN_CACHE_ENV}: a file of its own, not the ledger ({path})")
    return replace(config, crm=replace(config.crm, token_cache=path))


def _ledger_path(config_file: Path | None, ledger_path: Path | None) -> Path:
    """The ledger to read; it must exist (reading never creates one)."""
    path = ledger_path or (_load(config_file).ledger.path if config_file is not None else Path("syncengine.db"))
    if not path.is_file():
        _fail(f"ledger {path}: no such file (pass --ledger FILE or -c CONFIG)")
    return path


def _guard(action: Callable[[], _T]) -> _T:
    try:
        return action()
    except (SyncError, SecretsError, SourceError, LedgerError) as exc:
        _fail(str(exc))
        raise AssertionError("unreachable") from exc


def _register_sandbox() -> None:
    from syncengine.sandbox.cli import sandbox_command

    cli.add_command(sandbox_command, name="sandbox")


def main(argv: Sequence[str] | None = None) -> None:
    _register_sandbox()
    # A run allocates a few short-lived objects per record and almost no cycles: the default
    # generation-0 threshold (700) made the collector ~9% of a run's CPU (make bench). Freeze what
    # start-up loaded and collect less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    cli.main(args=list(argv) if argv is not None else None, prog_name="syncengine")
