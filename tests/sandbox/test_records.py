"""Record calls: update by id and by external value, upsert, insert, get, and per-record error codes."""

from __future__ import annotations

from typing import Any

import pytest

from syncengine.sandbox import Sandbox
from tests.sandbox.helpers import CONTACT, CONTACT2, Api


def _error(code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"code": code, "details": details, "message": message, "status": "error"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(
            {"id": "111111000000000999", "Last_Name": "X"},
            _error(
                "INVALID_DATA",
                "the id given seems to be invalid",
                {"api_name": "id", "json_path": "$.data[1].id"},
            ),
            id="unknown-id",
        ),
        pytest.param(
            {"Last_Name": "X"},
            _error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                {"api_name": "id", "json_path": "$.data[1].id"},
            ),
            id="missing-id",
        ),
        pytest.param(
            {"id": CONTACT2, "Email": "not-an-email"},
            _error(
                "INVALID_DATA",
                "invalid data",
                {"api_name": "Email", "json_path": "$.data[1].Email", "expected_data_type": "email"},
            ),
            id="bad-email",
        ),
        pytest.param(
            {"id": CONTACT2, "First_Name": "x" * 41},
            _error(
                "INVALID_DATA",
                "invalid data",
                {"api_name": "First_Name", "json_path": "$.data[1].First_Name", "maximum_length": 40},
            ),
            id="too-long",
        ),
        pytest.param(
            {"id": CONTACT2, "Email_Opt_Out": "yes"},
            _error(
                "INVALID_DATA",
                "invalid data",
                {
                    "api_name": "Email_Opt_Out",
                    "json_path": "$.data[1].Email_Opt_Out",
                    "expected_data_type": "boolean",
                },
            ),
            id="wrong-type",
        ),
        pytest.param(
            {"id": CONTACT2, "Last_Name": None},
            _error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                {"api_name": "Last_Name", "json_path": "$.data[1].Last_Name"},
            ),
            id="mandatory-set-to-null",
        ),
        pytest.param(
            {"id": CONTACT2, "Last_Name": ""},
            _error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                {"api_name": "Last_Name", "json_path": "$.data[1].Last_Name"},
            ),
            id="mandatory-set-to-empty",
        ),
    ],
)
async def test_update_mixed_batch_is_207_in_input_order(
    api: Api, sb: Sandbox, record: dict[str, Any], expected: dict[str, Any]
) -> None:
    """One good record and one bad: HTTP 207, the success first, then the documented error entry."""
    body = {"data": [{"id": CONTACT, "Title": "CEO"}, record]}
    res = await api.call("PUT", "/crm/v7/Contacts", json=body)
    assert res.status == 207
    assert res.body["data"][0]["code"] == "SUCCESS"
    assert res.body["data"][1] == expected
    assert (sb.state.get_record("Contacts", CONTACT) or {})["Title"] == "CEO"


async def test_update_duplicate_unique_value(api: Api, sb: Sandbox) -> None:
    """A unique field colliding with another record answers DUPLICATE_DATA naming that record."""
    res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Email": "taken@example.com"}]})
    assert res.status == 400
    (entry,) = res.body["data"]
    assert entry["code"] == "DUPLICATE_DATA"
    assert entry["details"]["api_name"] == "Email"
    assert entry["details"]["json_path"] == "$.data[0].Email"
    assert entry["details"]["duplicate_record"]["id"] == CONTACT2


async def test_update_all_failed_is_400_with_data(api: Api) -> None:
    """Every record failing gives HTTP 400 with a data[] of per-record errors."""
    res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": "1"}, {"id": 2}]})
    assert res.status == 400
    assert [e["code"] for e in res.body["data"]] == ["INVALID_DATA", "INVALID_DATA"]


async def test_update_accepts_numeric_ids_and_ignores_unknown_fields(api: Api, sb: Sandbox) -> None:
    """Ids may be JSON numbers (as the SDK sends them); unknown field API names are ignored silently."""
    res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": int(CONTACT), "Nope__c": 1, "Title": "A"}]})
    assert res.status == 200
    record = sb.state.get_record("Contacts", CONTACT) or {}
    assert record["Title"] == "A" and "Nope__c" not in record


async def test_bulk_update_by_external_field(api: Api, sb: Sandbox) -> None:
    """X-EXTERNAL on a bulk update: records are found by the external field; unknown values never insert."""
    body = {
        "data": [
            {"External_Contact_ID": "extcontact3", "Title": "VP"},
            {"External_Contact_ID": "nope", "Title": "X"},
        ]
    }
    res = await api.call("PUT", "/crm/v7/Contacts", json=body, headers={"X-EXTERNAL": "Contacts.External_Contact_ID"})
    assert res.status == 207
    assert res.body["data"][0]["details"]["id"] == CONTACT
    assert res.body["data"][1] == _error(
        "INVALID_DATA",
        "The value of the external field is invalid.",
        {"api_name": "External_Contact_ID", "json_path": "$.data[1].External_Contact_ID"},
    )
    assert sb.state.find_by_field("Contacts", "External_Contact_ID", "nope") is None
    assert sb.state.count("Contacts") == 2


