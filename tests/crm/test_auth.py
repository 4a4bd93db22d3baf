"""Tokens against the sandbox's real accounts endpoint: single-flight refresh, errors in HTTP 200 bodies, lockouts
waited out or paused on, one refresh for every process through the token cache, the token's api_domain."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import structlog

from syncengine.config import Secrets
from syncengine.crm.auth import LockoutPolicy, TokenProvider
from syncengine.crm.tokencache import TokenCache
from syncengine.crm.transport import HttpResponse, Transport
from syncengine.errors import AuthError, SecretsError, TokenLockout, TokenRefused
from syncengine.limits import Backoff
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import SECRETS


async def test_many_workers_rejected_token_refresh_once(sandbox: Sandbox) -> None:
    """Twenty workers told INVALID_TOKEN at once cause one refresh, and all get the new token."""
    async with Transport(timeout=5, max_connections=4) as transport:
        tokens = TokenProvider(transport, f"{sandbox.url}/oauth/v2/token", SECRETS)
        first = await tokens.token()
        got: list[str] = []

        async def worker() -> None:
            got.append(await tokens.rejected(first))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
    assert tokens.refreshes == 2 and len(set(got)) == 1 and got[0] != first
    assert sandbox.stats.snapshot()["refreshes"] == 2


async def test_token_is_refreshed_before_expiry(sandbox: Sandbox) -> None:
    """A token inside the refresh margin is replaced before it is used, without waiting for a 401."""
    now = [0.0]
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = TokenProvider(
            transport, f"{sandbox.url}/oauth/v2/token", SECRETS, refresh_margin=300, clock=lambda: now[0]
        )
        first = await tokens.token()
        now[0] = 3600 - 301  # still outside the margin
        assert await tokens.token() == first
        now[0] = 3600 - 299  # inside it
        assert await tokens.token() != first
    assert tokens.refreshes == 2


@pytest.mark.parametrize(
    ("secrets", "code"),
    [
        (
            Secrets(
                client_id="wrong",
                client_secret="sandbox-client-secret",
                refresh_token="sandbox-refresh-token",
                access_token=None,
            ),
            "invalid_client",
        ),
        (
            Secrets(
                client_id="sandbox-client-id",
                client_secret="sandbox-client-secret",
                refresh_token="nope",
                access_token=None,
            ),
            "invalid_code",
        ),
    ],
    ids=["bad-client", "bad-refresh-token"],
)
async def test_accounts_errors_in_http_200_are_errors(sandbox: Sandbox, secrets: Secrets, code: str) -> None:
    """Zoho's accounts server says "error" with HTTP 200; that is still a refusal, and no secret leaks."""
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = TokenProvider(transport, f"{sandbox.url}/oauth/v2/token", secrets)
        with pytest.raises(AuthError) as info:
            await tokens.token()
    assert info.value.code == code
    assert "sandbox-client-secret" not in str(info.value) and "sandbox-refresh-token" not in str(info.value)


async def test_refresh_limit_access_denied() -> None:
    """Past 10 refreshes in 10 minutes the accounts server answers Access Denied, and we say so."""
    async with Sandbox(SandboxOptions(refresh_limit=2)) as sb, Transport(timeout=5, max_connections=2) as transport:
        tokens = TokenProvider(transport, f"{sb.url}/oauth/v2/token", SECRETS)
        token = await tokens.token()
        token = await tokens.rejected(token)
        with pytest.raises(TokenLockout) as info:  # an AuthError, but not the credentials'
            await tokens.rejected(token)
    assert info.value.code == "Access Denied" and isinstance(info.value, AuthError)


async def test_ready_access_token_without_refresh_credentials() -> None:
    """A ready access token is used as is; when it is rejected and cannot be refreshed, the error says why."""
    ready = Secrets(client_id=None, client_secret=None, refresh_token=None, access_token="ready-token")
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = TokenProvider(transport, "http://127.0.0.1:9/oauth/v2/token", ready)
        assert await tokens.token() == "ready-token"
        with pytest.raises(SecretsError):
            await tokens.rejected("ready-token")


