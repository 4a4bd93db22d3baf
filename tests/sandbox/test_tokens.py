"""The accounts endpoint: grants in form body or query, errors in HTTP 200, limits, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import CONTACT, SEED, Api, refresh_params


@pytest.fixture
async def oauth(session: aiohttp.ClientSession) -> AsyncIterator[Api]:
    """A sandbox without static tokens: every CRM call needs an OAuth token."""
    async with Sandbox(SandboxOptions(refresh_limit=3, max_active_tokens=2)) as sb:
        sb.state.load(SEED)
        yield Api(sb=sb, session=session)


@pytest.mark.parametrize("as_query", [pytest.param(False, id="form-body"), pytest.param(True, id="query-string")])
async def test_grant(oauth: Api, as_query: bool) -> None:
    """A refresh-token grant answers a usable access token and the sandbox's URL as api_domain."""
    res = await oauth.token_request(refresh_params(), as_query=as_query)
    assert res.status == 200
    body = res.body
    assert body["access_token"].startswith("1000.")
    assert (body["api_domain"], body["token_type"], body["expires_in"]) == (oauth.sb.url, "Bearer", 3600)
    assert "ZohoCRM.modules.ALL" in body["scope"]
    got = await oauth.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=body["access_token"])
    assert got.status == 200


@pytest.mark.parametrize(
    ("params", "error"),
    [
        pytest.param(refresh_params(client_secret="wrong"), "invalid_client", id="bad-secret"),
        pytest.param(refresh_params(client_id="wrong"), "invalid_client", id="bad-client"),
        pytest.param(refresh_params(refresh_token="wrong"), "invalid_code", id="bad-refresh-token"),
        pytest.param(refresh_params(grant_type="authorization_code"), "unsupported_grant_type", id="bad-grant"),
    ],
)
async def test_grant_errors_are_http_200(oauth: Api, params: dict[str, str], error: str) -> None:
    """Accounts errors come back with HTTP 200 and {"error": ...}, as Zoho sends them."""
    res = await oauth.token_request(params)
    assert (res.status, res.body) == (200, {"error": error})
    assert oauth.sb.stats.token_errors == 1


async def test_refresh_limit_is_access_denied(oauth: Api) -> None:
    """Past refresh_limit grants in the window, the answer is HTTP 200 "Access Denied"."""
    for _ in range(3):
        assert "access_token" in (await oauth.token_request(refresh_params())).body
    res = await oauth.token_request(refresh_params())
    assert res.status == 200
    assert res.body["error"] == "Access Denied"
    assert res.body["error_description"].startswith("You have made too many requests continuously.")
    assert (oauth.sb.stats.refreshes, oauth.sb.stats.refresh_denied) == (3, 1)


async def test_oldest_token_evicted_past_max_active(oauth: Api) -> None:
    """With max_active_tokens=2, the third grant invalidates the first token (INVALID_TOKEN)."""
    tokens = [(await oauth.token_request(refresh_params())).body["access_token"] for _ in range(3)]
    statuses = [(await oauth.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=t)).status for t in tokens]
    assert statuses == [401, 200, 200]


async def test_token_expires_after_ttl(session: aiohttp.ClientSession) -> None:
    """A token issued with token_ttl=0.3 s works, then answers 401 INVALID_TOKEN once the TTL passes."""
    async with Sandbox(SandboxOptions(token_ttl=0.3)) as sb:
        sb.state.load(SEED)
        api = Api(sb=sb, session=session)
        token = (await api.token_request(refresh_params())).body["access_token"]
        assert (await api.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=token)).status == 200
        deadline = time.monotonic() + 5
        while True:  # poll until the server says the token expired
            res = await api.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=token)
            if res.status == 401 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert res.body["code"] == "INVALID_TOKEN"
        assert sb.stats.tokens_expired_401 >= 1


async def test_expire_tokens_now(oauth: Api) -> None:
    """expire_tokens() invalidates every issued token at once; a new grant works again."""
    token = (await oauth.token_request(refresh_params())).body["access_token"]
    oauth.sb.expire_tokens()
    assert (await oauth.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=token)).status == 401
    fresh = (await oauth.token_request(refresh_params())).body["access_token"]
    assert (await oauth.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=fresh)).status == 200


async def test_concurrent_refreshes_are_counted(session: aiohttp.ClientSession) -> None:
    """With latency on, overlapping token requests show up in max_concurrent_refreshes."""
    async with Sandbox(SandboxOptions(latency_ms=(200, 200))) as sb:
        api = Api(sb=sb, session=session)
        await asyncio.gather(*(api.token_request(refresh_params()) for _ in range(3)))
        assert sb.stats.max_concurrent_refreshes == 3
        await api.token_request(refresh_params())
        assert sb.stats.snapshot()["refreshes"] == 4
