"""Every sample request of the Zoho doc pages in /work/shared/seeds, replayed against the sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from syncengine.sandbox import Sandbox
from tests.sandbox.helpers import (
    CAMPAIGNS,
    CONTACT,
    DEAL,
    DEAL_UPDATE,
    LEAD,
    LEAD_V21,
    PRICE_BOOKS,
    PRODUCT,
    ROLE,
    Api,
)

BOTH = "Contacts.External_Contact_ID,Deals.External_Deal_ID"
RELATION_ADDED_BY_EXT = {
    "data": [
        {
            "code": "SUCCESS",
            "details": {"External_Deal_ID": "extdeal3", "id": DEAL},
            "message": "relation added",
            "status": "success",
        }
    ]
}


@pytest.mark.parametrize(
    ("path", "header"),
    [
        pytest.param("/crm/v7/Contacts/extcontact3/Deals", BOTH, id="both-external"),
        pytest.param(f"/crm/v7/Contacts/{CONTACT}/Deals", "Deals.External_Deal_ID", id="parent-id-related-external"),
    ],
)
async def test_update_related_by_external_id_sample(api: Api, sb: Sandbox, path: str, header: str) -> None:
    """The two samples of update-related-records-ext answer exactly the documented body."""
    body = {"data": [{"External_Deal_ID": "extdeal3", "Contact_Role": ROLE}]}
    res = await api.call("PUT", path, json=body, headers={"X-EXTERNAL": header})
    assert res.status == 200
    assert res.body == RELATION_ADDED_BY_EXT
    assert sb.state.related("Contacts", CONTACT, "Deals") == {DEAL: {"Contact_Role": {"id": ROLE}}}


async def test_update_related_mixed_parent_external_related_id(api: Api, sb: Sandbox) -> None:
    """The doc note: parent by external value in the URL, related record by CRM id in the body."""
    body = {"data": [{"id": DEAL, "Contact_Role": ROLE}]}
    res = await api.call(
        "PUT",
        "/crm/v7/Contacts/extcontact3/Deals",
        json=body,
        headers={"X-EXTERNAL": "Contacts.External_Contact_ID"},
    )
    assert res.status == 200
    assert res.body["data"][0] == {
        "code": "SUCCESS",
        "details": {"id": DEAL},
        "message": "relation added",
        "status": "success",
    }
    assert sb.state.is_linked("Deals", DEAL, "Contacts", CONTACT)


@pytest.mark.parametrize(
    ("lead", "version"),
    [pytest.param(LEAD, "v7", id="v7-sample"), pytest.param(LEAD_V21, "v2.1", id="v2.1-sample")],
)
async def test_update_related_campaigns_sample(api: Api, sb: Sandbox, lead: str, version: str) -> None:
    """update-related-records: two campaigns with Member_Status linked to a lead, "relation added" each."""
    body = {
        "data": [
            {"id": CAMPAIGNS[0], "Member_Status": "Active"},
            {"id": CAMPAIGNS[1], "Member_Status": "Planning"},
        ]
    }
    res = await api.call("PUT", f"/crm/{version}/Leads/{lead}/Campaigns", json=body)
    assert res.status == 200
    assert res.body == {
        "data": [
            {"code": "SUCCESS", "details": {"id": c}, "message": "relation added", "status": "success"}
            for c in CAMPAIGNS
        ]
    }
    assert sb.state.related("Leads", lead, "Campaigns") == {
        CAMPAIGNS[0]: {"Member_Status": "Active"},
        CAMPAIGNS[1]: {"Member_Status": "Planning"},
    }
    # The same relation, seen from the campaign's side.
    assert sb.state.related("Campaigns", CAMPAIGNS[1], "Leads") == {lead: {"Member_Status": "Planning"}}


async def test_update_related_price_books_samples(api: Api, sb: Sandbox) -> None:
    """The v2.1 code samples: bulk list_price on Products/{id}/Price_Books, then the single form."""
    bulk = {"data": [{"id": PRICE_BOOKS[0], "list_price": 100.50}, {"id": PRICE_BOOKS[1], "list_price": 120.50}]}
    res = await api.call("PUT", f"/crm/v7/Products/{PRODUCT}/Price_Books", json=bulk)
    assert res.status == 200
    assert [e["message"] for e in res.body["data"]] == ["relation added", "relation added"]
    single = {"data": [{"list_price": 100.5}]}
    res = await api.call("PUT", f"/crm/v7/Products/{PRODUCT}/Price_Books/{PRICE_BOOKS[0]}", json=single)
    assert res.status == 200
    assert res.body == {
        "data": [
            {
                "code": "SUCCESS",
                "details": {"id": PRICE_BOOKS[0]},
                "message": "relation updated",
                "status": "success",
            }
        ]
    }
    assert sb.state.related("Price_Books", PRICE_BOOKS[1], "Products") == {PRODUCT: {"list_price": 120.5}}


async def test_update_related_sdk_external_sample(api: Api, sb: Sandbox) -> None:
    """zoho-api.md §3.2: the SDK's PUT /Leads/LEAD-EXT-1/Products with both external fields named."""
    res = await api.call(
        "PUT",
        "/crm/v7/Leads/LEAD-EXT-1/Products",
        json={"data": [{"External_Product_ID": "PROD-EXT-1", "Note_Content": "ignored"}]},
        headers={"X-EXTERNAL": "Leads.External_Lead_ID,Products.External_Product_ID"},
    )
    assert res.status == 200
    assert res.body["data"][0]["details"] == {"id": PRODUCT, "External_Product_ID": "PROD-EXT-1"}
    assert sb.state.related("Products", PRODUCT, "Leads") == {LEAD: {}}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Contacts.External_Contact_ID", id="doc-sample-parent-only"),
        pytest.param(BOTH, id="both-named"),
    ],
)
async def test_delete_related_by_external_id_sample(api: Api, sb: Sandbox, header: str) -> None:
    """delete-related-records-ext: DELETE /Contacts/extcontact3/Deals/extdeal3 answers "relation removed"."""
    await api.call("PUT", f"/crm/v7/Contacts/{CONTACT}/Deals", json={"data": [{"id": DEAL}]})
    res = await api.call("DELETE", "/crm/v7/Contacts/extcontact3/Deals/extdeal3", headers={"X-EXTERNAL": header})
    assert res.status == 200
    assert res.body == {
        "data": [{"code": "SUCCESS", "details": {"id": DEAL}, "message": "relation removed", "status": "success"}]
    }
    assert sb.state.related("Contacts", CONTACT, "Deals") == {}