async def test_accounts_server_trouble_is_retried() -> None:
    """A 502 HTML page and a dropped connection from the accounts server are ridden out, not fatal."""
    from aiohttp import web

    answers = ["html", "drop", "ok"]

    async def token(request: web.Request) -> web.StreamResponse:
        answer = answers.pop(0)
        if answer == "html":
            return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")
        if answer == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return web.json_response({"access_token": "1000.fresh", "expires_in": 3600, "api_domain": "x"})

    app = web.Application()
    app.router.add_post("/oauth/v2/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with Transport(timeout=5, max_connections=2) as transport:
            tokens = TokenProvider(transport, f"http://127.0.0.1:{port}/oauth/v2/token", SECRETS)
            assert await tokens.token() == "1000.fresh"
    finally:
        await runner.cleanup()
    assert answers == []


async def test_short_lived_tokens_are_not_refreshed_on_every_call() -> None:
    """A token that lives less than the refresh margin is still used for most of its life."""
    now = [0.0]
    async with Sandbox(SandboxOptions(token_ttl=60)) as sb, Transport(timeout=5, max_connections=2) as transport:
        tokens = TokenProvider(transport, f"{sb.url}/oauth/v2/token", SECRETS, clock=lambda: now[0])
        first = await tokens.token()
        now[0] = 40.0
        assert await tokens.token() == first
        now[0] = 50.0
        assert await tokens.token() != first
    assert tokens.refreshes == 2


# -- "Access Denied": a lockout, not the credentials ---------------------------------------------------------

# The lockouts of these tests: the sandbox's lifts after 0.3 s without a request; the engine waits 0.5 s and a
# little jitter, within 20 s in all.
ONE_TOKEN = SandboxOptions(strict=True, refresh_limit=1)  # the second token request of 10 minutes: Access Denied
QUICK = LockoutPolicy(quiet=0.5, backoff=Backoff(initial=0.02, maximum=0.05, attempts=1000, total=20.0))


def provider(transport: Transport, sb: Sandbox, **options: Any) -> TokenProvider:
    return TokenProvider(transport, f"{sb.url}/oauth/v2/token", SECRETS, **{"lockout": QUICK, **options})


@pytest.mark.parametrize("localized", [False, True], ids=["english", "localized"])
async def test_access_denied_400_is_a_lockout_with_a_time_to_retry(localized: bool) -> None:
    """Strict: "Access Denied" (HTTP 400, status failure, English or "拒绝访问") is a TokenLockout with a retry time."""
    options = SandboxOptions(strict=True, refresh_limit=1, access_denied_localized=localized)
    async with Sandbox(options) as sb, Transport(timeout=5, max_connections=2) as transport:
        tokens = provider(transport, sb)
        token = await tokens.token()
        if localized:  # the sandbox localizes every other denial: spend the English one first
            with pytest.raises(TokenLockout):
                await TokenProvider(transport, f"{sb.url}/oauth/v2/token", SECRETS).token()
        before = time.time()
        with pytest.raises(TokenLockout) as info:
            await tokens.rejected(token)
    lockout = info.value
    assert lockout.code == ("拒绝访问" if localized else "Access Denied")
    assert before + QUICK.quiet <= lockout.retry_at <= time.time() + QUICK.quiet
    assert "locked us out" in str(lockout) and "retry after" in str(lockout)
    assert sb.stats.refresh_denied == 1 + localized and sb.stats.token_errors == 0


async def test_a_locked_out_provider_does_not_knock_again_before_the_time() -> None:
    """After a lockout the endpoint is left alone until retry_at: a request during it would restart it."""
    async with Sandbox(ONE_TOKEN) as sb, Transport(timeout=5, max_connections=2) as t:
        tokens = provider(t, sb)
        token = await tokens.token()
        with pytest.raises(TokenLockout):
            await tokens.rejected(token)
        asked = sb.stats.token_requests
        for _ in range(3):
            with pytest.raises(TokenLockout):
                await tokens.rejected(token)
        assert sb.stats.token_requests == asked


async def test_a_watch_waits_the_lockout_out_and_goes_on() -> None:
    """wait=True: the provider leaves the endpoint alone for the quiet spell, then gets its token: one denial only."""
    options = SandboxOptions(strict=True, refresh_limit=1, refresh_window=0.3, refresh_lockout=0.3)
    async with Sandbox(options) as sb, Transport(timeout=5, max_connections=2) as transport:
        tokens = provider(transport, sb, lockout=replace(QUICK, wait=True))
        first = await tokens.token()
        started = time.monotonic()
        fresh = await tokens.rejected(first)
    assert fresh != first and time.monotonic() - started >= QUICK.quiet
    assert sb.stats.refresh_denied == 1 and sb.stats.refreshes == 2


async def test_a_watch_stops_waiting_when_the_run_stops() -> None:
    """A wait for a lockout ends at once when the run stops; the lockout is raised (the rest stays pending)."""
    async with Sandbox(ONE_TOKEN) as sb, Transport(timeout=5, max_connections=2) as t:
        tokens = provider(t, sb, lockout=LockoutPolicy(quiet=60.0, wait=True))
        stop = anyio.Event()
        tokens.stopping = (stop,)
        first = await tokens.token()

        async def stop_soon() -> None:
            await anyio.sleep(0.2)
            stop.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_soon)
                with pytest.raises(TokenLockout):
                    await tokens.rejected(first)


