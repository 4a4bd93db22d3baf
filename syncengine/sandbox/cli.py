"""``syncengine sandbox``: run the sandbox server until Ctrl-C or SIGTERM.

The lead registers ``sandbox_command`` in the main ``syncengine`` group; ``python -m
syncengine.sandbox`` runs it on its own. ``--strict`` is the real-Zoho profile; each of its
readings is also a ``--X/--no-X`` flag of its own that wins over the profile (``options.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from syncengine.sandbox.options import STRICT, SandboxOptions
from syncengine.sandbox.server import Sandbox

__all__ = ["PROFILE_FLAGS", "parse_latency", "sandbox_command"]

_F = TypeVar("_F", bound=Callable[..., Any])
# The strict profile's readings: option -> help. Each is a --X/--no-X flag; unset, it follows --strict.
PROFILE_FLAGS: dict[str, str] = {
    "refuse_bulk_external": "PUT /{Module} ignores X-EXTERNAL for addressing: a record without id answers "
    'MANDATORY_NOT_FOUND {"api_name": "id"} (PUT /{Module}/{ext} still works).',
    "access_denied_400": 'The token endpoint\'s "Access Denied" is HTTP 400 with "status": "failure" (else 200).',
    "access_denied_localized": 'Every other "Access Denied" is localized: "error": "拒绝访问".',
    "shuffle_related": "data[] of update-related and delink answers in a shuffled order (entries carry details.id).",
    "delink_missing_404": "A ?ids= delink naming a related record that does not exist answers 404 INVALID_DATA "
    '"The record does not exist" for the whole call, with no data[] and nothing removed.',
    "reject_unknown_fields": 'An unknown field API name is INVALID_DATA "the field api name given seems to be '
    'invalid" for its record (else ignored).',
    "html_errors": "The calls --error-rate picks get an HTML page, 400, 502 or 503, instead of a JSON 500.",
    "raw_path_routing": "Split the path before decoding it: a key a%2Fb stays one key (else it routes as a/b).",
    "reject_encoded_keys": "A key with an encoded / ? # % or \\ in the path answers 404 INVALID_URL_PATTERN.",
    "mixed_status_200": "A data[] answer with some successes and some errors is HTTP 200, not 207.",
    "limit_exceeded_in_data": "More than 100 records: LIMIT_EXCEEDED wrapped in data[] with one entry, as the OAS "
    "shows (else a top-level envelope).",
    "bind_tokens_to_host": "An access token works only on the host of the api_domain its token response named; "
    "elsewhere 401 INVALID_TOKEN (a token of another data centre).",
}
assert set(PROFILE_FLAGS) | {"refresh_lockout"} == set(STRICT)


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


def _profile_options(command: _F) -> _F:
    """Add one --X/--no-X flag per reading of the strict profile (default: follow --strict)."""
    for name, text in reversed(PROFILE_FLAGS.items()):
        flag = name.replace("_", "-")
        command = click.option(f"--{flag}/--no-{flag}", name, default=None, help=text + " On with --strict.")(command)
    return command


async def _serve(options: SandboxOptions, want_dump: bool) -> bytes | None:
    """Serve until a signal; returns the final state (seed format) when ``want_dump``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(sig, stop.set)
    async with Sandbox(options) as sb:
        click.echo(
            f"Zoho CRM sandbox listening on {sb.url}" + ("  (strict: the real-Zoho profile)" if options.strict else "")
        )
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
@click.option(
    "--strict",
    is_flag=True,
    help="The real-Zoho profile: every stricter reading of Zoho's docs (each flag below marked 'On with "
    "--strict', and --refresh-lockout-minutes 15). Amounts of faults (rates, locked records) stay as given.",
)
@_profile_options
@click.option(
    "--refresh-lockout-minutes",
    type=float,
    help="After the refresh limit is hit, refuse every token request until this many minutes pass with no "
    "request (default 0; 15 with --strict).",
)
@click.option(
    "--api-domain",
    help="The api_domain token responses name (default: the sandbox's own URL); with --bind-tokens-to-host a "
    "token works only on that host.",
)
@click.option(
    "--token-scope",
    default="ZohoCRM.modules.ALL,ZohoCRM.settings.ALL,ZohoCRM.coql.READ",
    show_default=True,
    help="Scopes of the tokens the token endpoint issues (POST /coql needs ZohoCRM.coql.READ).",
)
@click.option(
    "--persistent-lock-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of records locked for good (RECORD_LOCKED, action record_locking), chosen per record id.",
)
@click.option(
    "--locked-record",
    "locked_records",
    multiple=True,
    metavar="ID",
    help="Record id locked for good: RECORD_LOCKED with action record_locking, never clearing (repeatable).",
)
@click.option(
    "--authorization-failed",
    "authorization_failed_modules",
    multiple=True,
    metavar="MODULE",
    help="Module whose every write answers a request-level 400 AUTHORIZATION_FAILED (repeatable).",
)
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
    help="Fraction of records answered RECORD_LOCKED, action zia_vision_processing (transient).",
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
def sandbox_command(*, dump: Path | None, history: bool, refresh_lockout_minutes: float | None, **params: Any) -> None:
    """Run a Zoho CRM v7-compatible sandbox server with real state, limits and reproducible faults.

    The default profile answers the way syncengine was built to expect; --strict is the real-Zoho
    profile (every stricter reading of Zoho's docs the wire-fidelity audit lists). POST /crm/v7/coql
    (select ... where Field in (...), up to 50 values, LIMIT up to 2000 rows) is served in both.
    """
    if refresh_lockout_minutes is not None:
        params["refresh_lockout"] = refresh_lockout_minutes * 60
    try:
        options = SandboxOptions(record_history=history, **params)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    final = asyncio.run(_serve(options, dump is not None))
    if dump is not None and final is not None:
        dump.write_bytes(final)
        click.echo(f"state written to {dump}")
