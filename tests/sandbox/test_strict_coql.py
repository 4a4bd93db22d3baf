"""``POST /crm/v7/coql`` over real sockets: resolving external ids to record ids, with Zoho's limits.

Zoho's Query API docs: ``in`` takes up to 50 values, LIMIT is 200 by default and at most 2000, and
the credits go by LIMIT (1-200: 1, 201-1000: 2, 1001-2000: 3); the scope ZohoCRM.coql.READ is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import CONTACT, CONTACT2, SEED, TOKEN, Api, refresh_params

COQL = "/crm/v7/coql"


def _q(text: str) -> dict[str, Any]:
    return {"select_query": text}


@pytest.fixture(params=[False, True], ids=["default", "strict"])
async def capi(request: pytest.FixtureRequest, session: aiohttp.ClientSession) -> AsyncIterator[Api]:
    """An Api on a seeded sandbox, in each profile: COQL is served in both."""
    opts = SandboxOptions(
        strict=request.param, static_tokens=(TOKEN,), scoped_tokens=(("no-coql", "ZohoCRM.modules.ALL"),)
    )
    async with Sandbox(opts) as sb:
        sb.state.load(SEED)
        yield Api(sb=sb, session=session)


async def test_in_list_resolves_external_ids(capi: Api) -> None:
    """where Ext in (...) answers the matching records' id and the field, sorted by id; unknown values drop out."""
    q = "select id, External_Contact_ID from Contacts where External_Contact_ID in ('extcontact4','extcontact3','nope')"
    res = await capi.call("POST", COQL, json=_q(q))
    assert res.status == 200
    assert res.body == {
        "data": [
            {"id": CONTACT, "External_Contact_ID": "extcontact3"},
            {"id": CONTACT2, "External_Contact_ID": "extcontact4"},
        ],
        "info": {"count": 2, "more_records": False},
    }
    assert capi.sb.stats.calls["coql"] == 1 and capi.sb.stats.credits_used == 1


async def test_equals_quotes_and_no_match(capi: Api) -> None:
    """= with a quoted value ('' escapes a quote); nothing matching answers 204 with no body."""
    capi.sb.state.load({"records": {"Contacts": [{"id": "5", "Last_Name": "O'Brien", "External_Contact_ID": "o'b"}]}})
    res = await capi.call("POST", COQL, json=_q("SELECT id FROM Contacts WHERE External_Contact_ID = 'o''b'"))
    assert res.status == 200 and res.body["data"] == [{"id": "5"}]
    res = await capi.call("POST", COQL, json=_q("select id from Contacts where External_Contact_ID in ('zzz')"))
    assert res.status == 204 and res.body is None


async def test_in_list_limit_is_50_values(capi: Api) -> None:
    """51 values in one in (...) is refused: 400 LIMIT_EXCEEDED, no rows."""
    values = ",".join(f"'v{n}'" for n in range(51))
    res = await capi.call("POST", COQL, json=_q(f"select id from Contacts where External_Contact_ID in ({values})"))
    assert res.status == 400 and res.body["code"] == "LIMIT_EXCEEDED" and res.body["details"]["limit"] == 50
    fifty = ",".join(f"'v{n}'" for n in range(50))
    res = await capi.call("POST", COQL, json=_q(f"select id from Contacts where External_Contact_ID in ({fifty})"))
    assert res.status == 204


@pytest.mark.parametrize(("limit", "credits"), [(200, 1), (201, 2), (1000, 2), (1001, 3), (2000, 3)])
async def test_credits_go_by_limit(capi: Api, limit: int, credits: int) -> None:
    """A COQL call costs 1, 2 or 3 credits by its LIMIT, as Zoho documents."""
    res = await capi.call("POST", COQL, json=_q(f"select id from Contacts limit {limit}"))
    assert res.status == 200 and capi.sb.stats.credits_used == credits


async def test_limit_above_2000_is_refused_and_pages_say_more_records(capi: Api) -> None:
    """LIMIT 2001 is 400 LIMIT_EXCEEDED (free); LIMIT/OFFSET pages, more_records on all but the last."""
    res = await capi.call("POST", COQL, json=_q("select id from Contacts limit 2001"))
    assert res.status == 400 and res.body["code"] == "LIMIT_EXCEEDED" and capi.sb.stats.credits_used == 0
    first = await capi.call("POST", COQL, json=_q("select id from Contacts where id is not null limit 1"))
    assert first.body == {"data": [{"id": CONTACT}], "info": {"count": 1, "more_records": True}}
    second = await capi.call("POST", COQL, json=_q("select id from Contacts limit 1, 1"))
    assert second.body == {"data": [{"id": CONTACT2}], "info": {"count": 1, "more_records": False}}
    also = await capi.call("POST", COQL, json=_q("select id from Contacts limit 1 offset 1"))
    assert also.body == second.body


@pytest.mark.parametrize(
    ("query", "code", "detail"),
    [
        pytest.param("delete from Contacts", "SYNTAX_ERROR", {"clause": "select"}, id="not-a-select"),
        pytest.param("select id from Contacts where", "SYNTAX_ERROR", {"clause": "select"}, id="dangling-where"),
        pytest.param("select Nope from Contacts", "INVALID_QUERY", {"column_name": "Nope"}, id="bad-column"),
        pytest.param(
            "select id from Contacts where Nope in ('a')", "INVALID_QUERY", {"clause": "where"}, id="bad-where"
        ),
        pytest.param("select id from Nowhere", "INVALID_QUERY", {"module": "Nowhere"}, id="bad-module"),
        pytest.param("select id from Contacts where id in (a)", "SYNTAX_ERROR", {"clause": "where"}, id="bad-value"),
    ],
)
async def test_bad_queries(capi: Api, query: str, code: str, detail: dict[str, str]) -> None:
    """Malformed queries answer the OAS's request-level codes, at no cost."""
    res = await capi.call("POST", COQL, json=_q(query))
    assert res.status == 400 and res.body["code"] == code and res.body["status"] == "error"
    assert detail.items() <= res.body["details"].items()
    assert capi.sb.stats.credits_used == 0


async def test_coql_needs_its_scope_and_post(capi: Api) -> None:
    """Without ZohoCRM.coql.READ: 401 OAUTH_SCOPE_MISMATCH; GET /coql: INVALID_REQUEST_METHOD; no body: 400."""
    res = await capi.call("POST", COQL, json=_q("select id from Contacts"), token="no-coql")
    assert res.status == 401 and res.body["code"] == "OAUTH_SCOPE_MISMATCH"
    res = await capi.call("GET", COQL)
    assert res.status == 400 and res.body["code"] == "INVALID_REQUEST_METHOD"
    res = await capi.call("POST", COQL, json={})
    assert res.status == 400 and res.body["code"] == "MANDATORY_NOT_FOUND"


async def test_tokens_from_the_token_endpoint_carry_the_coql_scope(session: aiohttp.ClientSession) -> None:
    """The default token scope includes ZohoCRM.coql.READ, so an OAuth token can query."""
    async with Sandbox(SandboxOptions(strict=True)) as sb:
        sb.state.load(SEED)
        api = Api(sb=sb, session=session)
        grant = await api.token_request(refresh_params())
        assert "ZohoCRM.coql.READ" in grant.body["scope"]
        res = await api.call("POST", COQL, json=_q("select id from Leads"), token=grant.body["access_token"])
        assert res.status == 200 and res.body["info"]["count"] == 2