async def test_a_watch_gives_up_past_the_total_wait() -> None:
    """A lockout that would take the waiting past the policy's total is raised, not waited for."""
    async with Sandbox(ONE_TOKEN) as sb, Transport(timeout=5, max_connections=2) as t:
        policy = LockoutPolicy(quiet=30.0, wait=True, backoff=Backoff(initial=0.01, maximum=0.01, total=10.0))
        tokens = provider(t, sb, lockout=policy)
        first = await tokens.token()
        with anyio.fail_after(5), pytest.raises(TokenLockout):
            await tokens.rejected(first)


async def test_credentials_errors_stay_fatal_and_say_what_to_check(sandbox: Sandbox) -> None:
    """invalid_client is an AuthError, not a lockout, and its message names the variables to check (no values)."""
    wrong = Secrets(client_id="sandbox-client-id", client_secret="nope-secret", refresh_token="sandbox-refresh-token")
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = TokenProvider(transport, f"{sandbox.url}/oauth/v2/token", wrong)
        with pytest.raises(AuthError) as info:
            await tokens.token()
    assert not isinstance(info.value, TokenLockout) and info.value.code == "invalid_client"
    assert "ZOHO_CLIENT_SECRET" in str(info.value) and "nope-secret" not in str(info.value)


# -- the token cache: one refresh for every process of the host ----------------------------------------------


async def test_providers_sharing_a_cache_refresh_once(tmp_path: Path, sandbox: Sandbox) -> None:
    """Ten providers (ten processes' worth) starting at once over one cache file: one refresh, one token for all."""
    async with Transport(timeout=5, max_connections=20) as transport:
        providers = [provider(transport, sandbox, cache=TokenCache(tmp_path / "t.json", poll=0.01)) for _ in range(10)]
        got: list[str] = []

        async def start(tokens: TokenProvider) -> None:
            got.append(await tokens.token())

        async with anyio.create_task_group() as tg:
            for tokens in providers:
                tg.start_soon(start, tokens)
        later = provider(transport, sandbox, cache=TokenCache(tmp_path / "t.json"))
        got.append(await later.token())
    assert len(set(got)) == 1 and sandbox.stats.refreshes == 1
    assert sum(t.refreshes for t in providers) == 1 and later.refreshes == 0


async def test_a_401_with_the_cached_token_invalidates_it(tmp_path: Path, sandbox: Sandbox) -> None:
    """The CRM refused the cached token: one provider refreshes; another, refused the same token, takes the new one."""
    async with Transport(timeout=5, max_connections=4) as transport:
        a = provider(transport, sandbox, cache=TokenCache(tmp_path / "t.json"))
        b = provider(transport, sandbox, cache=TokenCache(tmp_path / "t.json"))
        old = await a.token()
        assert await b.token() == old
        sandbox.expire_tokens()
        new = await a.rejected(old)
        assert new != old and await b.rejected(old) == new
    assert sandbox.stats.refreshes == 2 and b.refreshes == 0


async def test_a_cached_token_inside_the_margin_is_not_used(tmp_path: Path, sandbox: Sandbox) -> None:
    """A cached token with no more than the refresh margin left is refreshed, not handed out."""
    now = [time.time()]
    async with Transport(timeout=5, max_connections=4) as transport:
        a = provider(transport, sandbox, cache=TokenCache(tmp_path / "t.json"))
        old = await a.token()
        b = provider(transport, sandbox, cache=TokenCache(tmp_path / "t.json"), wall=lambda: now[0])
        now[0] += 3600 - 299  # 299 s left: inside the 300 s margin
        assert await b.token() != old
    assert sandbox.stats.refreshes == 2


