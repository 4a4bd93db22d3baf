"""Record calls: update (bulk, single, by id or external value), upsert, insert, get.

Every function takes the already-parsed body and answers a ``Reply``; the server owns HTTP,
auth, limits and faults. Per-record validation order, first error wins: addressing (id or external
value), record lock, field values in input order (type, length, picklist, mandatory set to null),
missing mandatory fields (inserts only), unique values. Unknown field API names are ignored (the
default profile), or with ``reject_unknown_fields`` answered INVALID_DATA "the field api name given
seems to be invalid" for that record (the OAS's message; audit row 16). Keys starting with ``$``
(``$append_values``), ``id`` and the system fields are always ignored.

Locks: a ``Locker`` says, per record, whether it is locked and by what. A lock from
``locked_records`` or ``persistent_lock_rate`` is ``details.action = "record_locking"`` (a user's or
a locking rule's: it never clears); a random one from ``lock_rate`` is ``"zia_vision_processing"``
(transient: the next try may pass).

Bulk update by external value: with ``refuse_bulk_external`` the server passes no external field to
``update_records``, so every record must carry ``id`` (MANDATORY_NOT_FOUND ``api_name: "id"`` if it
does not) and the external field in the body is an ordinary value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from syncengine.model import JSON
from syncengine.sandbox.envelopes import Reply, data_reply, entry_error, entry_success, request_error
from syncengine.sandbox.schema import BadValue, FieldSpec, ModuleSpec, check_value
from syncengine.sandbox.state import SYSTEM_USER, SandboxState

__all__ = [
    "PERSISTENT",
    "TRANSIENT",
    "Locker",
    "Rules",
    "get_record",
    "insert_records",
    "list_records",
    "module_id",
    "norm_id",
    "update_one",
    "update_records",
    "upsert_records",
    "validate_fields",
]

PERSISTENT = "record_locking"  # a lock set by a user or a locking rule: it stays until unlocked
TRANSIENT = "zia_vision_processing"  # a lock while Zia processes the record: it clears by itself
# (module, record id) -> the lock's action, or None when the record is not locked.
Locker = Callable[[str, str], str | None]
_UNKNOWN_FIELD = "the field api name given seems to be invalid"
_ALWAYS_IGNORED = frozenset({"id", "Created_Time", "Modified_Time", "Created_By", "Modified_By"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """What one call's records are held to, besides the schema."""

    locked: Locker
    now: str
    reject_unknown: bool = False  # unknown field API names are INVALID_DATA, not ignored


def module_id(module: str) -> str:
    """A stable fake id for a module, used in metadata and DUPLICATE_DATA details."""
    return str(111111000000002000 + sum(ord(c) for c in module))


