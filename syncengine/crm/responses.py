"""HTTP response -> what happened to each record, per the response table of DESIGN §3."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import orjson

from syncengine.crm.transport import HttpResponse
from syncengine.model import JSON

__all__ = [
    "Action",
    "HALT_CODES",
    "RecordResult",
    "Records",
    "Refused",
    "TRANSIENT_RECORD_CODES",
    "Verdict",
    "interpret",
    "relation_not_found",
]

# Request-level codes that say the stream's config is wrong: no retry and no other payload can succeed.
# (AUTHORIZATION_FAILED is not one: Zoho uses it for one record the user may not touch.)
HALT_CODES = frozenset(
    {
        "INVALID_MODULE",
        "INVALID_URL_PATTERN",
        "OAUTH_SCOPE_MISMATCH",
        "NO_PERMISSION",
        "NOT_SUPPORTED",
        "INVALID_REQUEST_METHOD",
        "INVALID_HOST",
        "FEATURE_NOT_SUPPORTED",
    }
)

# Per-record codes that are the CRM's momentary trouble, not the record's fault.
TRANSIENT_RECORD_CODES = frozenset(
    {"RECORD_LOCKED", "DEPENDENT_SERVICE_ERROR", "INTERNAL_ERROR", "TOO_MANY_REQUESTS", "PROCESSING_ERROR"}
)

_JSON_PATH_INDEX = re.compile(r"^\$\.data\[(\d+)\]")


class Action(Enum):
    """What to do about a call the CRM refused as a whole."""

    HALT = "halt"  # the config is wrong: stop the stream
    REJECT = "reject"  # the records are refused (bisect first when several share the blame)
    RETRY = "retry"  # 5xx: transient
    THROTTLE = "throttle"  # 429: back off, lower the concurrency
    REFRESH = "refresh"  # 401 INVALID_TOKEN: refresh the token and resend
    UNEXPECTED = "unexpected"  # an answer Zoho does not document: fail the records, retryable later


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordResult:
    """The CRM's word on one record of a call."""

    success: bool
    transient: bool
    code: str
    message: str
    details: Mapping[str, JSON]
    crm_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Records:
    """A per-record answer (200, 207, or 400/412 with data[]), one result per item in input order."""

    http_status: int
    results: tuple[RecordResult, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The call as a whole was not applied."""

    http_status: int
    action: Action
    code: str
    message: str
    details: Mapping[str, JSON]


Verdict = Records | Refused


def relation_not_found(result: RecordResult) -> bool:
    """Zoho's answer to a delink of a relation that is not there (so a retried delink already worked)."""
    return result.code == "INVALID_DATA" and "relation not found" in result.message.lower()


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _details(value: object) -> dict[str, JSON]:
    return value if isinstance(value, dict) else {}


def _record(entry: object) -> RecordResult:
    if isinstance(entry, dict) and entry.get("code") == "SUCCESS":
        # The hot path: most records succeed.
        details = entry.get("details")
        if isinstance(details, dict):
            crm_id = details.get("id")
            message = entry.get("message")
            return RecordResult(
                success=True,
                transient=False,
                code="SUCCESS",
                message=message if isinstance(message, str) else "",
                details=details,
                crm_id=None if crm_id is None else str(crm_id),
            )
    if not isinstance(entry, dict):
        return RecordResult(
            success=False,
            transient=True,
            code="UNEXPECTED_RESPONSE",
            message=f"record entry is not an object: {entry!r:.200}",
            details={},
            crm_id=None,
        )
    code = _text(entry.get("code"), "UNKNOWN")
    details = _details(entry.get("details"))
    success = code == "SUCCESS"
    crm_id = details.get("id") if success else None
    return RecordResult(
        success=success,
        transient=not success and code in TRANSIENT_RECORD_CODES,
        code=code,
        message=_text(entry.get("message")),
        details=details,
        crm_id=str(crm_id) if crm_id is not None else None,
    )


def _align(entries: list[object], count: int) -> list[object] | None:
    """Entries in input order. Position is the contract; json_path, where present, must agree with it."""
    if len(entries) == count:
        for position, entry in enumerate(entries):
            path = _details(entry.get("details") if isinstance(entry, dict) else None).get("json_path")
            match = _JSON_PATH_INDEX.match(path) if isinstance(path, str) else None
            if match and int(match.group(1)) != position:
                return _by_json_path(entries, count)
        return entries
    return _by_json_path(entries, count)


def _by_json_path(entries: list[object], count: int) -> list[object] | None:
    slots: list[object | None] = [None] * count
    for entry in entries:
        path = _details(entry.get("details") if isinstance(entry, dict) else None).get("json_path")
        match = _JSON_PATH_INDEX.match(path) if isinstance(path, str) else None
        if match is None or int(match.group(1)) >= count or slots[int(match.group(1))] is not None:
            return None
        slots[int(match.group(1))] = entry
    return list(slots) if all(s is not None for s in slots) else None


def interpret(response: HttpResponse, count: int, *, related: bool = False) -> Verdict:
    """Turn one response to a call carrying ``count`` records into a verdict."""
    status = response.status
    try:
        body = orjson.loads(response.body) if response.body else None
    except orjson.JSONDecodeError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list) and status in (200, 201, 207, 400, 412):
        aligned = _align(data, count)
        if aligned is not None:
            return Records(http_status=status, results=tuple(_record(e) for e in aligned))
        return Refused(
            http_status=status,
            action=Action.UNEXPECTED,
            code="UNEXPECTED_RESPONSE",
            message=f"{len(data)} results for {count} records, and json_path cannot align them",
            details={},
        )
    envelope = body if isinstance(body, dict) else {}
    code = _text(envelope.get("code"), f"HTTP_{status}")
    message = _text(envelope.get("message"), response.body[:200].decode("utf-8", "replace"))
    details = _details(envelope.get("details"))
    return Refused(
        http_status=status, action=_action(status, code, message, related), code=code, message=message, details=details
    )


def _action(status: int, code: str, message: str, related: bool) -> Action:
    if status == 429 or code == "TOO_MANY_REQUESTS":
        return Action.THROTTLE
    if status >= 500:
        return Action.RETRY
    if status == 401 and code in ("INVALID_TOKEN", "AUTHENTICATION_FAILURE", "INVALID_OAUTHTOKEN"):
        return Action.REFRESH
    if code in HALT_CODES:
        return Action.HALT
    if related and code == "INVALID_DATA" and "relation name" in message.lower():
        return Action.HALT  # a related list that does not exist: every call of the stream would fail
    if status in (400, 403, 404, 412, 413, 415):
        return Action.REJECT
    if status in (200, 201, 202, 204, 207):
        return Action.UNEXPECTED  # success status without per-record data: we cannot say what happened
    return Action.UNEXPECTED
