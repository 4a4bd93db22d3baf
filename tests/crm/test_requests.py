"""Payload -> HTTP call: paths, X-EXTERNAL headers and bodies as zoho-api.md documents them."""

from __future__ import annotations

import orjson
import pytest

from syncengine.crm.requests import build_call, escaped_path_keys, max_items, single_form_only
from syncengine.model import Change, Operation, Payload, PayloadItem, Target

BASE = "https://www.zohoapis.com/crm/v7"


def payload(target: Target, keys: list[str], parent: str | None = None, **fields: object) -> Payload:
    items = tuple(
        PayloadItem(
            key=k,
            fields=dict(fields),  # type: ignore[arg-type]
            changes=(Change(stream="s", seq=i, target=target, key=k, parent=parent),),
        )
        for i, k in enumerate(keys)
    )
    return Payload(target=target, parent=parent, items=items)


def test_update_by_id_puts_ids_in_body() -> None:
    """Update by record ID: PUT /{Module}, each record carries id, no X-EXTERNAL."""
    call = build_call(payload(Target(operation=Operation.UPDATE, module="Leads"), ["1", "2"], Company="A"), BASE)
    assert (call.method, call.url) == ("PUT", f"{BASE}/Leads")
    assert "X-EXTERNAL" not in dict(call.headers)
    assert orjson.loads(call.body or b"") == {"data": [{"Company": "A", "id": "1"}, {"Company": "A", "id": "2"}]}


def test_update_by_external_id_sends_header_and_field() -> None:
    """Update by external ID: X-EXTERNAL Module.Field and the field in each record."""
    target = Target(operation=Operation.UPDATE, module="Contacts", match_field="External_Contact_ID")
    call = build_call(payload(target, ["ext1"], Last_Name="X"), BASE, trigger=[])
    assert dict(call.headers)["X-EXTERNAL"] == "Contacts.External_Contact_ID"
    assert orjson.loads(call.body or b"") == {
        "data": [{"Last_Name": "X", "External_Contact_ID": "ext1"}],
        "trigger": [],
    }


@pytest.mark.parametrize(
    ("parent_field", "match_field", "header"),
    [
        ("External_Contact_ID", "External_Deal_ID", "Contacts.External_Contact_ID,Deals.External_Deal_ID"),
        (None, "External_Deal_ID", "Deals.External_Deal_ID"),
        ("External_Contact_ID", None, "Contacts.External_Contact_ID"),
        (None, None, None),
    ],
    ids=["both-external", "related-external", "parent-external", "ids"],
)
def test_update_related_addressing_forms(parent_field: str | None, match_field: str | None, header: str | None) -> None:
    """Every X-EXTERNAL form of the seed page, including the mixed ones."""
    target = Target(
        operation=Operation.UPDATE_RELATED,
        module="Contacts",
        related_list="Deals",
        related_module="Deals",
        parent_match_field=parent_field,
        match_field=match_field,
    )
    call = build_call(payload(target, ["d1"], parent="c/1", Contact_Role="111"), BASE)
    assert call.url == f"{BASE}/Contacts/c%2F1/Deals"
    assert dict(call.headers).get("X-EXTERNAL") == header
    record = orjson.loads(call.body or b"")["data"][0]
    assert record[match_field or "id"] == "d1" and record["Contact_Role"] == "111"


def test_delete_related_by_ids_is_one_call_with_ids_param() -> None:
    """Multi-delink: DELETE with ?ids=a,b and no body."""
    target = Target(operation=Operation.DELETE_RELATED, module="Leads", related_list="Products")
    call = build_call(payload(target, ["1", "2", "3"], parent="9"), BASE)
    assert (call.method, call.url, call.params, call.body) == (
        "DELETE",
        f"{BASE}/Leads/9/Products",
        (("ids", "1,2,3"),),
        None,
    )
    assert max_items(target) == 100


EXTERNAL_DELINK = Target(
    operation=Operation.DELETE_RELATED,
    module="Contacts",
    related_list="Deals",
    related_module="Deals",
    parent_match_field="External_Contact_ID",
    match_field="External_Deal_ID",
)