def norm_id(raw: object) -> str | None:
    """A record id as a string, from a JSON string or number; None when it cannot be an id."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, str) and raw.isdigit():
        return raw
    return None


def _path(i: int, name: str) -> str:
    return f"$.data[{i}].{name}"


def _invalid(i: int, name: str, extra: dict[str, JSON] | None = None) -> dict[str, JSON]:
    details: dict[str, JSON] = {"api_name": name, "json_path": _path(i, name)}
    if extra:
        details.update(extra)
    return entry_error("INVALID_DATA", "invalid data", details)


def _mandatory(i: int, name: str) -> dict[str, JSON]:
    return entry_error(
        "MANDATORY_NOT_FOUND", "required field not found", {"api_name": name, "json_path": _path(i, name)}
    )


def _locked(i: int, action: str) -> dict[str, JSON]:
    message = (
        "Sorry, you cannot perform this operation as the record is locked."  # the OAS example's
        if action == PERSISTENT
        else "the record is locked"
    )
    return entry_error("RECORD_LOCKED", message, {"api_name": "id", "json_path": _path(i, "id"), "action": action})


def _record_details(rec: dict[str, JSON]) -> dict[str, JSON]:
    return {
        "Modified_Time": rec["Modified_Time"],
        "Modified_By": rec["Modified_By"],
        "Created_Time": rec["Created_Time"],
        "id": rec["id"],
        "Created_By": rec["Created_By"],
    }


def validate_fields(
    state: SandboxState,
    spec: ModuleSpec,
    item: dict[str, Any],
    i: int,
    *,
    record_id: str | None,
    skip: str | None = None,
    reject_unknown: bool = False,
) -> tuple[dict[str, JSON], dict[str, JSON] | None]:
    """Check one input record: (fields to store, None) or ({}, the error entry).

    ``record_id`` None means an insert (mandatory fields must be present); ``skip`` is the field
    that addressed the record (its value is the key, not a change).
    """
    fields: dict[str, JSON] = {}
    by_name = spec.by_name
    for name, value in item.items():
        fspec = by_name.get(name)
        if fspec is None and reject_unknown and name not in _ALWAYS_IGNORED and not name.startswith("$"):
            return {}, entry_error("INVALID_DATA", _UNKNOWN_FIELD, {"api_name": name, "json_path": _path(i, name)})
        if fspec is None or name == skip:
            continue  # unknown field API names are ignored silently (the default profile)
        if value is None or value == "":
            if fspec.mandatory:
                return {}, _mandatory(i, name)
            fields[name] = None
            continue
        try:
            fields[name] = check_value(fspec, value, known_ids=state.ids)
        except BadValue as bad:
            return {}, _invalid(i, name, bad.details)
    if record_id is None:
        for fspec in spec.mandatory:
            if fields.get(fspec.api_name) is None:
                return {}, _mandatory(i, fspec.api_name)
    for name, value in fields.items():
        if value is None or name not in spec.indexed:
            continue
        fspec = by_name[name]
        if not (fspec.unique or fspec.external):
            continue
        holder = state.find_id(spec.api_name, name, value)
        if holder is not None and holder != record_id:
            return {}, _duplicate(spec, fspec, i, holder)
    return fields, None


def _duplicate(spec: ModuleSpec, fspec: FieldSpec, i: int, holder: str) -> dict[str, JSON]:
    return entry_error(
        "DUPLICATE_DATA",
        "duplicate data",
        {
            "api_name": fspec.api_name,
            "json_path": _path(i, fspec.api_name),
            "duplicate_record": {
                "id": holder,
                "Owner": dict(SYSTEM_USER),
                "module": {"api_name": spec.api_name, "id": module_id(spec.api_name)},
            },
            "more_records": False,
        },
    )


def _apply_update(
    state: SandboxState,
    spec: ModuleSpec,
    item: dict[str, Any],
    i: int,
    rid: str,
    rules: Rules,
    skip: str | None,
) -> dict[str, JSON]:
    action = rules.locked(spec.api_name, rid)
    if action is not None:
        return _locked(i, action)
    fields, error = validate_fields(state, spec, item, i, record_id=rid, skip=skip, reject_unknown=rules.reject_unknown)
    if error is not None:
        return error
    state.update(spec.api_name, rid, fields, now=rules.now)
    return entry_success("record updated", _record_details(state.records[spec.api_name][rid]))


def _resolve(
    state: SandboxState, spec: ModuleSpec, item: dict[str, Any], i: int, ext_field: str | None
) -> tuple[str | None, dict[str, JSON] | None]:
    """The id a bulk-update record addresses, or the error entry."""
    module = spec.api_name
    if ext_field is not None:
        raw = item.get(ext_field)
        if raw is not None and raw != "":
            rid = state.find_id(module, ext_field, raw)
            if rid is None:
                return None, entry_error(
                    "INVALID_DATA",
                    "The value of the external field is invalid.",
                    {"api_name": ext_field, "json_path": _path(i, ext_field)},
                )
            return rid, None
        if item.get("id") is None:
            return None, _mandatory(i, ext_field)
    raw = item.get("id")
    if raw is None:
        return None, _mandatory(i, "id")
    rid = norm_id(raw)
    if rid is None or rid not in state.records[module]:
        return None, entry_error(
            "INVALID_DATA",
            "the id given seems to be invalid",
            {"api_name": "id", "json_path": _path(i, "id")},
        )
    return rid, None


def update_records(
    state: SandboxState,
    spec: ModuleSpec,
    data: Sequence[Any],
    ext_field: str | None,
    rules: Rules,
) -> Reply:
    """``PUT /{Module}``: each record carries ``id`` (or, with X-EXTERNAL, the external field)."""
    entries: list[dict[str, JSON]] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            entries.append(entry_error("INVALID_DATA", "invalid data", {"json_path": f"$.data[{i}]"}))
            continue
        rid, error = _resolve(state, spec, item, i, ext_field)
        if error is not None or rid is None:
            entries.append(error or {})
            continue
        entries.append(_apply_update(state, spec, item, i, rid, rules, ext_field))
    return data_reply(entries)


def update_one(
    state: SandboxState,
    spec: ModuleSpec,
    key: str,
    ext_field: str | None,
    data: Sequence[Any],
    rules: Rules,
) -> Reply:
    """``PUT /{Module}/{id}`` or ``PUT /{Module}/{ext}`` with X-EXTERNAL: the first record of ``data``."""
    module = spec.api_name
    if ext_field is not None:
        rid = state.find_id(module, ext_field, key)
        message = "The value of the external field is invalid."
    else:
        rid = key if key in state.records[module] else None
        message = "the id given seems to be invalid"
    if rid is None:
        return request_error(400, "INVALID_DATA", message, {"resource_path_index": 1})
    item = data[0]
    if not isinstance(item, dict):
        return data_reply([entry_error("INVALID_DATA", "invalid data", {"json_path": "$.data[0]"})])
    return data_reply([_apply_update(state, spec, item, 0, rid, rules, ext_field)])


def _check_fields(spec: ModuleSpec, ext_field: str | None, dup_fields: Sequence[Any] | None) -> list[str] | Reply:
    if dup_fields is None:
        names = list(spec.duplicate_check_fields)
        names += [f.api_name for f in spec.fields if (f.unique or f.external) and f.api_name not in names]
    else:
        names = []
        for k, name in enumerate(dup_fields):
            if not isinstance(name, str) or name not in spec.by_name:
                return request_error(
                    400,
                    "INVALID_DATA",
                    "invalid data",
                    {"api_name": "duplicate_check_fields", "json_path": f"$.duplicate_check_fields[{k}]"},
                )
            names.append(name)
    if ext_field is not None:
        names = [ext_field, *(n for n in names if n != ext_field)]
    return names


def upsert_records(
    state: SandboxState,
    spec: ModuleSpec,
    data: Sequence[Any],
    dup_fields: Sequence[Any] | None,
    ext_field: str | None,
    rules: Rules,
) -> Reply:
    """``POST /{Module}/upsert``: update the record a duplicate-check field matches, else insert.

    Check fields, in order: the X-EXTERNAL field, then ``duplicate_check_fields`` or else the
    module's system fields followed by its unique and external fields. HTTP 200 even when every
    record was inserted (zoho-api.md §2.3 leaves 200 vs 201 open).
    """
    names = _check_fields(spec, ext_field, dup_fields)
    if isinstance(names, Reply):
        return names
    module = spec.api_name
    entries: list[dict[str, JSON]] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            entries.append(entry_error("INVALID_DATA", "invalid data", {"json_path": f"$.data[{i}]"}))
            continue
        match: str | None = None
        matched_on: str | None = None
        first_present: str | None = None
        for name in names:
            value = item.get(name)
            if value is None or value == "":
                continue
            first_present = first_present or name
            match = state.find_id(module, name, value)
            if match is not None:
                matched_on = name
                break
        if match is not None:
            entry = _apply_update(state, spec, item, i, match, rules, None)
            if entry["status"] == "success":
                entry = {"code": "SUCCESS", "duplicate_field": matched_on, "action": "update", **entry}
            entries.append(entry)
            continue
        fields, error = validate_fields(state, spec, item, i, record_id=None, reject_unknown=rules.reject_unknown)
        if error is not None:
            entries.append(error)
            continue
        rid = state.insert(module, fields, now=rules.now)
        details = _record_details(state.records[module][rid])
        entries.append(
            {
                "code": "SUCCESS",
                "duplicate_field": first_present,
                "action": "insert",
                **entry_success("record added", details),
            }
        )
    return data_reply(entries)


def insert_records(state: SandboxState, spec: ModuleSpec, data: Sequence[Any], rules: Rules) -> Reply:
    """``POST /{Module}``: insert every record; 201 when all were added, as Zoho's insert does."""
    entries: list[dict[str, JSON]] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            entries.append(entry_error("INVALID_DATA", "invalid data", {"json_path": f"$.data[{i}]"}))
            continue
        fields, error = validate_fields(state, spec, item, i, record_id=None, reject_unknown=rules.reject_unknown)
        if error is not None:
            entries.append(error)
            continue
        rid = state.insert(spec.api_name, fields, now=rules.now)
        entries.append(entry_success("record added", _record_details(state.records[spec.api_name][rid])))
    return data_reply(entries, all_ok=201)


def get_record(state: SandboxState, spec: ModuleSpec, key: str, ext_field: str | None) -> Reply:
    """``GET /{Module}/{id}`` (or ``{ext}`` with X-EXTERNAL): ``{"data": [record]}``, or 204 when absent."""
    module = spec.api_name
    rid = state.find_id(module, ext_field, key) if ext_field is not None else key
    rec = state.records[module].get(rid) if rid is not None else None
    if rec is None:
        return Reply(status=204, body=None)
    return Reply(status=200, body={"data": [dict(rec)]})


def list_records(state: SandboxState, spec: ModuleSpec, page: int, per_page: int) -> Reply:
    """``GET /{Module}``: one page of records in insertion order, or 204 when the page is empty."""
    recs = state.records[spec.api_name]
    start = (page - 1) * per_page
    if start >= len(recs):
        return Reply(status=204, body=None)
    chunk = [dict(r) for r in list(recs.values())[start : start + per_page]]
    info: dict[str, JSON] = {
        "per_page": per_page,
        "count": len(chunk),
        "page": page,
        "more_records": start + per_page < len(recs),
    }
    return Reply(status=200, body={"data": chunk, "info": info})  # type: ignore[dict-item]
