"""The sandbox server: an aiohttp app serving Zoho's accounts endpoint, the CRM API and an admin API.

One CRM call goes through, in order: routing (bad URL, module, method, header: answered at once,
free), auth (401), body parsing (request-level 400s, free), scope (401) and permission (403), the
limits (concurrency, sub-concurrency, credits: 429 at once, free), a random 429 (free), then it is
admitted: counted in flight, charged, its record keys marked busy, delayed by the latency, and
maybe answered 500 or dropped before or after it is applied. The profile (``options.py``) shapes
some answers: ``dispatch.shape`` shuffles related entries and answers mixed results 200;
``html_errors`` turns the injected 500s into HTML pages (``frontend.py``); ``bind_tokens_to_host``
refuses a token on a host its token response did not name.

Random faults come from one ``random.Random(seed)``: per admitted call, four draws (throttle,
error, drop, drop phase) plus one for the latency when latency is on, plus one per record when
``lock_rate`` is on. The same options and the same request order give the same faults. Shuffling
(``shuffle_related``) draws from a stream of its own (``seed + 2``), so it never shifts them.
"""

from __future__ import annotations

import asyncio
import random
import socket
import urllib.parse
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from syncengine.model import JSON
from syncengine.sandbox.auth import Grant, TokenBook, http_status, is_denied
from syncengine.sandbox.bodies import MAX_RECORDS, touched
from syncengine.sandbox.dispatch import Call, Context, dispatch, prepare, refuse, shape
from syncengine.sandbox.envelopes import Reply, request_error
from syncengine.sandbox.frontend import html_error, html_status
from syncengine.sandbox.options import SandboxOptions
from syncengine.sandbox.routing import WRITE_KINDS, Route, route
from syncengine.sandbox.state import SandboxState
from syncengine.sandbox.stats import SandboxStats

__all__ = ["MAX_RECORDS", "Sandbox"]

# Calls whose record keys are tracked for ``key_overlaps``.
_KEYED = WRITE_KINDS | {"delete_related", "delete_related_one"}
_JSON = "application/json"
_MSG_CONCURRENCY = "The concurrency limit of the user for the app is exceeded."
_MSG_SUB = "The sub-concurrency limit of the user for complex APIs (10 calls with more than 10 records) is exceeded."
_MSG_CREDITS = "Number of API requests for the 24 hour period is exceeded: the daily limit of API credits is used up."
_MSG_RANDOM = (
    "Number of API requests for the 24 hour period is exceeded or the concurrency limit of the user "
    "for the app is exceeded"
)


@dataclass(frozen=True, slots=True)
class _Draws:
    """The four fault draws of an admitted call, in draw order."""

    throttle: float
    error: float
    drop: float
    phase: float


def _json(reply: Reply, headers: dict[str, str] | None = None) -> web.Response:
    if reply.body is None:
        return web.Response(status=reply.status, headers=headers)
    return web.Response(body=orjson.dumps(reply.body), status=reply.status, content_type=_JSON, headers=headers)