@pytest.mark.parametrize(
    ("path", "header"),
    [
        pytest.param(f"/crm/v7/Contacts/{CONTACT}", None, id="by-id"),
        pytest.param("/crm/v7/Contacts/extcontact3", "Contacts.External_Contact_ID", id="by-external"),
    ],
)
async def test_update_one(api: Api, sb: Sandbox, path: str, header: str | None) -> None:
    """PUT /{Module}/{id} and /{Module}/{ext} update that record and answer "record updated"."""
    headers = {"X-EXTERNAL": header} if header else None
    res = await api.call("PUT", path, json={"data": [{"Last_Name": "Test Contact 1"}]}, headers=headers)
    assert res.status == 200
    assert res.body["data"][0]["message"] == "record updated"
    assert res.body["data"][0]["details"]["id"] == CONTACT
    assert (sb.state.get_record("Contacts", CONTACT) or {})["Last_Name"] == "Test Contact 1"


async def test_update_one_unknown_id_is_request_level(api: Api) -> None:
    """A bad id in the path is a request-level INVALID_DATA with resource_path_index."""
    res = await api.call("PUT", "/crm/v7/Contacts/111111000000000777", json={"data": [{"Last_Name": "X"}]})
    assert res.status == 400
    assert res.body == _error("INVALID_DATA", "the id given seems to be invalid", {"resource_path_index": 1})


async def test_upsert_insert_and_update(api: Api, sb: Sandbox) -> None:
    """Upsert matches on duplicate_check_fields: action update for a match, insert otherwise, HTTP 200."""
    body = {
        "data": [
            {"Email": "p@example.com", "Last_Name": "Boyle2"},
            {"Email": "new@example.com", "Last_Name": "New"},
        ],
        "duplicate_check_fields": ["Email"],
    }
    res = await api.call("POST", "/crm/v7/Contacts/upsert", json=body)
    assert res.status == 200
    first, second = res.body["data"]
    assert (first["action"], first["message"], first["duplicate_field"]) == (
        "update",
        "record updated",
        "Email",
    )
    assert first["details"]["id"] == CONTACT
    assert (second["action"], second["message"], second["code"]) == ("insert", "record added", "SUCCESS")
    new_id = second["details"]["id"]
    assert len(new_id) == 18 and new_id.isdigit()
    assert (sb.state.get_record("Contacts", new_id) or {})["Last_Name"] == "New"


async def test_upsert_default_check_fields_and_mandatory(api: Api, sb: Sandbox) -> None:
    """Without duplicate_check_fields the system field (Deal_Name) matches; inserts need mandatory fields."""
    body = {"data": [{"Deal_Name": "Deal 3", "Amount": 5}, {"Amount": 7}]}
    res = await api.call("POST", "/crm/v7/Deals/upsert", json=body)
    assert res.status == 207
    assert res.body["data"][0]["action"] == "update"
    assert res.body["data"][1] == _error(
        "MANDATORY_NOT_FOUND",
        "required field not found",
        {"api_name": "Deal_Name", "json_path": "$.data[1].Deal_Name"},
    )


async def test_upsert_by_external_header(api: Api, sb: Sandbox) -> None:
    """Upsert with X-EXTERNAL matches on the external field first."""
    body = {
        "data": [
            {"External_Contact_ID": "extcontact4", "Last_Name": "S2"},
            {"External_Contact_ID": "e9", "Last_Name": "N"},
        ]
    }
    res = await api.call(
        "POST", "/crm/v7/Contacts/upsert", json=body, headers={"X-EXTERNAL": "Contacts.External_Contact_ID"}
    )
    assert [e["action"] for e in res.body["data"]] == ["update", "insert"]
    assert (sb.state.find_by_field("Contacts", "External_Contact_ID", "e9") or {})["Last_Name"] == "N"


async def test_insert_is_201(api: Api, sb: Sandbox) -> None:
    """POST /{Module} inserts and answers 201 "record added" when every record was added."""
    res = await api.call("POST", "/crm/v7/Leads", json={"data": [{"Last_Name": "L", "Company": "C"}]})
    assert res.status == 201
    assert res.body["data"][0]["message"] == "record added"


async def test_get_record_and_list(api: Api) -> None:
    """GET /{Module}/{id} returns the record; an unknown id is 204; GET /{Module} pages."""
    res = await api.call("GET", f"/crm/v7/Contacts/{CONTACT}")
    assert res.status == 200 and res.body["data"][0]["External_Contact_ID"] == "extcontact3"
    res = await api.call("GET", "/crm/v7/Contacts/111111000000000777")
    assert res.status == 204 and res.body is None
    res = await api.call("GET", "/crm/v7/Contacts?per_page=1&page=2")
    assert res.status == 200 and res.body["data"][0]["id"] == CONTACT2
    assert res.body["info"] == {"per_page": 1, "count": 1, "page": 2, "more_records": False}


async def test_number_in_text_field_is_stored_as_text(api: Api, sb: Sandbox) -> None:
    """A number sent to a text field is stored as its text, as Zoho does."""
    res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Title": 5}]})
    assert res.status == 200
    assert (sb.state.get_record("Contacts", CONTACT) or {})["Title"] == "5"
