"""Response -> verdict: the response table of DESIGN §3, on Zoho's documented bodies."""

from __future__ import annotations

import orjson
import pytest

from syncengine.crm.responses import (
    UNKNOWN_RESULT,
    Action,
    Records,
    Refused,
    absent_relation,
    interpret,
    match_related,
    relation_not_found,
    splittable,
)
from syncengine.crm.transport import HttpResponse
from syncengine.model import Change, Operation, Payload, PayloadItem, Target


def response(status: int, body: object) -> HttpResponse:
    return HttpResponse(status=status, body=orjson.dumps(body))


MIXED = {
    "data": [
        {"code": "SUCCESS", "details": {"id": "111"}, "message": "record updated", "status": "success"},
        {
            "code": "INVALID_DATA",
            "details": {"api_name": "Last_Name", "json_path": "$.data[1].Last_Name"},
            "message": "the field api name given seems to be invalid",
            "status": "error",
        },
        {
            "code": "RECORD_LOCKED",
            "details": {"api_name": "id", "json_path": "$.data[2]"},
            "message": "locked",
            "status": "error",
        },
    ]
}


@pytest.mark.parametrize("status", [200, 207, 400], ids=["200", "207", "400-with-data"])
def test_per_record_answers_map_in_input_order(status: int) -> None:
    """200, 207 and 400 with data[] give one result per record, in input order."""
    verdict = interpret(response(status, MIXED), 3)
    assert isinstance(verdict, Records)
    assert [(r.success, r.transient, r.code) for r in verdict.results] == [
        (True, False, "SUCCESS"),
        (False, False, "INVALID_DATA"),
        (False, True, "RECORD_LOCKED"),
    ]
    assert verdict.results[0].crm_id == "111"


def test_json_path_reorders_results_that_disagree_with_position() -> None:
    """When json_path contradicts position, json_path wins."""
    body = {
        "data": [
            {"code": "INVALID_DATA", "details": {"json_path": "$.data[1].Email"}, "message": "m", "status": "error"},
            {
                "code": "MANDATORY_NOT_FOUND",
                "details": {"json_path": "$.data[0].Last_Name"},
                "message": "m",
                "status": "error",
            },
        ]
    }
    verdict = interpret(response(207, body), 2)
    assert isinstance(verdict, Records)
    assert [r.code for r in verdict.results] == ["MANDATORY_NOT_FOUND", "INVALID_DATA"]


def test_wrong_count_without_json_path_is_unexpected() -> None:
    """Fewer results than records and nothing to align them by: never guess."""
    verdict = interpret(response(200, {"data": MIXED["data"][:1]}), 3)
    assert isinstance(verdict, Refused) and verdict.action is Action.UNEXPECTED


@pytest.mark.parametrize(
    ("status", "code", "action"),
    [
        (400, "INVALID_MODULE", Action.HALT),
        (404, "INVALID_URL_PATTERN", Action.HALT),
        (401, "OAUTH_SCOPE_MISMATCH", Action.HALT),
        (403, "NO_PERMISSION", Action.HALT),
        (400, "INVALID_REQUEST_METHOD", Action.HALT),
        (401, "INVALID_TOKEN", Action.REFRESH),
        (429, "TOO_MANY_REQUESTS", Action.THROTTLE),
        (500, "INTERNAL_ERROR", Action.RETRY),
        (503, "HTTP_503", Action.RETRY),
        (400, "INVALID_DATA", Action.REJECT),
        (400, "AUTHORIZATION_FAILED", Action.HALT),
        (403, "AUTHORIZATION_FAILED", Action.REJECT),
        (404, "INVALID_DATA", Action.REJECT),
    ],
    ids=lambda v: str(v.value if isinstance(v, Action) else v),
)
def test_request_level_envelopes(status: int, code: str, action: Action) -> None:
    """A call refused as a whole: each documented envelope gets the documented handling."""
    verdict = interpret(response(status, {"code": code, "details": {}, "message": "m", "status": "error"}), 5)
    assert isinstance(verdict, Refused)
    assert (verdict.action, verdict.code) == (action, code)


def test_html_error_page_is_handled() -> None:
    """A proxy's HTML 502 is transient, and its text becomes the message."""
    verdict = interpret(HttpResponse(status=502, body=b"<html>Bad Gateway</html>"), 1)
    assert isinstance(verdict, Refused) and verdict.action is Action.RETRY and "Bad Gateway" in verdict.message


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_front_end_page_for_a_4xx_is_tried_again_never_blamed_on_a_record(status: int) -> None:
    """Zoho's API answers JSON; an HTML 400 from a load balancer says nothing about the records (audit row 34)."""
    page = b"<!DOCTYPE html><html><head><title>400 Bad Request</title></head><body>Try again later.</body></html>"
    verdict = interpret(HttpResponse(status=status, body=page), 100)
    assert isinstance(verdict, Refused) and verdict.action is Action.RETRY
    assert verdict.code == f"HTTP_{status}" and verdict.message.endswith(": 400 Bad Request")
    json_400 = interpret(response(400, {"code": "INVALID_DATA", "details": {}, "message": "m", "status": "error"}), 1)
    assert isinstance(json_400, Refused) and json_400.action is Action.REJECT


