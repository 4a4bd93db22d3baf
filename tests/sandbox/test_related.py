"""Related-record calls: link and edit, delink, and their per-item and request-level errors."""

from __future__ import annotations

import pytest

from syncengine.sandbox import Sandbox
from tests.sandbox.helpers import CAMPAIGNS, CONTACT, CONTACT2, DEAL, DEAL2, LEAD, Api


async def test_link_again_is_relation_updated(api: Api, sb: Sandbox) -> None:
    """Linking twice: "relation added", then "relation updated" with the new relation field."""
    path = f"/crm/v7/Campaigns/{CAMPAIGNS[0]}/Contacts"
    first = await api.call("PUT", path, json={"data": [{"id": CONTACT, "Member_Status": "Invited"}]})
    second = await api.call("PUT", path, json={"data": [{"id": CONTACT, "Member_Status": "Responded"}]})
    assert first.body["data"][0]["message"] == "relation added"
    assert second.body["data"][0]["message"] == "relation updated"
    assert sb.state.related("Contacts", CONTACT, "Campaigns") == {CAMPAIGNS[0]: {"Member_Status": "Responded"}}


async def test_related_per_item_errors_in_order(api: Api) -> None:
    """Unknown related id, missing id and a bad relation value each get their entry; HTTP 207."""
    body = {
        "data": [
            {"id": CONTACT, "Member_Status": "Active"},
            {"id": "99999999"},
            {"Member_Status": "Active"},
            {"id": CONTACT2, "Member_Status": "Nonsense"},
        ]
    }
    res = await api.call("PUT", f"/crm/v7/Campaigns/{CAMPAIGNS[0]}/Contacts", json=body)
    assert res.status == 207
    ok, unknown, missing, bad = res.body["data"]
    assert ok["code"] == "SUCCESS"
    assert unknown == {
        "code": "INVALID_DATA",
        "details": {"id": "99999999"},
        "message": "the related id given seems to be invalid",
        "status": "error",
    }
    assert (missing["code"], missing["details"]["api_name"]) == ("MANDATORY_NOT_FOUND", "id")
    assert (bad["code"], bad["details"]["json_path"]) == ("INVALID_DATA", "$.data[3].Member_Status")


async def test_related_external_missing_in_body(api: Api) -> None:
    """X-EXTERNAL names the related module's field but the record lacks it: MANDATORY_NOT_FOUND."""
    res = await api.call(
        "PUT",
        f"/crm/v7/Contacts/{CONTACT}/Deals",
        json={"data": [{"id": DEAL, "Contact_Role": "111111000000026002"}]},
        headers={"X-EXTERNAL": "Deals.External_Deal_ID"},
    )
    assert res.status == 400
    assert res.body["data"][0]["code"] == "MANDATORY_NOT_FOUND"
    assert res.body["data"][0]["details"]["api_name"] == "External_Deal_ID"


async def test_related_unknown_external_value(api: Api) -> None:
    """An unknown related external value is a per-item INVALID_DATA naming the field."""
    res = await api.call(
        "PUT",
        f"/crm/v7/Contacts/{CONTACT}/Deals",
        json={"data": [{"External_Deal_ID": "nope"}]},
        headers={"X-EXTERNAL": "Deals.External_Deal_ID"},
    )
    assert res.status == 400
    assert res.body["data"][0]["details"] == {
        "api_name": "External_Deal_ID",
        "json_path": "$.data[0].External_Deal_ID",
    }


@pytest.mark.parametrize(
    ("path", "header", "status", "code"),
    [
        pytest.param("/crm/v7/Contacts/111111000000000777/Deals", None, 404, "INVALID_DATA", id="parent-id-missing"),
        pytest.param(
            "/crm/v7/Contacts/nope/Deals",
            "Contacts.External_Contact_ID",
            400,
            "INVALID_DATA",
            id="parent-ext-missing",
        ),
        pytest.param(f"/crm/v7/Contacts/{CONTACT}/Nopes", None, 400, "INVALID_DATA", id="bad-related-list"),
    ],
)
async def test_related_request_level_errors(api: Api, path: str, header: str | None, status: int, code: str) -> None:
    """A missing parent or an unknown related list is a request-level error with no data[]."""
    headers = {"X-EXTERNAL": header} if header else None
    res = await api.call("PUT", path, json={"data": [{"id": DEAL}]}, headers=headers)
    assert res.status == status
    assert res.body["code"] == code and res.body["status"] == "error" and "data" not in res.body


