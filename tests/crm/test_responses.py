"""Response -> verdict: the response table of DESIGN §3, on Zoho's documented bodies."""

from __future__ import annotations

import orjson
import pytest

from syncengine.crm.responses import Action, Records, Refused, interpret
from syncengine.crm.transport import HttpResponse


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
        (400, "AUTHORIZATION_FAILED", Action.REJECT),
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


def test_response_repr_never_shows_the_body() -> None:
    """A token endpoint's body holds an access token: it must not reach a repr or a log line."""
    assert "1000.secret" not in repr(HttpResponse(status=200, body=b'{"access_token": "1000.secret"}'))
