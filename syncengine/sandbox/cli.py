"""``syncengine sandbox``: run the sandbox server until Ctrl-C or SIGTERM.

The lead registers ``sandbox_command`` in the main ``syncengine`` group; ``python -m
syncengine.sandbox`` runs it on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from syncengine.sandbox.options import SandboxOptions
from syncengine.sandbox.server import Sandbox

__all__ = ["parse_latency", "sandbox_command"]


def parse_latency(text: str) -> tuple[float, float]:
    """``"MIN[,MAX]"`` in milliseconds -> (min, max); one number means a fixed latency."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected MIN[,MAX] in milliseconds, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2 or not 0 <= values[0] <= values[1]:
        raise click.BadParameter(f"expected MIN[,MAX] with 0 <= MIN <= MAX, got {text!r}")
    return values[0], values[1]


def _latency(_: click.Context, __: click.Parameter, value: str | None) -> tuple[float, float]:
    return (0.0, 0.0) if value is None else parse_latency(value)


def _scoped(_: click.Context, __: click.Parameter, value: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in value:
        token, sep, scopes = item.partition("=")
        if not sep or not token or not scopes:
            raise click.BadParameter(f"expected TOKEN=SCOPE[,SCOPE...], got {item!r}")
        pairs.append((token, scopes))
    return tuple(pairs)


async def _serve(options: SandboxOptions, want_dump: bool) -> bytes | None:
    """Serve until a signal; returns the final state (seed format) when ``want_dump``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(sig, stop.set)
    async with Sandbox(options) as sb:
        click.echo(f"Zoho CRM sandbox listening on {sb.url}")
        click.echo(f"  accounts URL : {sb.url}/oauth/v2/token")
        click.echo(f"  API base     : {sb.url}/crm/v7")
        click.echo(
            f"  admin        : {sb.url}/__sandbox/stats (also: reset, dump, seed, faults, expire-tokens"
            + (", history" if options.record_history else "")
            + ")"
        )
        click.echo(f"  client_id    : {options.client_id}")
        click.echo(f"  client_secret: {options.client_secret}")
        click.echo(f"  refresh_token: {options.refresh_token}")
        for token in options.static_tokens:
            click.echo(f"  static token : {token}  (Authorization: Zoho-oauthtoken {token})")
        counts = {m: n for m, n in sb.state.counts().items() if n}
        click.echo(f"  records      : {counts or 'none (seed with --data or POST /__sandbox/seed)'}")
        click.echo("Press Ctrl-C to stop.")
        await stop.wait()
        final = sb.state.dump_bytes() if want_dump else None
    click.echo("sandbox stopped")
    return final


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on; 0 picks a free one.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random fault (reproducible).")
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seed file to load at start and on reset: JSON {records, relations} or JSONL.",
)
@click.option(
    "--dump",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the whole state to this file (seed format) on exit.",
)
@click.option(
    "--concurrency",
    default=0,
    show_default=True,
    type=int,
    help="CRM calls in flight before 429; 0 = unlimited.",
)
@click.option(
    "--sub-concurrency",
    default=10,
    show_default=True,
    type=int,
    help="Writes with more than 10 records in flight before 429; 0 = off.",
)
@click.option(
    "--credits",
    type=int,
    help="Credit budget (writes: 1 per 10 records, others: 1); then every call gets 429.",
)
@click.option("--token-ttl", default=3600.0, show_default=True, type=float, help="Access token lifetime, seconds.")
@click.option(
    "--latency-ms",
    callback=_latency,
    metavar="MIN[,MAX]",
    help="Latency added to each CRM call, uniform between MIN and MAX milliseconds.",
)
@click.option("--error-rate", default=0.0, show_default=True, type=float, help="Fraction of calls answered 500.")
@click.option(
    "--drop-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of calls whose connection is closed with no response (half after applying the write).",
)
@click.option(
    "--throttle-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of calls answered 429 at random.",
)
@click.option(
    "--lock-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of records answered RECORD_LOCKED.",
)
@click.option(
    "--refresh-limit",
    default=10,
    show_default=True,
    type=int,
    help="Access tokens per refresh token per 10 minutes before 'Access Denied'; 0 = unlimited.",
)
@click.option("--client-id", default="sandbox-client-id", show_default=True, help="OAuth client id to accept.")
@click.option(
    "--client-secret",
    default="sandbox-client-secret",
    show_default=True,
    help="OAuth client secret to accept.",
)
@click.option(
    "--refresh-token",
    default="sandbox-refresh-token",
    show_default=True,
    help="OAuth refresh token to accept.",
)
@click.option(
    "--static-token",
    "static_tokens",
    multiple=True,
    help="Access token accepted without OAuth that never expires (repeatable).",
)
@click.option(
    "--scoped-token",
    "scoped_tokens",
    multiple=True,
    callback=_scoped,
    metavar="TOKEN=SCOPES",
    help="Static token limited to comma-separated scopes, for OAUTH_SCOPE_MISMATCH (repeatable).",
)
@click.option(
    "--no-permission",
    "no_permission_modules",
    multiple=True,
    metavar="MODULE",
    help="Module whose every call answers 403 NO_PERMISSION (repeatable).",
)
@click.option(
    "--history",
    is_flag=True,
    help="Keep every applied write, in order, for GET /__sandbox/history (memory grows with the writes).",
)
def sandbox_command(
    *,
    host: str,
    port: int,
    seed: int,
    data_file: Path | None,
    dump: Path | None,
    concurrency: int,
    sub_concurrency: int,
    credits: int | None,
    token_ttl: float,
    latency_ms: tuple[float, float],
    error_rate: float,
    drop_rate: float,
    throttle_rate: float,
    lock_rate: float,
    refresh_limit: int,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    static_tokens: tuple[str, ...],
    scoped_tokens: tuple[tuple[str, str], ...],
    no_permission_modules: tuple[str, ...],
    history: bool,
) -> None:
    """Run a Zoho CRM v7-compatible sandbox server with real state, limits and reproducible faults."""
    try:
        options = SandboxOptions(
            host=host,
            port=port,
            seed=seed,
            data_file=data_file,
            concurrency=concurrency,
            sub_concurrency=sub_concurrency,
            credits=credits,
            token_ttl=token_ttl,
            latency_ms=latency_ms,
            error_rate=error_rate,
            drop_rate=drop_rate,
            throttle_rate=throttle_rate,
            lock_rate=lock_rate,
            refresh_limit=refresh_limit,
            client_id=client_id,
            client_secret=client_secret,
            refresh_token=refresh_token,
            static_tokens=static_tokens,
            scoped_tokens=scoped_tokens,
            no_permission_modules=no_permission_modules,
            record_history=history,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    final = asyncio.run(_serve(options, dump is not None))
    if dump is not None and final is not None:
        dump.write_bytes(final)
        click.echo(f"state written to {dump}")
