"""The strict profile on record calls, over real sockets: each reading bites in strict and not by default.

Bulk update by external refused (audit row 1), unknown field names rejected (16), persistent and
transient locks (17), 200 for mixed results (11), LIMIT_EXCEEDED in data[] (13), request-level
400s that no record caused (14, 15), HTML error pages (34), and the profile's own switches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.options import STRICT
from tests.sandbox.helpers import CONTACT, CONTACT2, SEED, TOKEN, Api

EXT = {"X-EXTERNAL": "Contacts.External_Contact_ID"}


@pytest.fixture
async def strict() -> AsyncIterator[Sandbox]:
    """A running sandbox in the strict profile, with a static token and the doc-sample records."""
    async with Sandbox(SandboxOptions(strict=True, static_tokens=(TOKEN,))) as sandbox:
        sandbox.state.load(SEED)
        yield sandbox


@pytest.fixture
def sapi(strict: Sandbox, session: aiohttp.ClientSession) -> Api:
    """The HTTP helper bound to the strict sandbox."""
    return Api(sb=strict, session=session)


def test_strict_turns_every_reading_on_and_an_explicit_option_wins() -> None:
    """SandboxOptions(strict=True) sets each profile option to its strict value; one given explicitly wins."""
    on = SandboxOptions(strict=True)
    assert {name: getattr(on, name) for name in STRICT} == STRICT
    off = SandboxOptions()
    assert not any(getattr(off, name) for name in STRICT)
    mixed = SandboxOptions(strict=True, shuffle_related=False, refresh_lockout=5.0)
    assert mixed.shuffle_related is False and mixed.refresh_lockout == 5.0 and mixed.reject_unknown_fields
    assert off.replace({"strict": True}).html_errors is True
    assert on.replace({"strict": False}).html_errors is False
    assert on.replace({"shuffle_related": False}).shuffle_related is False


async def test_set_faults_switches_the_profile_live(api: Api) -> None:
    """POST /__sandbox/faults {"strict": true} turns the profile on in a running sandbox."""
    res = await api.admin("POST", "faults", {"strict": True})
    assert res.status == 200 and res.body["strict"] is True and res.body["refuse_bulk_external"] is True
    res = await api.call(
        "PUT", "/crm/v7/Contacts", json={"data": [{"External_Contact_ID": "extcontact3"}]}, headers=EXT
    )
    assert res.body["data"][0]["code"] == "MANDATORY_NOT_FOUND"


async def test_bulk_update_by_external_needs_an_id(sapi: Api, api: Api) -> None:
    """Strict: PUT /{Module} + X-EXTERNAL answers MANDATORY_NOT_FOUND id per record without id; default resolves."""
    body = {"data": [{"External_Contact_ID": "extcontact3", "Last_Name": "Strict"}]}
    res = await sapi.call("PUT", "/crm/v7/Contacts", json=body, headers=EXT)
    assert res.status == 400
    assert res.body["data"] == [
        {
            "code": "MANDATORY_NOT_FOUND",
            "details": {"api_name": "id", "json_path": "$.data[0].id"},
            "message": "required field not found",
            "status": "error",
        }
    ]
    assert sapi.sb.state.get_record("Contacts", CONTACT)["Last_Name"] == "Boyle"  # type: ignore[index]
    # With an id the record is updated by id, the header notwithstanding.
    res = await sapi.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Last_Name": "ById"}]}, headers=EXT)
    assert res.status == 200 and res.body["data"][0]["details"]["id"] == CONTACT
    # The single form keeps working.
    res = await sapi.call("PUT", "/crm/v7/Contacts/extcontact4", json={"data": [{"Last_Name": "One"}]}, headers=EXT)
    assert res.status == 200 and sapi.sb.state.get_record("Contacts", CONTACT2)["Last_Name"] == "One"  # type: ignore[index]
    # The default profile addresses the bulk form by the external value.
    res = await api.call("PUT", "/crm/v7/Contacts", json=body, headers=EXT)
    assert res.status == 200 and api.sb.state.get_record("Contacts", CONTACT)["Last_Name"] == "Strict"  # type: ignore[index]


async def test_unknown_field_names_are_rejected_per_record(sapi: Api, api: Api) -> None:
    """Strict: an unknown field API name is INVALID_DATA for its record only; $-keys and id pass; default ignores."""
    body = {
        "data": [
            {"id": CONTACT, "Last_Name": "A", "Lsat_Name": "typo"},
            {"id": CONTACT2, "Last_Name": "B", "$append_values": {}},
        ]
    }
    res = await sapi.call("PUT", "/crm/v7/Contacts", json=body)
    assert res.status == 200  # mixed: 200 in strict
    assert res.body["data"][0] == {
        "code": "INVALID_DATA",
        "details": {"api_name": "Lsat_Name", "json_path": "$.data[0].Lsat_Name"},
        "message": "the field api name given seems to be invalid",
        "status": "error",
    }
    assert res.body["data"][1]["code"] == "SUCCESS"
    res = await api.call("PUT", "/crm/v7/Contacts", json=body)
    assert res.status == 200


async def test_persistent_locks_never_clear_and_random_locks_are_transient(session: aiohttp.ClientSession) -> None:
    """locked_records answers record_locking on every try; lock_rate answers zia_vision_processing (every profile)."""
    opts = SandboxOptions(static_tokens=(TOKEN,), locked_records=(CONTACT,))
    async with Sandbox(opts) as sb:
        sb.state.load(SEED)
        api = Api(sb=sb, session=session)
        for _ in range(3):
            res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Last_Name": "X"}]})
            assert res.status == 400
            assert res.body["data"][0]["code"] == "RECORD_LOCKED"
            assert res.body["data"][0]["details"]["action"] == "record_locking"
        single = await api.call("PUT", f"/crm/v7/Contacts/{CONTACT}", json={"data": [{"Last_Name": "X"}]})
        assert single.body["data"][0]["details"]["action"] == "record_locking"
        sb.set_faults(locked_records=(), lock_rate=1.0)
        res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT2, "Last_Name": "X"}]})
        assert res.body["data"][0]["details"]["action"] == "zia_vision_processing"
        assert sb.stats.locks_persistent == 4 and sb.stats.locks_injected == 1
        assert sb.state.get_record("Contacts", CONTACT)["Last_Name"] == "Boyle"  # type: ignore[index]


async def test_persistent_lock_rate_picks_the_same_records_every_time(session: aiohttp.ClientSession) -> None:
    """persistent_lock_rate locks a fixed share of records, chosen by record id: the same ones on every call."""
    contacts = [{"id": str(111111000009000000 + i), "Last_Name": f"L{i}"} for i in range(100)]
    async with Sandbox(SandboxOptions(static_tokens=(TOKEN,), persistent_lock_rate=0.3, seed=4)) as sb:
        sb.state.load({"records": {"Contacts": contacts}})
        api = Api(sb=sb, session=session)
        body = {"data": [{"id": c["id"], "Last_Name": "New"} for c in contacts]}
        answers = [await api.call("PUT", "/crm/v7/Contacts", json=body) for _ in range(2)]
        locked = [[e["code"] == "RECORD_LOCKED" for e in a.body["data"]] for a in answers]
        assert locked[0] == locked[1] and 15 < sum(locked[0]) < 45
        assert all(
            e["details"]["action"] == "record_locking" for e in answers[1].body["data"] if e["status"] == "error"
        )


async def test_mixed_results_answer_200(sapi: Api, api: Api) -> None:
    """Strict: some successes and some errors is HTTP 200 (as Zoho's extension sandbox answers); default 207."""
    body = {"data": [{"id": CONTACT, "Last_Name": "A"}, {"id": "1", "Last_Name": "B"}]}
    strict, default = (
        await sapi.call("PUT", "/crm/v7/Contacts", json=body),
        await api.call("PUT", "/crm/v7/Contacts", json=body),
    )
    assert (strict.status, default.status) == (200, 207)
    assert strict.body == default.body
    all_bad = await sapi.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": "1", "Last_Name": "B"}]})
    assert all_bad.status == 400


async def test_limit_exceeded_is_wrapped_in_data(sapi: Api, api: Api) -> None:
    """Strict: 101 records answer LIMIT_EXCEEDED inside data[] with one entry (the OAS example); default top-level."""
    body = {"data": [{"id": CONTACT, "Last_Name": "A"}] * 101}
    res = await sapi.call("PUT", "/crm/v7/Contacts", json=body)
    assert res.status == 400
    assert res.body == {
        "data": [
            {
                "code": "LIMIT_EXCEEDED",
                "details": {"api_name": "data", "maximum_length": 100},
                "message": "count of records in your request exceeds the limit",
                "status": "error",
            }
        ]
    }
    res = await api.call("PUT", "/crm/v7/Contacts", json=body)
    assert res.status == 400 and res.body["code"] == "LIMIT_EXCEEDED" and "data" not in res.body


@pytest.mark.parametrize("profile", [False, True], ids=["default", "strict"])
async def test_request_level_400s_that_no_record_caused(session: aiohttp.ClientSession, profile: bool) -> None:
    """AUTHORIZATION_FAILED and a bad X-EXTERNAL answer the same top-level 400 for any half of the payload."""
    opts = SandboxOptions(strict=profile, static_tokens=(TOKEN,), authorization_failed_modules=("Leads",))
    async with Sandbox(opts) as sb:
        sb.state.load(SEED)
        api = Api(sb=sb, session=session)
        records = [{"id": CONTACT, "Last_Name": "A"}, {"id": CONTACT2, "Last_Name": "B"}]
        bad_header = {"X-EXTERNAL": "Contacts.Last_Name"}
        answers = [
            await api.call("PUT", "/crm/v7/Contacts", json={"data": part}, headers=bad_header)
            for part in (records, records[:1], records[1:])
        ]
        assert {a.status for a in answers} == {400}
        assert all(a.body["code"] == "INVALID_DATA" and "data" not in a.body for a in answers)
        assert len({str(a.body) for a in answers}) == 1
        denied = [
            await api.call("PUT", "/crm/v7/Leads", json={"data": part})
            for part in ([{"id": "1"}, {"id": "2"}], [{"id": "1"}], [{"id": "2"}])
        ]
        assert all(
            d.status == 400
            and d.body
            == {
                "code": "AUTHORIZATION_FAILED",
                "details": {},
                "message": "User does not have sufficient privilege to update records",
                "status": "error",
            }
            for d in denied
        )
        related = await api.call("DELETE", "/crm/v7/Leads/1/Campaigns?ids=2")
        assert related.body["code"] == "AUTHORIZATION_FAILED" and "related records" in related.body["message"]
        assert sb.stats.credits_used == 0  # refused before the limits, at no cost


async def test_html_error_pages(session: aiohttp.ClientSession) -> None:
    """html_errors: the calls error_rate picks get an HTML 400, 502 or 503 page, and nothing is applied."""
    async with Sandbox(SandboxOptions(strict=True, static_tokens=(TOKEN,), error_rate=1.0, seed=3)) as sb:
        sb.state.load(SEED)
        statuses = set()
        for _ in range(30):
            async with session.put(
                sb.url + "/crm/v7/Contacts",
                json={"data": [{"id": CONTACT, "Last_Name": "Html"}]},
                headers={"Authorization": f"Zoho-oauthtoken {TOKEN}"},
            ) as resp:
                text = await resp.text()
                assert resp.content_type == "text/html" and text.startswith("<!DOCTYPE html>")
                statuses.add(resp.status)
        assert statuses == {400, 502, 503}
        assert sb.stats.html_errors == 30 and sb.stats.errors_500 == 0
        assert sb.state.get_record("Contacts", CONTACT)["Last_Name"] == "Boyle"  # type: ignore[index]