class Sandbox:
    """A Zoho CRM v7-compatible server with real state, limits and reproducible faults.

    ``async with Sandbox(options) as sb:`` serves on ``sb.url`` in the current event loop. Use
    ``sb.state`` to look at and seed the data, ``sb.stats`` for the counters, ``sb.set_faults`` to
    change limits and faults while it runs, ``sb.expire_tokens`` to invalidate every issued token.
    """

    def __init__(self, options: SandboxOptions | None = None) -> None:
        self._options = options or SandboxOptions()
        self.state = SandboxState(self._options.schema, record_history=self._options.record_history)
        self.stats = SandboxStats(records_source=self.state.counts)
        self._tokens = TokenBook(self._options)
        self._rng = random.Random(self._options.seed)
        self._token_rng = random.Random(self._options.seed + 1)  # token delays never shift CRM faults
        self._shuffle_rng = random.Random(self._options.seed + 2)
        self._busy: Counter[Hashable] = Counter()
        self._open = asyncio.Event()  # cleared by pause(): admitted calls wait here
        self._open.set()
        self._admitted = asyncio.Event()  # set whenever a call is admitted, for wait_in_flight()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._load_seed()

    # ------------------------------------------------------------------------------- lifecycle

    @property
    def options(self) -> SandboxOptions:
        """The options in force now (``set_faults`` changes them)."""
        return self._options

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8080``; both /oauth/v2/token and /crm/v7 live under it."""
        if self._url is None:
            raise RuntimeError("the sandbox is not running")
        return self._url

    def make_app(self) -> web.Application:
        """The aiohttp application (routes only; ``start`` serves it)."""
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/crm/{tail:.*}", self._crm)
        app.router.add_post("/oauth/v2/token", self._token)
        from syncengine.sandbox.admin import add_admin_routes

        add_admin_routes(app, self)
        return app

    async def start(self) -> str:
        """Start serving in the running event loop; returns the base URL."""
        sock = socket.socket(socket.AF_INET6 if ":" in self._options.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._options.host, self._options.port))
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        self._runner = runner
        port = sock.getsockname()[1]
        host = f"[{self._options.host}]" if ":" in self._options.host else self._options.host
        self._url = f"http://{host}:{port}"
        return self._url

    async def stop(self) -> None:
        """Stop serving and close every connection."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------- control

    def set_faults(self, **changes: Any) -> SandboxOptions:
        """Change limits, faults or credentials now (any option but host, port, schema, data_file).

        Changing ``seed`` restarts the random stream, so a scenario can be replayed mid-run.
        """
        self._options = self._options.replace(changes)
        self._tokens.configure(self._options)
        if "seed" in changes:
            self._rng = random.Random(self._options.seed)
            self._token_rng = random.Random(self._options.seed + 1)
            self._shuffle_rng = random.Random(self._options.seed + 2)
        return self._options

    def expire_tokens(self) -> None:
        """Invalidate every access token the token endpoint issued (static tokens stay valid)."""
        self._tokens.expire_all()

    def reset(self) -> None:
        """Back to the start: the seed data again, counters at zero, the random streams restarted, no lockout."""
        self.state.clear()
        self._load_seed()
        self.stats.clear()
        self._rng = random.Random(self._options.seed)
        self._token_rng = random.Random(self._options.seed + 1)
        self._shuffle_rng = random.Random(self._options.seed + 2)
        self._tokens.lift_lockout()

    def pause(self) -> None:
        """Hold every CRM call once it is admitted (counted in flight), until ``resume``.

        With ``wait_in_flight`` this lets a test put an exact number of calls in flight, so a limit
        can be hit without relying on timing.
        """
        self._open.clear()

    def resume(self) -> None:
        """Release the calls ``pause`` holds."""
        self._open.set()

    async def wait_in_flight(self, count: int, *, complex_calls: bool = False) -> None:
        """Wait until at least ``count`` CRM calls (or complex calls) are in flight."""
        while (self.stats.in_flight_complex if complex_calls else self.stats.in_flight) < count:
            self._admitted.clear()
            await self._admitted.wait()

    def stats_json(self) -> dict[str, JSON]:
        """The counters (``stats.snapshot``) plus the credits left."""
        out = self.stats.snapshot()
        credits = self._options.credits
        out["credits_remaining"] = None if credits is None else max(0, credits - self.stats.credits_used)
        return out

    def _load_seed(self) -> None:
        if self._options.data_file is not None:
            self.state.load_file(self._options.data_file)

    # ------------------------------------------------------------------------------- OAuth

    async def _token(self, request: web.Request) -> web.Response:
        stats = self.stats
        stats.token_requests += 1
        stats.token_in_flight += 1
        stats.max_concurrent_refreshes = max(stats.max_concurrent_refreshes, stats.token_in_flight)
        try:
            params = dict(request.query)
            raw = await request.read()
            if raw:
                params.update(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))
            low, high = self._options.latency_ms
            if high > 0:
                # A small delay, so overlapping refreshes are observable in max_concurrent_refreshes.
                await asyncio.sleep(self._token_rng.uniform(low, high) / 1000)
            body, issued = self._tokens.grant(params, self.url)
            if issued:
                stats.refreshes += 1
            elif is_denied(body):
                stats.refresh_denied += 1
            else:
                stats.token_errors += 1
            # Zoho's accounts server answers errors with HTTP 200 ("Access Denied": see auth.py).
            return web.Response(body=orjson.dumps(body), status=http_status(body), content_type=_JSON)
        finally:
            stats.token_in_flight -= 1

    # ------------------------------------------------------------------------------- CRM

    def _route(self, request: web.Request) -> Route | Reply:
        opts = self._options
        raw_tail: str | None = None
        if opts.raw_path_routing or opts.reject_encoded_keys:
            raw_tail = request.rel_url.raw_path.removeprefix("/crm/")
        return route(
            opts.schema,
            request.method,
            request.match_info["tail"],
            request.headers.get("X-EXTERNAL"),
            raw_tail=raw_tail,
            reject_encoded=bool(opts.reject_encoded_keys),
        )

    def _authenticate(self, request: web.Request) -> Grant | Reply:
        stats = self.stats
        auth = request.headers.get("Authorization")
        if auth is None or not auth.startswith("Zoho-oauthtoken "):
            stats.auth_failures_401 += 1
            return request_error(401, "AUTHENTICATION_FAILURE", "Authentication failed")
        grant = self._tokens.check(auth[len("Zoho-oauthtoken ") :].strip())
        if grant is None:
            stats.tokens_expired_401 += 1
            return request_error(401, "INVALID_TOKEN", "invalid oauth token")
        if self._options.bind_tokens_to_host and grant.host is not None and grant.host.lower() != request.host.lower():
            # A token is valid on its data centre's API host only (audit row 28).
            stats.dc_mismatch_401 += 1
            return request_error(401, "INVALID_TOKEN", "invalid oauth token")
        return grant

    async def _crm(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        opts = self._options
        stats = self.stats
        routed = self._route(request)
        stats.calls[routed.kind if isinstance(routed, Route) else "invalid"] += 1
        grant = self._authenticate(request)
        if isinstance(grant, Reply):
            return _json(grant)
        if isinstance(routed, Reply):
            return _json(routed)
        wants_body = routed.kind in WRITE_KINDS or routed.kind == "coql"
        call = prepare(opts, routed, await request.read() if wants_body else None, request.query)
        if isinstance(call, Reply):
            return _json(call)
        refused = refuse(opts, call, grant)
        if refused is not None:
            if refused.status == 401:
                stats.auth_failures_401 += 1
            return _json(refused)

        # Limits: refused at once, without latency, at no cost.
        if opts.concurrency and stats.in_flight >= opts.concurrency:
            return self._throttled("concurrency", _MSG_CONCURRENCY)
        if call.is_complex and opts.sub_concurrency and stats.in_flight_complex >= opts.sub_concurrency:
            return self._throttled("sub_concurrency", _MSG_SUB)
        if opts.credits is not None and stats.credits_used >= opts.credits:
            return self._throttled("credits", _MSG_CREDITS)
        rng = self._rng
        draws = _Draws(rng.random(), rng.random(), rng.random(), rng.random())
        low, high = opts.latency_ms
        delay = rng.uniform(low, high) / 1000 if high > 0 else 0.0
        if draws.throttle < opts.throttle_rate:
            return self._throttled("random", _MSG_RANDOM)
        return await self._admitted_call(request, call, draws, arrived + delay)

    async def _admitted_call(self, request: web.Request, call: Call, draws: _Draws, deadline: float) -> web.Response:
        """Count, charge and mark the call's keys; wait out the latency; maybe fail or drop it."""
        opts = self._options
        stats = self.stats
        stats.credits_used += call.credits
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if call.is_complex:
            stats.in_flight_complex += 1
            stats.max_in_flight_complex = max(stats.max_in_flight_complex, stats.in_flight_complex)
        keys = touched(call.route, call.data, call.ids) if call.route.kind in _KEYED else set()
        busy = self._busy
        for key in keys:
            if busy[key]:
                stats.key_overlaps += 1
            busy[key] += 1
        self._admitted.set()
        try:
            if not self._open.is_set():
                await self._open.wait()
            # The latency is the whole time the call spends in the CRM, as a client measures Zoho's:
            # our own parsing and processing are part of it, not added to it.
            if draws.error < opts.error_rate:
                await _sleep_until(deadline)
                if opts.html_errors:
                    stats.html_errors += 1
                    return html_error(html_status(draws.error, opts.error_rate))
                stats.errors_500 += 1
                return _json(request_error(500, "INTERNAL_ERROR", "Internal Server Error"))
            dropped = draws.drop < opts.drop_rate
            if dropped and draws.phase < 0.5:
                await _sleep_until(deadline)
                stats.drops_before += 1
                return self._drop(request)
            reply = self._dispatch(call, request)
            response = _json(reply, self._credit_headers())
            await _sleep_until(deadline)
            if dropped:
                stats.drops_after += 1
                return self._drop(request)
            return response
        finally:
            stats.in_flight -= 1
            if call.is_complex:
                stats.in_flight_complex -= 1
            for key in keys:
                busy[key] -= 1
                if not busy[key]:
                    del busy[key]

    def _dispatch(self, call: Call, request: web.Request) -> Reply:
        """Apply an admitted call and answer it, shaped by the profile."""
        opts = self._options
        ctx = Context(state=self.state, options=opts, stats=self.stats, rng=self._rng, shuffle_rng=self._shuffle_rng)
        return shape(ctx, call, dispatch(ctx, call, request.query))

    def _throttled(self, reason: str, message: str) -> web.Response:
        self.stats.throttled_429[reason] += 1
        # No Retry-After and no rate-limit headers: Zoho sends none.
        return _json(request_error(429, "TOO_MANY_REQUESTS", message), self._credit_headers())

    def _credit_headers(self) -> dict[str, str] | None:
        budget = self._options.credits
        if budget is None or self.stats.credits_used * 2 < budget:
            return None
        return {"X-API-CREDITS-REMAINING": str(max(0, budget - self.stats.credits_used))}

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        # Closing the transport before anything is written: the client sees the connection end
        # with no response (aiohttp: ServerDisconnectedError); the response below goes nowhere.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)


async def _sleep_until(deadline: float) -> None:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining > 0:
        await asyncio.sleep(remaining)
