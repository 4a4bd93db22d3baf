"""The strict profile on the token endpoint and token use, over real sockets.

"Access Denied" as HTTP 400 with ``status: failure``, localized every other time, and a lockout that
restarts with every request during it (audit row 25); tokens valid only on the host of the
``api_domain`` their response named (row 28).
"""

from __future__ import annotations

import asyncio

import aiohttp

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import SEED, Api, refresh_params

DENIED_EN = {
    "error": "Access Denied",
    "error_description": "You have made too many requests continuously. Please try again after some time.",
    "status": "failure",
}


async def test_access_denied_is_400_failure_and_localized_every_other_time(session: aiohttp.ClientSession) -> None:
    """Strict: past the refresh limit, HTTP 400 {"error": "Access Denied", "status": "failure"}, then "拒绝访问"."""
    async with Sandbox(SandboxOptions(strict=True, refresh_limit=1)) as sb:
        api = Api(sb=sb, session=session)
        first = await api.token_request(refresh_params())
        assert first.status == 200 and "access_token" in first.body
        denied = [await api.token_request(refresh_params()) for _ in range(2)]
        assert [d.status for d in denied] == [400, 400]
        assert denied[0].body == DENIED_EN
        assert denied[1].body["error"] == "拒绝访问" and denied[1].body["status"] == "failure"
        assert sb.stats.refresh_denied == 2 and sb.stats.token_errors == 0


async def test_default_access_denied_is_still_http_200(session: aiohttp.ClientSession) -> None:
    """The default profile answers "Access Denied" with HTTP 200, English, no status, no lockout."""
    async with Sandbox(SandboxOptions(refresh_limit=1)) as sb:
        api = Api(sb=sb, session=session)
        await api.token_request(refresh_params())
        denied = await api.token_request(refresh_params())
        assert denied.status == 200 and "status" not in denied.body and denied.body["error"] == "Access Denied"


async def test_lockout_outlasts_the_window_and_restarts_with_each_request(session: aiohttp.ClientSession) -> None:
    """refresh_lockout: denied until that long passes with no token request, even once the window has room."""
    opts = SandboxOptions(refresh_limit=1, refresh_window=0.1, refresh_lockout=0.5, access_denied_400=True)
    async with Sandbox(opts) as sb:
        api = Api(sb=sb, session=session)
        assert (await api.token_request(refresh_params())).status == 200
        assert (await api.token_request(refresh_params())).status == 400  # the limit: the lockout starts
        await asyncio.sleep(0.3)  # the window has room again, but the lockout holds
        assert (await api.token_request(refresh_params())).status == 400  # and restarts
        await asyncio.sleep(0.3)
        assert (await api.token_request(refresh_params())).status == 400  # 0.3 s after the last: still locked
        await asyncio.sleep(0.6)
        assert (await api.token_request(refresh_params())).status == 200
        # Without a lockout the window alone decides.
        sb.set_faults(refresh_lockout=0.0)
        assert (await api.token_request(refresh_params())).status == 400
        await asyncio.sleep(0.15)
        assert (await api.token_request(refresh_params())).status == 200


async def test_reset_lifts_the_lockout(session: aiohttp.ClientSession) -> None:
    """POST /__sandbox/reset ends a lockout (the refresh window's grants stay counted)."""
    opts = SandboxOptions(refresh_limit=1, refresh_window=0.05, refresh_lockout=60.0)
    async with Sandbox(opts) as sb:
        api = Api(sb=sb, session=session)
        await api.token_request(refresh_params())
        assert (await api.token_request(refresh_params())).body["error"] == "Access Denied"
        await api.admin("POST", "reset")
        await asyncio.sleep(0.1)
        assert "access_token" in (await api.token_request(refresh_params())).body


async def test_tokens_work_only_on_the_host_their_response_named(session: aiohttp.ClientSession) -> None:
    """bind_tokens_to_host: the token response names api_domain; the same token on another host is INVALID_TOKEN."""
    async with Sandbox(SandboxOptions(strict=True)) as sb:
        sb.state.load(SEED)
        port = sb.url.rsplit(":", 1)[1]
        sb.set_faults(api_domain=f"http://crm.eu.example:{port}")
        api = Api(sb=sb, session=session)
        grant = await api.token_request(refresh_params())
        assert grant.body["api_domain"] == f"http://crm.eu.example:{port}"
        token = grant.body["access_token"]
        wrong = await api.call("GET", "/crm/v7/Leads", token=token)
        assert wrong.status == 401 and wrong.body["code"] == "INVALID_TOKEN"
        right = await api.call("GET", "/crm/v7/Leads", token=token, headers={"Host": f"crm.eu.example:{port}"})
        assert right.status == 200
        assert sb.stats.dc_mismatch_401 == 1
        # Its own URL by default: a client that calls the api_domain it was given is fine.
        sb.set_faults(api_domain=None)
        own = (await api.token_request(refresh_params())).body
        assert own["api_domain"] == sb.url
        assert (await api.call("GET", "/crm/v7/Leads", token=own["access_token"])).status == 200


async def test_default_profile_accepts_a_token_on_any_host(session: aiohttp.ClientSession) -> None:
    """Without bind_tokens_to_host a token works whatever Host the call names (what the sandbox always did)."""
    async with Sandbox(SandboxOptions(api_domain="http://elsewhere.example")) as sb:
        api = Api(sb=sb, session=session)
        grant = await api.token_request(refresh_params())
        assert grant.body["api_domain"] == "http://elsewhere.example"
        res = await api.call("GET", "/crm/v7/Leads", token=grant.body["access_token"])
        assert res.status == 204