UPDATE_SAMPLE: dict[str, Any] = {
    "data": [
        {
            "id": DEAL_UPDATE,
            "Deal_Name": "v5 Update",
            "Stage": "Closed Won",
            "Pipeline": "Standard (Standard)",
            "Foreign_Languages": ["Hindi", "Tamil"],
            "$append_values": {"Foreign_Languages": False},
            "Image_Upload": [{"File_Id__s": "2cxx2fa"}, {"id": "738964000002363016", "_delete": None}],
            "Listings": [
                {"Interested_Listings": {"id": "3652397000001988001"}},
                {"id": "431581000000697244", "_delete": None},
            ],
            "AssociatedUser": [
                {"User": {"name": "J Smith", "id": "3652397000000281001"}},
                {"id": "431581000000701821", "_delete": None},
            ],
        }
    ]
}


async def test_update_records_sample(api: Api, sb: Sandbox) -> None:
    """update-records: the Deals sample answers SUCCESS "record updated" with the documented details keys."""
    res = await api.call("PUT", "/crm/v7/Deals", json=UPDATE_SAMPLE)
    assert res.status == 200
    (entry,) = res.body["data"]
    assert entry["code"] == "SUCCESS"
    assert entry["message"] == "record updated"
    assert entry["status"] == "success"
    assert set(entry["details"]) == {"Modified_Time", "Modified_By", "Created_Time", "id", "Created_By"}
    assert entry["details"]["id"] == DEAL_UPDATE
    assert set(entry["details"]["Modified_By"]) == {"name", "id"}
    record = sb.state.get_record("Deals", DEAL_UPDATE)
    assert record is not None
    assert (record["Deal_Name"], record["Stage"], record["Pipeline"]) == (
        "v5 Update",
        "Closed Won",
        "Standard (Standard)",
    )
    # Fields the schema does not know are ignored, as Zoho ignores unknown API names.
    assert "Foreign_Languages" not in record and "$append_values" not in record