def test_delete_related_by_external_id_of_one_record_is_the_single_form() -> None:
    """One delink by external IDs: the documented single form, the related value in the path."""
    call = build_call(payload(EXTERNAL_DELINK, ["extdeal3"], parent="extcontact3"), BASE)
    assert (call.method, call.url, call.params) == ("DELETE", f"{BASE}/Contacts/extcontact3/Deals/extdeal3", ())
    assert dict(call.headers)["X-EXTERNAL"] == "Contacts.External_Contact_ID,Deals.External_Deal_ID"


def test_delete_related_by_external_ids_is_the_multi_form() -> None:
    """Several delinks by external IDs: one call, the values in ?ids=, both fields in X-EXTERNAL (Zoho's SDK
    sample), up to 100 per call."""
    call = build_call(payload(EXTERNAL_DELINK, ["ext 1", "e/2", "e%3"], parent="c/1"), BASE)
    assert (call.method, call.url, call.body) == ("DELETE", f"{BASE}/Contacts/c%2F1/Deals", None)
    assert call.params == (("ids", "ext 1,e/2,e%3"),)  # the transport encodes the query
    assert dict(call.headers)["X-EXTERNAL"] == "Contacts.External_Contact_ID,Deals.External_Deal_ID"
    assert max_items(EXTERNAL_DELINK) == 100


def test_an_external_key_with_a_comma_goes_in_the_single_form_only() -> None:
    """Zoho splits ?ids= on commas: an external value holding one must go alone, in the path."""
    assert single_form_only(EXTERNAL_DELINK, "a,b") and not single_form_only(EXTERNAL_DELINK, "a;b")
    by_ids = Target(operation=Operation.DELETE_RELATED, module="Leads", related_list="Products")
    assert not single_form_only(by_ids, "1,2")  # record ids never hold one: nothing to split off
    call = build_call(payload(EXTERNAL_DELINK, ["a,b"], parent="c1"), BASE)
    assert call.url == f"{BASE}/Contacts/c1/Deals/a%2Cb"
    with pytest.raises(AssertionError):
        build_call(payload(EXTERNAL_DELINK, ["a,b", "c"], parent="c1"), BASE)


@pytest.mark.parametrize(
    ("target", "keys", "parent", "escaped"),
    [
        pytest.param(EXTERNAL_DELINK, ["d 1"], "c/1", ("c/1", "d 1"), id="single-delink-both"),
        pytest.param(EXTERNAL_DELINK, ["d 1", "d2"], "c1", (), id="multi-delink-keys-in-query"),
        pytest.param(EXTERNAL_DELINK, ["d1"], "c#1", ("c#1",), id="parent-hash"),
        pytest.param(
            Target(operation=Operation.UPDATE, module="Contacts", match_field="E"),
            ["a/b"],
            None,
            (),
            id="update-keys-in-body",
        ),
    ],
)
def test_escaped_path_keys_are_the_keys_encoding_changed_in_the_path(
    target: Target, keys: list[str], parent: str | None, escaped: tuple[str, ...]
) -> None:
    """The keys a URL carries that percent-encoding changed: what BAD_KEY can blame when Zoho refuses the URL."""
    assert escaped_path_keys(payload(target, keys, parent=parent)) == escaped


def test_upsert_posts_with_duplicate_check_fields() -> None:
    """Upsert: POST /{Module}/upsert with duplicate_check_fields."""
    target = Target(operation=Operation.UPSERT, module="Leads", match_field="Email", duplicate_check_fields=("Email",))
    call = build_call(payload(target, ["a@x.com"], Last_Name="A"), BASE)
    assert (call.method, call.url) == ("POST", f"{BASE}/Leads/upsert")
    assert orjson.loads(call.body or b"")["duplicate_check_fields"] == ["Email"]


@pytest.mark.parametrize(
    ("operation", "records", "credits"),
    [
        (Operation.UPDATE, 100, 10),
        (Operation.UPDATE, 7, 1),
        (Operation.UPSERT, 31, 4),
        (Operation.UPDATE_RELATED, 100, 10),
        (Operation.DELETE_RELATED, 100, 1),
    ],
    ids=["update-100", "update-7", "upsert-31", "related-100", "delink-100"],
)
def test_credits_charged_per_call(operation: Operation, records: int, credits: int) -> None:
    """Writes cost 1 credit per 10 records; related updates are charged as writes (their cost is undocumented)."""
    from syncengine.crm.requests import write_credits

    target = Target(
        operation=operation, module="Deals", related_list="Contacts" if operation.value.endswith("related") else None
    )
    assert write_credits(target, records) == credits