async def test_a_lockout_is_shared_through_the_cache(tmp_path: Path) -> None:
    """One process's "Access Denied" keeps the others from knocking: they pause at once, with the same time."""
    async with Sandbox(ONE_TOKEN) as sb, Transport(timeout=5, max_connections=4) as t:
        a = provider(t, sb, cache=TokenCache(tmp_path / "t.json"))
        first = await a.token()
        sb.expire_tokens()
        with pytest.raises(TokenLockout) as denied:
            await a.rejected(first)
        asked = sb.stats.token_requests
        b = provider(t, sb, cache=TokenCache(tmp_path / "t.json"))
        with pytest.raises(TokenLockout) as shared:
            await b.token()
    assert sb.stats.token_requests == asked and shared.value.retry_at == denied.value.retry_at


# -- data centres -----------------------------------------------------------------------------------------------


async def test_with_a_data_centre_the_calls_follow_the_tokens_api_domain(sandbox: Sandbox) -> None:
    """crm.data_centre: the api_domain the token response names is where calls go, and the log says so once."""
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = provider(transport, sandbox, api_domain="https://www.zohoapis.com", data_centre="us")
        await tokens.token()
        with structlog.testing.capture_logs() as logs:
            assert tokens.call_domain() == sandbox.url
            assert tokens.call_domain() == sandbox.url
    assert [e["event"] for e in logs] == ["syncengine.api_domain_from_token"]
    assert logs[0]["api_domain"] == sandbox.url and logs[0]["data_centre"] == "us"


async def test_an_explicit_api_domain_wins_over_the_token(sandbox: Sandbox) -> None:
    """An explicit api_domain/accounts_url pair is kept (a Zoho sandbox org's host), with one warning."""
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = provider(transport, sandbox, api_domain="https://sandbox.zohoapis.com")
        await tokens.token()
        with structlog.testing.capture_logs() as logs:
            assert tokens.call_domain() == "https://sandbox.zohoapis.com"
            assert tokens.call_domain() == "https://sandbox.zohoapis.com"
    assert [e["event"] for e in logs] == ["syncengine.api_domain_differs"]


@pytest.mark.parametrize(
    "named",
    ["http://crm.example.com", "ftp://www.zohoapis.com", "https://www.zohoapis.com/crm", "not a url", 42],
    ids=["plain-http", "ftp", "with-path", "junk", "number"],
)
async def test_an_api_domain_calls_may_not_go_to_is_ignored(named: object) -> None:
    """An api_domain that is not https (or http to loopback) with a bare host is never followed."""
    body = {"access_token": "1000.x", "expires_in": 3600, "api_domain": named}
    tokens = TokenProvider(Canned(body), "https://accounts.zoho.com/oauth/v2/token", SECRETS, data_centre="us",
                           api_domain="https://www.zohoapis.com")  # fmt: skip
    await tokens.token()
    assert tokens.call_domain() == "https://www.zohoapis.com"


async def test_fresh_tokens_refused_name_a_data_centre_mismatch(sandbox: Sandbox) -> None:
    """The CRM refusing fresh tokens: the error names the token's api_domain against the host the calls went to."""
    async with Transport(timeout=5, max_connections=2) as transport:
        tokens = provider(transport, sandbox, api_domain="https://www.zohoapis.eu")
        await tokens.token()
        tokens.call_domain()
        error = tokens.refused("INVALID_TOKEN", "invalid oauth token", 3)
    assert isinstance(error, TokenRefused) and error.code == "INVALID_TOKEN"
    assert "data-centre mismatch" in str(error) and sandbox.url in str(error) and "www.zohoapis.eu" in str(error)
    assert "refused 3 fresh access tokens" in str(error)


class Canned:
    """An accounts server that always answers ``body``."""

    def __init__(self, body: dict[str, object]) -> None:
        self.body = body

    async def request(self, method: str, url: str, *, headers: dict[str, str], form: dict[str, str]) -> HttpResponse:
        return HttpResponse(status=200, body=orjson.dumps(self.body))
