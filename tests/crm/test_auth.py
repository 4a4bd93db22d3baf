"""Tokens against the sandbox's real accounts endpoint: single-flight refresh, errors in HTTP 200 bodies."""

from __future__ import annotations

import anyio
import pytest

from syncengine.config import Secrets
from syncengine.crm.auth import TokenProvider
from syncengine.crm.transport import Transport
from syncengine.errors import AuthError, SecretsError
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
        with pytest.raises(AuthError) as info:
            await tokens.rejected(token)
    assert info.value.code == "Access Denied"


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
