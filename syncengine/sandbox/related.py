"""Related-record calls: link or edit a link, delink, and read a related list.

Addressing (zoho-api.md §3): the parent comes from the URL, as a record id or, when X-EXTERNAL
names the parent module's field, as an external value. A related record comes from ``data[i].id``
or, when X-EXTERNAL names the related module's field, from that field in the body. Related keys in
the URL (single forms, ``?ids=``) are taken as that external field when the header names it, else
as a record id, falling back to the related module's external field (the delete-by-external doc
sample names only the parent's field).

A missing parent is a request-level error: 404 ``INVALID_DATA`` "The record does not exist" when
addressed by id (§3.1), 400 ``INVALID_DATA`` naming the field when addressed by external value (§3.2).

A missing related record in a ``?ids=`` delink is a per-id "relation not found" entry, or with
``delink_missing_404`` (strict) the OAS's "Parent or related record not found": 404 ``{"code":
"INVALID_DATA", "message": "The record does not exist", "details": {}}`` for the whole call, with
no ``data[]`` and no relation removed (audit row 5). Every entry of an update-related or delink
answer carries ``details.id`` (or a ``json_path``), so a client can match entries to its records
when ``shuffle_related`` (strict) answers them out of order (row 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncengine.model import JSON
from syncengine.sandbox.envelopes import Reply, data_reply, entry_error, entry_success, request_error
from syncengine.sandbox.records import norm_id
from syncengine.sandbox.schema import BadValue, ModuleSpec, RelatedList, check_value
from syncengine.sandbox.state import SandboxState

__all__ = ["LIMIT", "Related", "delink", "get_related", "resolve_parent", "update_related"]

LIMIT = 100  # records per related call and ids per delink


@dataclass(frozen=True, slots=True, kw_only=True)
class Related:
    """A resolved related-list call: parent record, list, and how related records are addressed."""

    spec: ModuleSpec
    parent_id: str
    rl: RelatedList
    related_field: str | None  # external field of the related module named by X-EXTERNAL, if any


def resolve_parent(state: SandboxState, spec: ModuleSpec, key: str, parent_field: str | None) -> str | Reply:
    """The parent's record id, or the request-level error for a missing parent."""
    if parent_field is not None:
        rid = state.find_id(spec.api_name, parent_field, key)
        if rid is None:
            return request_error(
                400,
                "INVALID_DATA",
                "You have specified an invalid external ID for the base module.",
                {"api_name": parent_field, "resource_path_index": 1},
            )
        return rid
    if key in state.records[spec.api_name]:
        return key
    return request_error(404, "INVALID_DATA", "The record does not exist", {"id": key})


def _find_related(state: SandboxState, call: Related, key: str) -> str | None:
    module = call.rl.related_module
    if call.related_field is not None:
        return state.find_id(module, call.related_field, key)
    if key in state.records[module]:
        return key
    for name in state.schema.by_name[module].external_fields:
        rid = state.find_id(module, name, key)
        if rid is not None:
            return rid
    return None


def _relation_fields(
    call: Related, item: dict[str, Any], i: int, skip: str | None
) -> tuple[dict[str, JSON], dict[str, JSON] | None]:
    fields: dict[str, JSON] = {}
    for name, value in item.items():
        fspec = call.rl.fields.get(name)
        if fspec is None or name == skip:
            continue  # ids, external keys and unknown names are not relation fields
        if value is None or value == "":
            fields[name] = None
            continue
        try:
            fields[name] = check_value(fspec, value)
        except BadValue as bad:
            details: dict[str, JSON] = {"api_name": name, "json_path": f"$.data[{i}].{name}", **bad.details}
            return {}, entry_error("INVALID_DATA", "invalid data", details)
    return fields, None


def _link(state: SandboxState, call: Related, related_id: str, fields: dict[str, JSON], ext: JSON) -> dict[str, JSON]:
    added = state.link(call.spec.api_name, call.parent_id, call.rl, related_id, fields)
    details: dict[str, JSON] = {"id": related_id}
    if call.related_field is not None:
        details[call.related_field] = ext
    return entry_success("relation added" if added else "relation updated", details)


