"""Payload -> HTTP call, per the operation table of DESIGN §3 and zoho-api.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import orjson

from syncengine.model import JSON, Operation, Payload, PayloadItem, Target

__all__ = [
    "Call",
    "build_call",
    "build_single_update",
    "escaped_path_keys",
    "is_complex",
    "max_items",
    "single_form_only",
    "write_credits",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One HTTP request, ready to send (minus the Authorization header)."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


def _seg(value: str) -> str:
    # External values are free text: a "/", "?", "#", "%" or space in one must not change the path.
    return quote(value, safe="")


def max_items(target: Target, batch_size: int = 100) -> int:
    """Records per call: 100 for every operation (delinks by external ID in the multi form, ``?ids=``)."""
    return max(1, min(batch_size, 100))


def _external_delink(target: Target) -> bool:
    return target.operation is Operation.DELETE_RELATED and bool(target.match_field or target.parent_match_field)


def single_form_only(target: Target, key: str) -> bool:
    """A delink key that cannot ride in ``?ids=``: an external value with a comma (Zoho splits the list on it)."""
    return target.operation is Operation.DELETE_RELATED and target.match_field is not None and "," in key


def escaped_path_keys(payload: Payload) -> tuple[str, ...]:
    """The record keys the payload's call puts in its URL path that percent-encoding changed.

    A related call carries the parent's key in its path, a single-form delink the related key too. If Zoho
    refuses the URL of a call carrying such a key, the key is the likely culprit, not the stream's config.
    """
    keys: list[str] = []
    if payload.target.is_related and payload.parent is not None:
        keys.append(payload.parent)
    if _external_delink(payload.target) and len(payload.items) == 1:
        keys.append(payload.items[0].key)
    return tuple(key for key in keys if _seg(key) != key)


def is_complex(target: Target, records: int) -> bool:
    """Zoho's sub-concurrency class: bulk calls carrying more than 10 records.

    Zoho names insert/update/upsert; whether related-record calls count is unconfirmed, so they count
    too: the cost is a little less parallelism for big related batches, the gain is never a 429.
    """
    return records > 10


def write_credits(target: Target, records: int) -> int:
    """Credits a call costs: writes cost 1 per 10 records (at least 1), other calls 1.

    What related-record updates cost is not documented: they are charged as writes, so a budget is never
    exceeded whatever Zoho charges.
    """
    if target.operation in (Operation.UPDATE, Operation.UPSERT, Operation.UPDATE_RELATED):
        return max(1, -(-records // 10))
    return 1


def _external_header(target: Target) -> tuple[tuple[str, str], ...]:
    parts: list[str] = []
    if target.operation is Operation.UPSERT:
        # Upsert matches on duplicate_check_fields; X-EXTERNAL would require the field to be external.
        return ()
    if target.is_related:
        if target.parent_match_field:
            parts.append(f"{target.module}.{target.parent_match_field}")
        if target.match_field:
            parts.append(f"{target.related_module or target.related_list}.{target.match_field}")
    elif target.match_field:
        parts.append(f"{target.module}.{target.match_field}")
    return (("X-EXTERNAL", ",".join(parts)),) if parts else ()


def _record(target: Target, item: PayloadItem) -> dict[str, JSON]:
    record: dict[str, JSON] = dict(item.fields)
    # The key always wins over a mapped field of the same name: it is what addresses the record.
    if target.match_field:
        record[target.match_field] = item.key
    else:
        record["id"] = item.key
    return record


def _body(payload: Payload, trigger: Sequence[str] | None) -> bytes:
    body: dict[str, JSON] = {"data": [_record(payload.target, item) for item in payload.items]}
    target = payload.target
    if target.operation is Operation.UPSERT:
        fields = target.duplicate_check_fields or ((target.match_field,) if target.match_field else ())
        if fields:
            body["duplicate_check_fields"] = list(fields)
    if trigger is not None and target.operation in (Operation.UPDATE, Operation.UPSERT):
        body["trigger"] = list(trigger)
    return orjson.dumps(body)


def build_call(payload: Payload, api_base: str, *, trigger: Sequence[str] | None = None) -> Call:
    """The HTTP call for a payload. ``api_base`` is e.g. https://www.zohoapis.com/crm/v7."""
    target = payload.target
    headers = (("Content-Type", "application/json"), *_external_header(target))
    module = f"{api_base}/{_seg(target.module)}"
    if target.operation is Operation.UPDATE:
        return Call(method="PUT", url=module, headers=headers, body=_body(payload, trigger))
    if target.operation is Operation.UPSERT:
        return Call(method="POST", url=f"{module}/upsert", headers=headers, body=_body(payload, trigger))
    assert payload.parent is not None, "related payloads always carry a parent"
    related = f"{module}/{_seg(payload.parent)}/{_seg(target.related_list or '')}"
    if target.operation is Operation.UPDATE_RELATED:
        return Call(method="PUT", url=related, headers=headers, body=_body(payload, trigger))
    # DELETE_RELATED: up to 100 keys in ``?ids=`` (record ids, or external values with both fields in
    # X-EXTERNAL, as Zoho's SDK sample does). One key by external value goes in the documented single form.
    no_body = _external_header(target)
    if len(payload.items) == 1 and _external_delink(target):
        return Call(method="DELETE", url=f"{related}/{_seg(payload.items[0].key)}", headers=no_body)
    assert not any(single_form_only(target, item.key) for item in payload.items), "a comma key goes alone"
    ids = ",".join(item.key for item in payload.items)
    return Call(method="DELETE", url=related, headers=no_body, params=(("ids", ids),))


def build_single_update(payload: Payload, api_base: str, *, trigger: Sequence[str] | None = None) -> Call:
    """Zoho's documented update by external value: ``PUT /{Module}/{ext}`` with ``X-EXTERNAL``, one record."""
    target = payload.target
    assert target.operation is Operation.UPDATE and target.match_field and len(payload.items) == 1
    item = payload.items[0]
    body: dict[str, JSON] = {"data": [dict(item.fields)]}
    if trigger is not None:
        body["trigger"] = list(trigger)
    return Call(
        method="PUT",
        url=f"{api_base}/{_seg(target.module)}/{_seg(item.key)}",
        headers=(("Content-Type", "application/json"), *_external_header(target)),
        body=orjson.dumps(body),
    )
