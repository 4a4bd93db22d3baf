"""Request-level envelopes: URL, module, method, body, auth, scope and permission errors."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import CONTACT, Api


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "details"),
    [
        pytest.param(
            "PUT",
            "/crm/v7/Nope",
            {"data": [{}]},
            400,
            "INVALID_MODULE",
            {"resource_path_index": 0},
            id="module",
        ),
        pytest.param("PUT", "/crm/v7/Contacts/1/Deals/2/x", None, 404, "INVALID_URL_PATTERN", {}, id="too-deep"),
        pytest.param("GET", "/crm/zz/Contacts", None, 404, "INVALID_URL_PATTERN", {}, id="bad-version"),
        pytest.param("PATCH", "/crm/v7/Contacts", None, 400, "INVALID_REQUEST_METHOD", {}, id="patch"),
        pytest.param(
            "POST", f"/crm/v7/Contacts/{CONTACT}/Deals", None, 400, "INVALID_REQUEST_METHOD", {}, id="post-rl"
        ),
        pytest.param("GET", "/crm/v7/Contacts/upsert", None, 400, "INVALID_REQUEST_METHOD", {}, id="get-upsert"),
        pytest.param(
            "PUT",
            "/crm/v7/Contacts",
            {"x": 1},
            400,
            "MANDATORY_NOT_FOUND",
            {"api_name": "data"},
            id="no-data",
        ),
        pytest.param(
            "PUT",
            "/crm/v7/Contacts",
            {"data": []},
            400,
            "MANDATORY_NOT_FOUND",
            {"api_name": "data"},
            id="empty",
        ),
        pytest.param(
            "PUT",
            "/crm/v7/Contacts",
            {"data": [{"id": CONTACT}] * 101},
            400,
            "LIMIT_EXCEEDED",
            {"api_name": "data", "maximum_length": 100},
            id="101-records",
        ),
    ],
)
async def test_request_level_errors(
    api: Api, method: str, path: str, body: Any, status: int, code: str, details: dict[str, Any]
) -> None:
    """Each request-level error answers its status and a {code, details, message, status} envelope."""
    res = await api.call(method, path, json=body)
    assert res.status == status
    assert set(res.body) == {"code", "details", "message", "status"}
    assert (res.body["code"], res.body["details"], res.body["status"]) == (code, details, "error")


async def test_malformed_json(api: Api) -> None:
    """A body that is not JSON is a request-level 400 INVALID_DATA naming the body."""
    res = await api.call("PUT", "/crm/v7/Contacts", data=b'{"data": [')
    assert res.status == 400
    assert res.body["code"] == "INVALID_DATA" and res.body["details"]["api_name"] == "body"


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        pytest.param("", "AUTHENTICATION_FAILURE", id="missing-header"),
        pytest.param("Bearer test-token", "AUTHENTICATION_FAILURE", id="wrong-prefix"),
        pytest.param("Zoho-oauthtoken 1000.unknown", "INVALID_TOKEN", id="unknown-token"),
    ],
)
async def test_auth_errors(api: Api, sb: Sandbox, auth: str, code: str) -> None:
    """Missing or malformed auth is AUTHENTICATION_FAILURE; an unknown token is INVALID_TOKEN; both 401."""
    res = await api.call("GET", f"/crm/v7/Contacts/{CONTACT}", auth=auth)
    assert res.status == 401
    assert res.body["code"] == code
    if code == "INVALID_TOKEN":
        assert res.body == {
            "code": "INVALID_TOKEN",
            "details": {},
            "message": "invalid oauth token",
            "status": "error",
        }
        assert sb.stats.tokens_expired_401 == 1


async def test_scope_mismatch_and_no_permission(api: Api, sb: Sandbox) -> None:
    """A token without the module's scope gets 401 OAUTH_SCOPE_MISMATCH; a no-permission module 403."""
    sb.set_faults(scoped_tokens=(("read-only", "ZohoCRM.modules.Contacts.READ"),), no_permission_modules=("Deals",))
    res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT}]}, token="read-only")
    assert (res.status, res.body["code"]) == (401, "OAUTH_SCOPE_MISMATCH")
    res = await api.call("GET", f"/crm/v7/Contacts/{CONTACT}", token="read-only")
    assert res.status == 200
    res = await api.call("PUT", "/crm/v7/Deals", json={"data": [{"id": "1"}]})
    assert (res.status, res.body["code"]) == (403, "NO_PERMISSION")
    assert res.body["details"]["permissions"]


async def test_no_permission_from_schema_flag() -> None:
    """A schema module flagged no_permission answers 403 without any runtime change."""
    schema = SandboxOptions().schema.with_no_permission(["Leads"])
    async with (
        Sandbox(SandboxOptions(schema=schema, static_tokens=("t",))) as sb,
        aiohttp.ClientSession() as s,
    ):
        res = await Api(sb=sb, session=s, token="t").call("PUT", "/crm/v7/Leads", json={"data": [{"id": "1"}]})
    assert res.status == 403