def update_related(state: SandboxState, call: Related, data: Sequence[Any], single_key: str | None) -> Reply:
    """``PUT /{Module}/{parent}/{RelatedList}`` (bulk) or ``.../{related}`` (``single_key``)."""
    module = call.rl.related_module
    field = call.related_field
    if single_key is not None:
        rid = _find_related(state, call, single_key)
        if rid is None:
            return data_reply(
                [entry_error("INVALID_DATA", "the related id given seems to be invalid", {"id": single_key})]
            )
        item = data[0] if isinstance(data[0], dict) else {}
        fields, error = _relation_fields(call, item, 0, field)
        return data_reply([error or _link(state, call, rid, fields, single_key)])
    entries: list[dict[str, JSON]] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            entries.append(entry_error("INVALID_DATA", "invalid data", {"json_path": f"$.data[{i}]"}))
            continue
        if field is not None:
            value = item.get(field)
            if value is None or value == "":
                entries.append(
                    entry_error(
                        "MANDATORY_NOT_FOUND",
                        "required field not found",
                        {"api_name": field, "json_path": f"$.data[{i}].{field}"},
                    )
                )
                continue
            rid = state.find_id(module, field, value)
            if rid is None:
                entries.append(
                    entry_error(
                        "INVALID_DATA",
                        "The ID of the external field is invalid.",
                        {"api_name": field, "json_path": f"$.data[{i}].{field}"},
                    )
                )
                continue
        else:
            value = item.get("id")
            if value is None:
                entries.append(
                    entry_error(
                        "MANDATORY_NOT_FOUND",
                        "required field not found",
                        {"api_name": "id", "json_path": f"$.data[{i}].id"},
                    )
                )
                continue
            rid = norm_id(value)
            if rid is None or rid not in state.records[module]:
                entries.append(
                    entry_error("INVALID_DATA", "the related id given seems to be invalid", {"id": str(value)})
                )
                continue
        fields, error = _relation_fields(call, item, i, field)
        entries.append(error or _link(state, call, rid, fields, value))
    return data_reply(entries)


def delink(state: SandboxState, call: Related, keys: Sequence[str], *, missing_404: bool = False) -> Reply:
    """``DELETE /{Module}/{parent}/{RelatedList}?ids=...`` or ``.../{related}``: one entry per key.

    A key that is not linked (or not a record at all) answers INVALID_DATA "relation not found",
    so delinking twice tells the second caller the relation was already gone. With ``missing_404``
    a key that is not a record fails the whole call first (404, nothing removed).
    """
    module = call.rl.related_module
    found = [_find_related(state, call, key) for key in keys]
    if missing_404 and None in found:
        return Reply(
            status=404,
            body={"code": "INVALID_DATA", "message": "The record does not exist", "status": "error", "details": {}},
        )
    entries: list[dict[str, JSON]] = []
    for key, rid in zip(keys, found, strict=True):
        if rid is None or not state.unlink(call.spec.api_name, call.parent_id, module, rid):
            entries.append(entry_error("INVALID_DATA", "relation not found", {"id": key}))
            continue
        entries.append(entry_success("relation removed", {"id": rid}))
    return data_reply(entries)


def get_related(state: SandboxState, call: Related) -> Reply:
    """``GET /{Module}/{parent}/{RelatedList}``: the linked records with the relation fields, or 204."""
    module = call.rl.related_module
    links = state.links.get((call.spec.api_name, call.parent_id), {}).get(module, {})
    if not links:
        return Reply(status=204, body=None)
    records = state.records[module]
    data: list[JSON] = [{**records[rid], **fields} for rid, fields in links.items() if rid in records]
    info: dict[str, JSON] = {"per_page": len(data), "count": len(data), "page": 1, "more_records": False}
    return Reply(status=200, body={"data": data, "info": info})
