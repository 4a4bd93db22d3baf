"""HTTP response -> what happened to each record, per the response table of DESIGN §3.

Update and upsert answers are in input order (Zoho's OAS says so; ``json_path`` cross-checks it). For
related and delink answers Zoho promises no order, so ``interpret`` leaves their entries as the CRM sent them
(``Records.ordered`` False) and ``match_related`` pairs them with the call's records by what each entry names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

import orjson

from syncengine.crm.transport import HttpResponse
from syncengine.model import JSON, Change, Operation, Payload, PayloadItem

__all__ = [
    "Action",
    "HALT_CODES",
    "RecordResult",
    "Records",
    "Refused",
    "TRANSIENT_RECORD_CODES",
    "UNKNOWN_RESULT",
    "Verdict",
    "absent_relation",
    "bad_key_result",
    "interpret",
    "match_related",
    "per_record",
    "relation_not_found",
    "removed_earlier",
    "splittable",
    "unknown_external_value",
]

# Request-level codes that say the stream's config is wrong: no retry and no other payload can succeed.
# So is AUTHORIZATION_FAILED as a request-level 400 ("User does not have sufficient privilege to update
# records": the user's profile may not write there); inside data[], or as a 403, it is one record's.
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

# Per-record codes that are the CRM's momentary trouble, not the record's fault. RECORD_LOCKED only while the
# lock is one that clears by itself (``zia_vision_processing``, or no action named): a ``record_locking`` lock is
# a user's or a locking rule's and stays until someone unlocks the record, so that record is refused.
TRANSIENT_RECORD_CODES = frozenset(
    {"RECORD_LOCKED", "DEPENDENT_SERVICE_ERROR", "INTERNAL_ERROR", "TOO_MANY_REQUESTS", "PROCESSING_ERROR"}
)
_PERSISTENT_LOCK = "record_locking"

# The code of a record that a related or delink answer names no entry for (or names twice, differently):
# what the CRM did with it is unknown, so it is sent again (transient), never reported as its neighbours were.
UNKNOWN_RESULT = "UNKNOWN_RESULT"

_JSON_PATH_INDEX = re.compile(r"^\$\.data\[(\d+)\]")
_TITLE = re.compile(r"<title>([^<]{1,120})</title>", re.IGNORECASE)


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
    relation_absent: bool = False  # a delink's "relation not found", however Zoho worded it


@dataclass(frozen=True, slots=True, kw_only=True)
class Records:
    """A per-record answer (200, 207, or 400/412 with data[]).

    ``ordered``: one result per record, in input order. Not ordered: a related or delink answer's entries as
    the CRM sent them, any number of them, for ``match_related`` to pair with the records.
    """

    http_status: int
    results: tuple[RecordResult, ...]
    ordered: bool = True


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
    return result.relation_absent or (result.code == "INVALID_DATA" and "relation not found" in result.message.lower())


def absent_relation(verdict: Refused, related_field: str | None) -> RecordResult | None:
    """A single-form delink by external value refused as a whole for its related key: that record's answer.

    Zoho documents a whole-call 400 INVALID_DATA naming the external field for a wrong external value of the
    related (or base) record; what it answers for a relation already removed is not documented, so the answer
    may be this one. It is read as the per-record "relation not found" is: the record's own answer, which an
    earlier try that may have been applied turns into SUCCESS (the worker's ambiguity rule). ``related_field``
    is the related module's external field; an answer naming the parent (``resource_path_index`` 1) is not it.
    """
    details = verdict.details
    if (
        related_field is None
        or verdict.http_status != 400
        or verdict.code != "INVALID_DATA"
        or details.get("api_name") != related_field
        or details.get("resource_path_index") == 1
    ):
        return None
    return RecordResult(
        success=False,
        transient=False,
        code=verdict.code,
        message=verdict.message,
        details=verdict.details,
        crm_id=None,
        relation_absent=True,
    )


def unknown_external_value(field: str) -> RecordResult:
    """What Zoho answers a record whose external value no record holds (the lookup found none)."""
    message = "The value of the external field is invalid."
    return RecordResult(
        success=False, transient=False, code="INVALID_DATA", message=message, details={"api_name": field}, crm_id=None
    )


def bad_key_result(code: str, message: str, key: str) -> RecordResult:
    """A record whose key, percent-encoded in the URL, Zoho could not route: that record is refused, BAD_KEY."""
    text = f"{code}: {message} (the URL carries the key {key!r})"
    return RecordResult(success=False, transient=False, code="BAD_KEY", message=text, details={}, crm_id=None)


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
    persistent = code == "RECORD_LOCKED" and details.get("action") == _PERSISTENT_LOCK
    message = _text(entry.get("message"))
    return RecordResult(
        success=success,
        transient=not success and code in TRANSIENT_RECORD_CODES and not persistent,
        code=code,
        message=message,
        details=details,
        crm_id=str(crm_id) if crm_id is not None else None,
        relation_absent=code == "INVALID_DATA" and "relation not found" in message.lower(),
    )


def _index(result: RecordResult, count: int) -> int | None:
    path = result.details.get("json_path")
    match = _JSON_PATH_INDEX.match(path) if isinstance(path, str) else None
    return int(match.group(1)) if match and int(match.group(1)) < count else None


def _named(result: RecordResult, index: Mapping[str, int], count: int, match_field: str | None) -> int | None:
    """The record an entry names: by ``json_path``, by the external value, or by ``details.id``."""
    at = _index(result, count)
    if at is not None:
        return at
    for name in (match_field, "id"):
        value = result.details.get(name) if name else None
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value) in index:
            return index[str(value)]
    return None


def _unknown(entries: int, records: int) -> RecordResult:
    return RecordResult(
        success=False,
        transient=True,
        code=UNKNOWN_RESULT,
        message=f"Zoho's answer ({entries} entries for {records} records) has no entry that names this record",
        details={},
        crm_id=None,
    )


def match_related(verdict: Records, keys: Sequence[str], match_field: str | None) -> Records:
    """A related or delink answer's entries paired with the call's records (``keys``, in input order).

    An entry names its record by ``json_path``, by the related external field (``match_field``) or by
    ``details.id``; position means nothing. Entries that name none of the records (a delink by external value
    names the record's CRM id on success) are given to the records left without one only when that is
    certain: as many entries left as records, no record named twice, none naming another record, and every
    entry left says the same, so each of those records got that answer whichever entry is its own (with no
    CRM id if several: which is whose is not known). Any other record gets UNKNOWN_RESULT, never a
    neighbour's answer.
    """
    count = len(keys)
    index = {key: i for i, key in enumerate(keys)}
    slots: list[RecordResult | None] = [None] * count
    twice: set[int] = set()
    left: list[RecordResult] = []
    for result in verdict.results:
        at = _named(result, index, count, match_field)
        if at is None:
            left.append(result)
        elif slots[at] is None:
            slots[at] = result
        else:
            twice.add(at)
    unknown = _unknown(len(verdict.results), count)
    open_ = [at for at, slot in enumerate(slots) if slot is None]
    sure = not twice and len(left) == len(open_) and len({_gist(r) for r in left}) == 1
    sure = sure and all(_could_be_any(r, match_field) for r in left)
    for at in open_ if sure else ():
        first = left[0]
        slots[at] = first if len(open_) == 1 else replace(first, details={}, crm_id=None)
    results = tuple(unknown if slot is None or at in twice else slot for at, slot in enumerate(slots))
    return Records(http_status=verdict.http_status, results=results)


def _could_be_any(result: RecordResult, match_field: str | None) -> bool:
    """An entry that names none of the records but may still be any one's: by external value, it may name the
    record's CRM id; by record id, it must name no id at all (another id contradicts every record)."""
    details = result.details
    if "json_path" in details:
        return False  # it names an input position, and not one of this call's
    return match_field not in details if match_field is not None else "id" not in details


def _gist(result: RecordResult) -> tuple[bool, bool, str, str]:
    return (result.success, result.transient, result.code, result.message)


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
        if related:  # no order promised: match_related pairs them with the records
            return Records(http_status=status, results=tuple(_record(e) for e in data), ordered=False)
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
    action = _action(status, code, message, related)
    if body is None and response.body and action is Action.REJECT:
        # Zoho's API answers in JSON; a page (HTML from a proxy or load balancer) is the front end's, and says
        # nothing about the records: it is tried again like a 5xx, never blamed on a record.
        return Refused(http_status=status, action=Action.RETRY, code=code, message=_page(message), details={})
    if action is Action.REJECT and _names_config(details):
        action = Action.HALT
    return Refused(http_status=status, action=action, code=code, message=message, details=details)


def _page(text: str) -> str:
    title = _TITLE.search(text)
    return "a non-JSON answer from the CRM's front end" + (f": {title.group(1).strip()}" if title else "")


def _names_config(details: Mapping[str, JSON]) -> bool:
    """A refusal that points at what the stream's config sets for every call: the X-EXTERNAL header (its match
    fields), or a body key beside ``data`` (``duplicate_check_fields``, ``trigger``)."""
    path = details.get("json_path")
    outside_data = isinstance(path, str) and path.startswith("$.") and not path.startswith("$.data")
    return "header_name" in details or outside_data


def _action(status: int, code: str, message: str, related: bool) -> Action:
    if status == 429 or code == "TOO_MANY_REQUESTS":
        return Action.THROTTLE
    if status >= 500:
        return Action.RETRY
    if status == 401 and code in ("INVALID_TOKEN", "AUTHENTICATION_FAILURE", "INVALID_OAUTHTOKEN"):
        return Action.REFRESH
    if code in HALT_CODES or (code == "AUTHORIZATION_FAILED" and status == 400):
        return Action.HALT
    if related and code == "INVALID_DATA" and "relation name" in message.lower():
        return Action.HALT  # a related list that does not exist: every call of the stream would fail
    if status in (400, 403, 404, 412, 413, 415):
        return Action.REJECT
    if status in (200, 201, 202, 204, 207):
        return Action.UNEXPECTED  # success status without per-record data: we cannot say what happened
    return Action.UNEXPECTED


def per_record(payload: Payload, verdict: Verdict) -> Records | None:
    """The per-record answer to ``payload``'s call, one result per record in input order; None when the call
    was refused as a whole.

    A related or delink answer is matched to the records by what its entries name (``match_related``). A
    single-form delink by external value refused for its related key is that record's answer (``absent_relation``).
    """
    target = payload.target
    if isinstance(verdict, Refused):
        single = target.operation is Operation.DELETE_RELATED and len(payload.items) == 1
        absent = absent_relation(verdict, target.match_field) if single and verdict.action is Action.REJECT else None
        return Records(http_status=verdict.http_status, results=(absent,)) if absent is not None else None
    if verdict.ordered:
        return verdict
    return match_related(verdict, [item.key for item in payload.items], target.match_field)


def splittable(payload: Payload, verdict: Refused) -> bool:
    """A whole-call refusal that one record may have caused, so splitting the call can isolate it: a 400 that
    points at nothing but the body, or a delink's 404 "The record does not exist" (a related record deleted)
    that does not name the parent. Not when Zoho points at the URL (``resource_path_index``), a header, a
    parameter or ``data`` itself: no record causes those, and splitting would only multiply the calls.
    """
    if verdict.action is not Action.REJECT:
        return False
    details = verdict.details
    if {"resource_path_index", "header_name", "param_name"} & details.keys() or details.get("api_name") == "data":
        return False
    if verdict.http_status == 400:
        return True
    named = details.get("id")
    return (
        verdict.http_status == 404
        and payload.target.operation is Operation.DELETE_RELATED
        and (named is None or str(named) != payload.parent)
    )


def removed_earlier(
    payload: Payload,
    pending: Sequence[PayloadItem],
    verdict: Records,
    *,
    ambiguous: bool,
    earlier: Callable[[Change], frozenset[int]] | None,
) -> set[int]:
    """The delinks answered "relation not found" that an earlier try may really have removed (``id(item)``).

    An earlier try counts only if it may have reached the CRM (this call retried after a drop or a 5xx, or a
    journaled call of a killed process carried the change) and nothing shows it was not applied: when the
    answer removed a relation that an earlier call carried too, that call removed nothing (Zoho applies a
    call whole), so a "not found" beside it is the CRM's real answer unless another earlier call carried it.
    """
    if payload.target.operation is not Operation.DELETE_RELATED or not (ambiguous or earlier is not None):
        return set()
    results = list(zip(pending, verdict.results, strict=True))
    removed_now = [item for item, record in results if record.success]
    # Retries of this call carried exactly these records: one removed now means none was removed before.
    this_call = ambiguous and not removed_now
    calls = {id(item): earlier(item.changes[0]) for item, _ in results} if earlier is not None else {}
    disproved = frozenset().union(*(calls.get(id(item), frozenset()) for item in removed_now))
    return {
        id(item)
        for item, record in results
        if relation_not_found(record) and (this_call or bool(calls.get(id(item), frozenset()) - disproved))
    }