def test_response_repr_never_shows_the_body() -> None:
    """A token endpoint's body holds an access token: it must not reach a repr or a log line."""
    assert "1000.secret" not in repr(HttpResponse(status=200, body=b'{"access_token": "1000.secret"}'))


@pytest.mark.parametrize(
    ("details", "transient"),
    [
        ({"api_name": "id", "action": "record_locking"}, False),
        ({"api_name": "id", "action": "zia_vision_processing"}, True),
        ({"api_name": "id"}, True),
    ],
    ids=["record_locking", "zia_vision_processing", "no-action"],
)
def test_only_a_lock_that_clears_by_itself_is_transient(details: dict[str, object], transient: bool) -> None:
    """RECORD_LOCKED by a user or a locking rule stays until unlocked: that record is refused, not retried."""
    entry = {"code": "RECORD_LOCKED", "details": details, "message": "locked", "status": "error"}
    verdict = interpret(response(400, {"data": [entry]}), 1)
    assert isinstance(verdict, Records)
    assert (verdict.results[0].transient, verdict.results[0].success) == (transient, False)


@pytest.mark.parametrize(
    "details",
    [
        {"header_name": "X-EXTERNAL", "value": "Contacts.Email"},
        {"api_name": "duplicate_check_fields", "json_path": "$.duplicate_check_fields[0]"},
    ],
    ids=["x-external", "body-key-beside-data"],
)
def test_a_refusal_pointing_at_what_the_config_sets_halts(details: dict[str, object]) -> None:
    """A 400 naming the X-EXTERNAL header or a body key beside data: every call of the stream would get it."""
    body = {"code": "INVALID_DATA", "details": details, "message": "invalid data", "status": "error"}
    verdict = interpret(response(400, body), 100)
    assert isinstance(verdict, Refused) and verdict.action is Action.HALT


def entry(code: str, message: str, **details: object) -> dict[str, object]:
    status = "success" if code == "SUCCESS" else "error"
    return {"code": code, "details": details, "message": message, "status": status}


def related(status: int, *entries: dict[str, object]) -> Records:
    verdict = interpret(response(status, {"data": list(entries)}), 3, related=True)
    assert isinstance(verdict, Records) and not verdict.ordered
    return verdict


def test_related_entries_are_matched_by_what_they_name_not_by_position() -> None:
    """Shuffled entries go back to their records by details.id, the external value or json_path."""
    by_id = related(
        207,
        entry("INVALID_DATA", "relation not found", id="3"),
        entry("SUCCESS", "relation removed", id="1"),
        entry("SUCCESS", "relation removed", id="2"),
    )
    got = match_related(by_id, ["1", "2", "3"], None)
    assert got.ordered and [(r.code, r.crm_id) for r in got.results] == [
        ("SUCCESS", "1"),
        ("SUCCESS", "2"),
        ("INVALID_DATA", None),
    ]
    assert relation_not_found(got.results[2])
    by_ext = related(
        207,
        entry("SUCCESS", "relation added", id="900", External_Contact_ID="C2"),
        entry("INVALID_DATA", "invalid", api_name="External_Contact_ID", json_path="$.data[0].External_Contact_ID"),
        entry("SUCCESS", "relation updated", id="901", External_Contact_ID="C3"),
    )
    got = match_related(by_ext, ["C1", "C2", "C3"], "External_Contact_ID")
    assert [(r.code, r.crm_id) for r in got.results] == [("INVALID_DATA", None), ("SUCCESS", "900"), ("SUCCESS", "901")]


def test_entries_naming_no_record_go_to_the_rest_only_when_that_is_certain() -> None:
    """A delink by external value names CRM ids on success: as many such entries as records left, all saying
    the same, give each of them that answer (no CRM id: which one is not known). Otherwise UNKNOWN_RESULT."""
    ext = related(
        207,
        entry("SUCCESS", "relation removed", id="900"),
        entry("INVALID_DATA", "relation not found", id="C2"),
        entry("SUCCESS", "relation removed", id="901"),
    )
    got = match_related(ext, ["C1", "C2", "C3"], "External_Contact_ID")
    assert [(r.code, r.crm_id) for r in got.results] == [("SUCCESS", None), ("INVALID_DATA", None), ("SUCCESS", None)]
    mixed = related(
        207,
        entry("SUCCESS", "relation removed", id="900"),
        entry("INVALID_DATA", "relation not found", id="901"),
        entry("SUCCESS", "relation removed", id="C3"),
    )
    got = match_related(mixed, ["C1", "C2", "C3"], "External_Contact_ID")
    assert [r.code for r in got.results] == [UNKNOWN_RESULT, UNKNOWN_RESULT, "SUCCESS"]
    assert all(r.transient and not r.success for r in got.results[:2])


