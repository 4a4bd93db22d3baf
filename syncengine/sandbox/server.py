"""The sandbox server: an aiohttp app serving Zoho's accounts endpoint, the CRM API and an admin API.

One CRM call goes through, in order: routing (bad URL, module, method, header: answered at once,
free), auth (401), body parsing (request-level 400s, free), scope (401) and permission (403), the
limits (concurrency, sub-concurrency, credits: 429 at once, free), a random 429 (free), then it is
admitted: counted in flight, charged, its record keys marked busy, delayed by the latency, and
maybe answered 500 or dropped before or after it is applied.

Random faults come from one ``random.Random(seed)``: per admitted call, four draws (throttle,
error, drop, drop phase) plus one for the latency when latency is on, plus one per record when
``lock_rate`` is on. The same options and the same request order give the same faults.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import urllib.parse
from collections import Counter
from collections.abc import Hashable, Sequence
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from syncengine.model import JSON
from syncengine.sandbox import metadata, records, related
from syncengine.sandbox.auth import TokenBook, scope_allows
from syncengine.sandbox.envelopes import Reply, request_error
from syncengine.sandbox.options import SandboxOptions
from syncengine.sandbox.routing import WRITE_KINDS, Route, query_int, route
from syncengine.sandbox.schema import ModuleSpec
from syncengine.sandbox.state import SandboxState, now_iso
from syncengine.sandbox.stats import SandboxStats

__all__ = ["MAX_RECORDS", "Sandbox"]

MAX_RECORDS = 100  # records per write call, ids per delink
_COMPLEX = 10  # a write carrying more records than this is a "complex" call (sub-concurrency)
_SCOPE_OPS = {
    "update": ("UPDATE",),
    "update_one": ("UPDATE",),
    "upsert": ("CREATE", "UPDATE"),
    "insert": ("CREATE",),
    "update_related": ("UPDATE",),
    "update_related_one": ("UPDATE",),
    "delete_related": ("DELETE",),
    "delete_related_one": ("DELETE",),
}
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


def _json(reply: Reply, headers: dict[str, str] | None = None) -> web.Response:
    if reply.body is None:
        return web.Response(status=reply.status, headers=headers)
    return web.Response(body=orjson.dumps(reply.body), status=reply.status, content_type=_JSON, headers=headers)


def _parse_body(raw: bytes) -> tuple[Any, Reply | None]:
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return None, request_error(
            400,
            "INVALID_DATA",
            "the body given is not valid JSON",
            {"api_name": "body", "expected_data_type": "jsonobject"},
        )


def _data_of(body: Any, kind: str) -> tuple[list[Any], Reply | None]:
    """The ``data`` array of a write body, or the request-level error."""
    if not isinstance(body, dict) or "data" not in body or body["data"] is None:
        return [], request_error(400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": "data"})
    data = body["data"]
    if not isinstance(data, list):
        return [], request_error(
            400, "INVALID_DATA", "invalid data", {"api_name": "data", "expected_data_type": "jsonarray"}
        )
    if not data:
        return [], request_error(400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": "data"})
    if len(data) > MAX_RECORDS and kind in ("update", "upsert", "insert", "update_related"):
        return [], request_error(
            400,
            "LIMIT_EXCEEDED",
            "the count of records in your request exceeds the limit",
            {"api_name": "data", "maximum_length": MAX_RECORDS},
        )
    return data, None


def _ids_of(query: Any) -> tuple[list[str], Reply | None]:
    raw = query.get("ids")
    ids = [i.strip() for i in raw.split(",") if i.strip()] if raw else []
    if not ids:
        return [], request_error(400, "MANDATORY_NOT_FOUND", "required param not found", {"param_name": "ids"})
    if len(ids) > MAX_RECORDS:
        return [], request_error(
            400,
            "LIMIT_EXCEEDED",
            "Limit Exceeded, You cannot give more than 100 record ids",
            {"limit": str(MAX_RECORDS), "param_name": "ids"},
        )
    return ids, None


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _touched(r: Route, data: Sequence[Any], ids: Sequence[str]) -> set[Hashable]:
    """The record keys a write touches, as addressed: (module, key) or (module, parent, list, key)."""
    spec = r.module
    if spec is None:
        return set()
    module = spec.api_name
    if r.kind in ("update_one",):
        return {(module, r.key)}
    if r.kind == "update":
        name = r.ext_field or "id"
        return {(module, _key_text(d.get(name, d.get("id")))) for d in data if isinstance(d, dict)}
    if r.kind == "upsert":
        names = [n for n in (r.ext_field, *spec.duplicate_check_fields) if n]
        keys: set[Hashable] = set()
        for d in data:
            if isinstance(d, dict):
                hit = next((n for n in names if d.get(n) not in (None, "")), None)
                keys.add((module, hit, _key_text(d.get(hit))) if hit else (module, "insert", id(d)))
        return keys
    rl = r.related_list.api_name if r.related_list is not None else ""
    if r.related_key is not None:
        return {(module, r.key, rl, r.related_key)}
    if r.kind == "update_related":
        name = r.related_field or "id"
        return {(module, r.key, rl, _key_text(d.get(name))) for d in data if isinstance(d, dict)}
    if r.kind == "delete_related":
        return {(module, r.key, rl, i) for i in ids}
    return set()


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
        return self._options

    def expire_tokens(self) -> None:
        """Invalidate every access token the token endpoint issued (static tokens stay valid)."""
        self._tokens.expire_all()

    def reset(self) -> None:
        """Back to the start: the seed data again, counters at zero, the random stream restarted."""
        self.state.clear()
        self._load_seed()
        self.stats.clear()
        self._rng = random.Random(self._options.seed)
        self._token_rng = random.Random(self._options.seed + 1)

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
            elif body.get("error") == "Access Denied":
                stats.refresh_denied += 1
            else:
                stats.token_errors += 1
            # Zoho's accounts server answers errors with HTTP 200 too.
            return web.Response(body=orjson.dumps(body), content_type=_JSON)
        finally:
            stats.token_in_flight -= 1

    # ------------------------------------------------------------------------------- CRM

    async def _crm(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        opts = self._options
        stats = self.stats
        routed = route(opts.schema, request.method, request.match_info["tail"], request.headers.get("X-EXTERNAL"))
        stats.calls[routed.kind if isinstance(routed, Route) else "invalid"] += 1

        auth = request.headers.get("Authorization")
        if auth is None or not auth.startswith("Zoho-oauthtoken "):
            stats.auth_failures_401 += 1
            return _json(request_error(401, "AUTHENTICATION_FAILURE", "Authentication failed"))
        grant = self._tokens.check(auth[len("Zoho-oauthtoken ") :].strip())
        if grant is None:
            stats.tokens_expired_401 += 1
            return _json(request_error(401, "INVALID_TOKEN", "invalid oauth token"))
        if isinstance(routed, Reply):
            return _json(routed)
        r = routed

        data: list[Any] = []
        ids: list[str] = []
        body: Any = None
        if r.kind in WRITE_KINDS:
            body, error = _parse_body(await request.read())
            if error is None:
                data, error = _data_of(body, r.kind)
            if error is not None:
                return _json(error)
        elif r.kind == "delete_related":
            ids, error = _ids_of(request.query)
            if error is not None:
                return _json(error)

        module = r.module.api_name if r.module is not None else None
        if not scope_allows(
            grant.scopes,
            module=module,
            ops=_SCOPE_OPS.get(r.kind, ("READ",)),
            settings=(None if r.settings is None else r.settings),
        ):
            stats.auth_failures_401 += 1
            return _json(
                request_error(
                    401,
                    "OAUTH_SCOPE_MISMATCH",
                    "The access token you have used to make this API call does not have the required scope.",
                )
            )
        if r.module is not None and (r.module.no_permission or r.module.api_name in opts.no_permission_modules):
            return _json(
                request_error(
                    403, "NO_PERMISSION", "permission denied", {"permissions": [f"Crm_Implied_Edit_{module}"]}
                )
            )

        # Limits: refused at once, without latency, at no cost.
        n_records = len(data) if r.kind in WRITE_KINDS else len(ids)
        is_complex = r.kind in WRITE_KINDS and n_records > _COMPLEX
        if opts.concurrency and stats.in_flight >= opts.concurrency:
            return self._throttled("concurrency", _MSG_CONCURRENCY)
        if is_complex and opts.sub_concurrency and stats.in_flight_complex >= opts.sub_concurrency:
            return self._throttled("sub_concurrency", _MSG_SUB)
        if opts.credits is not None and stats.credits_used >= opts.credits:
            return self._throttled("credits", _MSG_CREDITS)
        rng = self._rng
        u_throttle, u_error, u_drop, u_phase = rng.random(), rng.random(), rng.random(), rng.random()
        low, high = opts.latency_ms
        delay = rng.uniform(low, high) / 1000 if high > 0 else 0.0
        if u_throttle < opts.throttle_rate:
            return self._throttled("random", _MSG_RANDOM)

        # Admitted.
        stats.credits_used += max(1, math.ceil(n_records / 10)) if r.kind in WRITE_KINDS else 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if is_complex:
            stats.in_flight_complex += 1
            stats.max_in_flight_complex = max(stats.max_in_flight_complex, stats.in_flight_complex)
        keys = _touched(r, data, ids) if r.kind in _KEYED else set()
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
            deadline = arrived + delay
            if u_error < opts.error_rate:
                await _sleep_until(deadline)
                stats.errors_500 += 1
                return _json(request_error(500, "INTERNAL_ERROR", "Internal Server Error"))
            dropped = u_drop < opts.drop_rate
            if dropped and u_phase < 0.5:
                await _sleep_until(deadline)
                stats.drops_before += 1
                return self._drop(request)
            reply = self._dispatch(r, request, body, data, ids)
            response = _json(reply, self._credit_headers())
            await _sleep_until(deadline)
            if dropped:
                stats.drops_after += 1
                return self._drop(request)
            return response
        finally:
            stats.in_flight -= 1
            if is_complex:
                stats.in_flight_complex -= 1
            for key in keys:
                busy[key] -= 1
                if not busy[key]:
                    del busy[key]

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

    def _locker(self) -> records.Locker:
        rate = self._options.lock_rate
        if rate <= 0:
            return lambda: False
        rng = self._rng
        stats = self.stats

        def locked() -> bool:
            if rng.random() < rate:
                stats.locks_injected += 1
                return True
            return False

        return locked

    def _dispatch(self, r: Route, request: web.Request, body: Any, data: list[Any], ids: list[str]) -> Reply:
        state = self.state
        kind = r.kind
        if kind == "metadata":
            return self._metadata(r, request)
        spec = r.module
        assert spec is not None  # every kind but metadata names a module
        now = now_iso()
        if kind == "update":
            return records.update_records(state, spec, data, r.ext_field, self._locker(), now)
        if kind == "update_one":
            assert r.key is not None
            return records.update_one(state, spec, r.key, r.ext_field, data, self._locker(), now)
        if kind == "upsert":
            dup = body.get("duplicate_check_fields")
            if dup is not None and not isinstance(dup, list):
                return request_error(
                    400,
                    "INVALID_DATA",
                    "invalid data",
                    {"api_name": "duplicate_check_fields", "expected_data_type": "jsonarray"},
                )
            return records.upsert_records(state, spec, data, dup, r.ext_field, self._locker(), now)
        if kind == "insert":
            return records.insert_records(state, spec, data, now)
        if kind == "get_record":
            assert r.key is not None
            return records.get_record(state, spec, r.key, r.ext_field)
        if kind == "list_records":
            page = query_int(request.query, "page", 1, 10**6)
            per_page = query_int(request.query, "per_page", 200, 200)
            return records.list_records(state, spec, page, per_page)
        return self._related(r, spec, data, ids)

    def _related(self, r: Route, spec: ModuleSpec, data: list[Any], ids: list[str]) -> Reply:
        assert r.key is not None and r.related_list is not None
        parent = related.resolve_parent(self.state, spec, r.key, r.ext_field)
        if isinstance(parent, Reply):
            return parent
        call = related.Related(spec=spec, parent_id=parent, rl=r.related_list, related_field=r.related_field)
        kind = r.kind
        if kind == "update_related":
            return related.update_related(self.state, call, data, None)
        if kind == "update_related_one":
            return related.update_related(self.state, call, data, r.related_key)
        if kind == "delete_related":
            return related.delink(self.state, call, ids)
        if kind == "delete_related_one":
            assert r.related_key is not None
            return related.delink(self.state, call, [r.related_key])
        return related.get_related(self.state, call)

    def _metadata(self, r: Route, request: web.Request) -> Reply:
        schema = self._options.schema
        if r.settings == "modules":
            return Reply(status=200, body=metadata.modules_json(schema))
        name = request.query.get("module")
        if not name:
            return request_error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                {"param_name": "module"},
            )
        spec = schema.module(name)
        if spec is None:
            return request_error(
                400, "INVALID_MODULE", "the module name given seems to be invalid", {"param_name": "module"}
            )
        if r.settings == "fields":
            return Reply(status=200, body=metadata.fields_json(schema, spec))
        return Reply(status=200, body=metadata.related_lists_json(schema, spec))


async def _sleep_until(deadline: float) -> None:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining > 0:
        await asyncio.sleep(remaining)
