"""Request bodies and keys: the ``data`` array of a write, the ``ids`` of a delink, the keys a call touches.

The request-level errors here are answered before any work and cost nothing. More than 100
records is LIMIT_EXCEEDED: a top-level envelope, or (``limit_exceeded_in_data``, strict) wrapped in
``data[]`` with one entry, as Zoho's OAS example for update records shows (audit row 13).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import orjson

from syncengine.model import JSON
from syncengine.sandbox.envelopes import Reply, entry_error, request_error
from syncengine.sandbox.routing import Route

__all__ = ["MAX_RECORDS", "data_of", "ids_of", "parse_body", "touched"]

MAX_RECORDS = 100  # records per write call, ids per delink


def parse_body(raw: bytes) -> tuple[Any, Reply | None]:
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return None, request_error(
            400,
            "INVALID_DATA",
            "the body given is not valid JSON",
            {"api_name": "body", "expected_data_type": "jsonobject"},
        )


def data_of(body: Any, kind: str, *, wrap_limit: bool = False) -> tuple[list[Any], Reply | None]:
    """The ``data`` array of a write body, or the request-level error."""
    if not isinstance(body, dict) or "data" not in body or body["data"] is None:
        return [], request_error(400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": "data"})
    data = body["data"]
    if not isinstance(data, list):
        return [], request_error(
            400, "INVALID_DATA", "invalid data", {"api_name": "data", "expected_data_type": "jsonarray"}
        )
    if not data:
        return [], request_error(400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": "data"})
    if len(data) > MAX_RECORDS and kind in ("update", "upsert", "insert", "update_related"):
        details: dict[str, JSON] = {"api_name": "data", "maximum_length": MAX_RECORDS}
        if wrap_limit:  # the OAS example: one entry in data[]
            entry = entry_error("LIMIT_EXCEEDED", "count of records in your request exceeds the limit", details)
            return [], Reply(status=400, body={"data": [entry]})
        return [], request_error(
            400, "LIMIT_EXCEEDED", "the count of records in your request exceeds the limit", details
        )
    return data, None


def ids_of(query: Any) -> tuple[list[str], Reply | None]:
    raw = query.get("ids")
    ids = [i.strip() for i in raw.split(",") if i.strip()] if raw else []
    if not ids:
        return [], request_error(400, "MANDATORY_NOT_FOUND", "required param not found", {"param_name": "ids"})
    if len(ids) > MAX_RECORDS:
        return [], request_error(
            400,
            "LIMIT_EXCEEDED",
            "Limit Exceeded, You cannot give more than 100 record ids",
            {"limit": str(MAX_RECORDS), "param_name": "ids"},
        )
    return ids, None


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def touched(r: Route, data: Sequence[Any], ids: Sequence[str]) -> set[Hashable]:
    """The record keys a write touches, as addressed: (module, key) or (module, parent, list, key)."""
    spec = r.module
    if spec is None:
        return set()
    module = spec.api_name
    if r.kind in ("update_one",):
        return {(module, r.key)}
    if r.kind == "update":
        name = r.ext_field or "id"
        return {(module, _key_text(d.get(name, d.get("id")))) for d in data if isinstance(d, dict)}
    if r.kind == "upsert":
        names = [n for n in (r.ext_field, *spec.duplicate_check_fields) if n]
        keys: set[Hashable] = set()
        for d in data:
            if isinstance(d, dict):
                hit = next((n for n in names if d.get(n) not in (None, "")), None)
                keys.add((module, hit, _key_text(d.get(hit))) if hit else (module, "insert", id(d)))
        return keys
    rl = r.related_list.api_name if r.related_list is not None else ""
    if r.related_key is not None:
        return {(module, r.key, rl, r.related_key)}
    if r.kind == "update_related":
        name = r.related_field or "id"
        return {(module, r.key, rl, _key_text(d.get(name))) for d in data if isinstance(d, dict)}
    if r.kind == "delete_related":
        return {(module, r.key, rl, i) for i in ids}
    return set()
