"""The strict profile on related calls and paths, over real sockets.

Shuffled ``data[]`` for update-related and delink answers (audit row 10), the whole-call 404 for a
delink naming a related record that does not exist (row 5), and keys with an encoded slash (row 33):
routed on the raw path, or refused with 404 INVALID_URL_PATTERN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import TOKEN

DEAL = "111111000000094028"
CONTACTS = [str(111111000008000000 + i) for i in range(30)]
SLASHED = "111111000008100000"  # External_Contact_ID "a/b"
HEADERS = {"Authorization": f"Zoho-oauthtoken {TOKEN}"}
SEED: dict[str, Any] = {
    "records": {
        "Deals": [{"id": DEAL, "Deal_Name": "D", "External_Deal_ID": "D1"}],
        "Contacts": [
            *({"id": c, "Last_Name": f"C{n}", "External_Contact_ID": f"C{n}"} for n, c in enumerate(CONTACTS)),
            {"id": SLASHED, "Last_Name": "Slash", "External_Contact_ID": "a/b"},
        ],
    },
    "relations": [],
}


async def _start(**options: Any) -> Sandbox:
    sb = Sandbox(SandboxOptions(static_tokens=(TOKEN,), **options))
    await sb.start()
    sb.state.load(SEED)
    return sb


@pytest.fixture
async def sandboxes() -> AsyncIterator[tuple[Sandbox, Sandbox]]:
    """(the default profile, the strict profile), both seeded."""
    default, strict = await _start(), await _start(strict=True)
    try:
        yield default, strict
    finally:
        await default.stop()
        await strict.stop()


async def _call(
    session: aiohttp.ClientSession, sb: Sandbox, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    url = URL(sb.url + path, encoded=True)  # sent as written: %2F stays %2F on the wire
    data = orjson.dumps(body) if body is not None else None
    async with session.request(method, url, data=data, headers={**HEADERS, **headers}) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else None


async def test_related_and_delink_entries_are_shuffled(
    sandboxes: tuple[Sandbox, Sandbox], session: aiohttp.ClientSession
) -> None:
    """Strict: data[] comes back out of input order, each entry naming its record in details.id."""
    default, strict = sandboxes
    body = {"data": [{"id": c, "Contact_Role": "111111000000026002"} for c in CONTACTS]}
    for sb, shuffled in ((default, False), (strict, True)):
        status, res = await _call(session, sb, "PUT", f"/crm/v7/Deals/{DEAL}/Contacts", body)
        assert status == 200
        order = [e["details"]["id"] for e in res["data"]]
        assert sorted(order) == sorted(CONTACTS) and (order != CONTACTS) is shuffled
        ids = ",".join(CONTACTS[:20])
        status, res = await _call(session, sb, "DELETE", f"/crm/v7/Deals/{DEAL}/Contacts?ids={ids}")
        assert status == 200
        order = [e["details"]["id"] for e in res["data"]]
        assert sorted(order) == sorted(CONTACTS[:20]) and (order != CONTACTS[:20]) is shuffled


async def test_shuffled_external_entries_carry_id_and_external_value(
    sandboxes: tuple[Sandbox, Sandbox], session: aiohttp.ClientSession
) -> None:
    """Strict, related addressed by external value: every entry maps back by details (id and value) or json_path."""
    _, strict = sandboxes
    body = {"data": [{"External_Contact_ID": f"C{n}"} for n in range(10)] + [{"External_Contact_ID": "nope"}]}
    hdr = {"X-EXTERNAL": "Deals.External_Deal_ID,Contacts.External_Contact_ID"}
    status, res = await _call(session, strict, "PUT", "/crm/v7/Deals/D1/Contacts", body, **hdr)
    assert status == 200  # mixed results: 200 in strict
    ok = {e["details"]["External_Contact_ID"]: e["details"]["id"] for e in res["data"] if e["status"] == "success"}
    assert ok == {f"C{n}": CONTACTS[n] for n in range(10)}
    bad = [e for e in res["data"] if e["status"] == "error"]
    assert [e["details"]["json_path"] for e in bad] == ["$.data[10].External_Contact_ID"]


async def test_delink_naming_a_missing_record_fails_the_whole_call(
    sandboxes: tuple[Sandbox, Sandbox], session: aiohttp.ClientSession
) -> None:
    """Strict: ?ids= with one id that is no record answers 404 "The record does not exist", nothing removed."""
    default, strict = sandboxes
    missing = "111111000008999999"
    for sb in sandboxes:
        for c in CONTACTS[:3]:
            sb.state.link("Deals", DEAL, sb.state.schema.related_list("Deals", "Contacts"), c, {})  # type: ignore[arg-type]
    ids = ",".join([*CONTACTS[:3], missing])
    status, res = await _call(session, strict, "DELETE", f"/crm/v7/Deals/{DEAL}/Contacts?ids={ids}")
    assert status == 404
    assert res == {"code": "INVALID_DATA", "message": "The record does not exist", "status": "error", "details": {}}
    assert len(strict.state.related("Deals", DEAL, "Contacts")) == 3
    # A record that exists but is not linked is still a per-id "relation not found".
    status, res = await _call(
        session, strict, "DELETE", f"/crm/v7/Deals/{DEAL}/Contacts?ids={CONTACTS[0]},{CONTACTS[9]}"
    )
    assert status == 200 and {e["message"] for e in res["data"]} == {"relation removed", "relation not found"}
    # The default profile answers per id and removes the others.
    status, res = await _call(session, default, "DELETE", f"/crm/v7/Deals/{DEAL}/Contacts?ids={ids}")
    assert status == 207 and [e["message"] for e in res["data"]].count("relation not found") == 1
    assert default.state.related("Deals", DEAL, "Contacts") == {}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, (400, "INVALID_DATA"), id="default-misroutes"),
        pytest.param({"raw_path_routing": True}, (200, "SUCCESS"), id="raw-path"),
        pytest.param({"strict": True}, (404, "INVALID_URL_PATTERN"), id="strict-rejects"),
        pytest.param({"reject_encoded_keys": True}, (404, "INVALID_URL_PATTERN"), id="reject-only"),
    ],
)
async def test_a_parent_key_with_an_encoded_slash(
    session: aiohttp.ClientSession, options: dict[str, Any], expected: tuple[int, str]
) -> None:
    """/Contacts/a%2Fb/Deals: decoded before routing (default: mis-routed to list "b"), raw-routed, or refused."""
    sb = await _start(**options)
    try:
        body = {"data": [{"id": DEAL}]}
        status, res = await _call(
            session, sb, "PUT", "/crm/v7/Contacts/a%2Fb/Deals", body, **{"X-EXTERNAL": "Contacts.External_Contact_ID"}
        )
        code = res["data"][0]["code"] if "data" in res else res["code"]
        assert (status, code) == expected
        if expected[0] == 404:
            assert res["message"] == "Please check if the URL trying to access is a correct one"
        if expected[0] == 200:
            assert DEAL in sb.state.related("Contacts", SLASHED, "Deals")
        if not options:
            assert res["message"] == "The relation name given seems to be invalid"
    finally:
        await sb.stop()


async def test_raw_routing_leaves_plain_keys_alone(session: aiohttp.ClientSession) -> None:
    """raw_path_routing decodes each segment after the split: %20 and plain ids route as before."""
    sb = await _start(raw_path_routing=True)
    try:
        status, res = await _call(session, sb, "GET", f"/crm/v7/Contacts/{CONTACTS[0]}")
        assert status == 200 and res["data"][0]["id"] == CONTACTS[0]
        status, res = await _call(
            session, sb, "GET", "/crm/v7/Contacts/a%2Fb", **{"X-EXTERNAL": "Contacts.External_Contact_ID"}
        )
        assert status == 200 and res["data"][0]["id"] == SLASHED
    finally:
        await sb.stop()