async def test_parent_missing_body(api: Api) -> None:
    """The 404 for a missing parent record is the documented envelope."""
    res = await api.call("PUT", "/crm/v7/Contacts/111111000000000777/Deals", json={"data": [{"id": DEAL}]})
    assert res.body == {
        "code": "INVALID_DATA",
        "details": {"id": "111111000000000777"},
        "message": "The record does not exist",
        "status": "error",
    }


async def test_delink_multi_then_again(api: Api, sb: Sandbox) -> None:
    """Delink by ?ids=: "relation removed", then "relation not found" for the same id (an ambiguous retry)."""
    await api.call("PUT", f"/crm/v7/Contacts/{CONTACT}/Deals", json={"data": [{"id": DEAL}, {"id": DEAL2}]})
    res = await api.call("DELETE", f"/crm/v7/Contacts/{CONTACT}/Deals?ids={DEAL},99999999")
    assert res.status == 207
    assert res.body["data"] == [
        {"code": "SUCCESS", "details": {"id": DEAL}, "message": "relation removed", "status": "success"},
        {
            "code": "INVALID_DATA",
            "details": {"id": "99999999"},
            "message": "relation not found",
            "status": "error",
        },
    ]
    again = await api.call("DELETE", f"/crm/v7/Contacts/{CONTACT}/Deals?ids={DEAL}")
    assert again.status == 400
    assert again.body["data"][0]["message"] == "relation not found"
    assert sb.state.related("Deals", DEAL2, "Contacts") == {CONTACT: {}}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "",
            {
                "code": "MANDATORY_NOT_FOUND",
                "details": {"param_name": "ids"},
                "message": "required param not found",
            },
            id="missing-ids",
        ),
        pytest.param(
            "?ids=" + ",".join(str(10**17 + i) for i in range(101)),
            {
                "code": "LIMIT_EXCEEDED",
                "details": {"limit": "100", "param_name": "ids"},
                "message": "Limit Exceeded, You cannot give more than 100 record ids",
            },
            id="101-ids",
        ),
    ],
)
async def test_delink_request_errors(api: Api, query: str, expected: dict[str, object]) -> None:
    """Delink without ids or with more than 100 is a request-level 400."""
    res = await api.call("DELETE", f"/crm/v7/Contacts/{CONTACT}/Deals{query}")
    assert res.status == 400
    assert res.body == {**expected, "status": "error"}


@pytest.mark.parametrize(
    ("path", "header"),
    [
        pytest.param(
            f"/crm/v7/Contacts/{CONTACT}/Deals/extdeal3", "Deals.External_Deal_ID", id="parent-id-related-ext"
        ),
        pytest.param(
            f"/crm/v7/Contacts/extcontact3/Deals/{DEAL}",
            "Contacts.External_Contact_ID",
            id="parent-ext-related-id",
        ),
        pytest.param(f"/crm/v7/Deals/{DEAL}/Contacts/{CONTACT}", None, id="ids-from-the-other-side"),
    ],
)
async def test_delink_single_forms(api: Api, sb: Sandbox, path: str, header: str | None) -> None:
    """The single delink forms, mixed addressing included, remove the symmetric link."""
    await api.call("PUT", f"/crm/v7/Contacts/{CONTACT}/Deals/{DEAL}", json={"data": [{"Contact_Role": "1"}]})
    headers = {"X-EXTERNAL": header} if header else None
    res = await api.call("DELETE", path, headers=headers)
    assert res.status == 200 and res.body["data"][0]["message"] == "relation removed"
    assert not sb.state.is_linked("Contacts", CONTACT, "Deals", DEAL)


async def test_update_related_over_100_is_limit_exceeded(api: Api) -> None:
    """More than 100 related records in one call is a request-level LIMIT_EXCEEDED."""
    res = await api.call("PUT", f"/crm/v7/Leads/{LEAD}/Campaigns", json={"data": [{"id": CAMPAIGNS[0]}] * 101})
    assert res.status == 400 and res.body["code"] == "LIMIT_EXCEEDED"


async def test_get_related_list(api: Api) -> None:
    """GET /{Module}/{id}/{RelatedList} lists the linked records with their relation fields; 204 when none."""
    assert (await api.call("GET", f"/crm/v7/Leads/{LEAD}/Campaigns")).status == 204
    await api.call(
        "PUT",
        f"/crm/v7/Leads/{LEAD}/Campaigns",
        json={"data": [{"id": CAMPAIGNS[0], "Member_Status": "Sent"}]},
    )
    res = await api.call("GET", f"/crm/v7/Leads/{LEAD}/Campaigns")
    assert res.status == 200
    assert [(r["id"], r["Member_Status"]) for r in res.body["data"]] == [(CAMPAIGNS[0], "Sent")]