@pytest.mark.parametrize(
    ("entries", "codes"),
    [
        (
            [entry("SUCCESS", "relation removed", id="1"), entry("SUCCESS", "relation removed", id="2")],
            ["SUCCESS", "SUCCESS", UNKNOWN_RESULT],
        ),
        (
            [
                entry("SUCCESS", "relation removed", id="1"),
                entry("SUCCESS", "relation removed", id="2"),
                entry("SUCCESS", "relation removed", id="77"),
            ],
            ["SUCCESS", "SUCCESS", UNKNOWN_RESULT],
        ),
        (
            [
                entry("SUCCESS", "relation removed", id="1"),
                entry("INVALID_DATA", "relation not found", id="1"),
                entry("SUCCESS", "relation removed", id="2"),
            ],
            [UNKNOWN_RESULT, "SUCCESS", UNKNOWN_RESULT],
        ),
        (
            [
                entry("SUCCESS", "relation removed", id="3"),
                entry("SUCCESS", "relation removed", id="1"),
                entry("SUCCESS", "relation removed", id="2"),
                entry("SUCCESS", "relation removed", id="77"),
            ],
            ["SUCCESS", "SUCCESS", "SUCCESS"],
        ),
        (
            [entry("SUCCESS", "relation removed", id="2"), entry("SUCCESS", "relation removed")] * 1
            + [entry("SUCCESS", "relation removed", id="1")],
            ["SUCCESS", "SUCCESS", "SUCCESS"],
        ),
    ],
    ids=["an-entry-missing", "an-entry-naming-another-id", "a-record-named-twice", "an-extra-entry", "one-anonymous"],
)
def test_a_record_without_its_own_entry_is_never_given_a_neighbours_answer(
    entries: list[dict[str, object]], codes: list[str]
) -> None:
    """Missing, foreign or contradicting entries: the records they leave in doubt are UNKNOWN_RESULT (sent
    again), never SUCCESS; an entry naming no id at all is the one record left without one."""
    got = match_related(related(200, *entries), ["1", "2", "3"], None)
    assert [r.code for r in got.results] == codes
    assert all(r.transient and not r.success for r in got.results if r.code == UNKNOWN_RESULT)


def test_a_single_form_delink_refused_for_its_related_key_is_that_records_answer() -> None:
    """DELETE /{M}/{ext}/{List}/{ext} answered 400 naming the related field: read as "relation not found"."""

    def refused(**details: object) -> Refused:
        body = {"code": "INVALID_DATA", "details": details, "message": "invalid external id", "status": "error"}
        verdict = interpret(response(400, body), 1, related=True)
        assert isinstance(verdict, Refused)
        return verdict

    got = absent_relation(refused(api_name="External_Deal_ID"), "External_Deal_ID")
    assert got is not None and relation_not_found(got) and got.message == "invalid external id"
    assert absent_relation(refused(api_name="External_Deal_ID", resource_path_index=1), "External_Deal_ID") is None
    assert absent_relation(refused(api_name="External_Contact_ID"), "External_Deal_ID") is None
    assert absent_relation(refused(api_name="External_Deal_ID"), None) is None


DELINK = Target(operation=Operation.DELETE_RELATED, module="Deals", related_list="Contacts", related_module="Contacts")


def _payload(target: Target, parent: str | None = None) -> Payload:
    items = tuple(
        PayloadItem(key=k, fields={}, changes=(Change(stream="s", seq=n, target=target, key=k, parent=parent),))
        for n, k in enumerate(["1", "2"])
    )
    return Payload(target=target, parent=parent, items=items)


@pytest.mark.parametrize(
    ("status", "details", "target", "split"),
    [
        (400, {}, Target(operation=Operation.UPDATE, module="Leads"), True),
        (400, {"expected_data_type": "jsonobject"}, Target(operation=Operation.UPDATE, module="Leads"), True),
        (400, {"api_name": "Email"}, DELINK, True),
        (400, {"resource_path_index": 1}, DELINK, False),
        (400, {"param_name": "ids"}, DELINK, False),
        (400, {"api_name": "data"}, Target(operation=Operation.UPDATE, module="Leads"), False),
        (404, {}, DELINK, True),
        (404, {"id": "P"}, DELINK, False),
        (404, {}, Target(operation=Operation.UPDATE, module="Leads"), False),
        (403, {}, DELINK, False),
    ],
    ids=[
        "400-bare",
        "400-body",
        "400-related",
        "400-url",
        "400-param",
        "400-data",
        "404-delink",
        "404-delink-names-parent",
        "404-update",
        "403",
    ],
)
def test_splittable_only_when_a_record_can_be_the_cause(
    status: int, details: dict[str, object], target: Target, split: bool
) -> None:
    """Split a refused call only when one of its records can be why: never for the URL, a header, a parameter."""
    body = {"code": "INVALID_DATA", "details": details, "message": "The record does not exist", "status": "error"}
    verdict = interpret(response(status, body), 2, related=target.is_related)
    assert isinstance(verdict, Refused)
    assert splittable(_payload(target, "P" if target.is_related else None), verdict) is split
