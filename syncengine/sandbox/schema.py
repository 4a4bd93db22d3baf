"""The sandbox's field schema: modules, their fields, and the relations between modules.

A schema is immutable and shared by every request, so validation never copies it. ``check_value``
turns one incoming JSON value into the value to store, or raises ``BadValue`` with the extra
``details`` keys Zoho would send (``expected_data_type``, ``maximum_length`` or ``supported_values``),
with one small checker per field type. The built-in schema, a data table, is ``fields.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from syncengine.model import JSON

__all__ = [
    "BadValue",
    "FieldSpec",
    "FieldType",
    "ModuleSpec",
    "RelatedList",
    "RelationSpec",
    "Schema",
    "check_value",
]


class FieldType(StrEnum):
    """A field's Zoho ``data_type``; the value is what the fields metadata API reports."""

    TEXT = "text"  # single line, 255 characters unless the field says otherwise
    TEXTAREA = "textarea"  # multi line, 32,000 characters
    EMAIL = "email"  # 100 characters, must look like an address
    PHONE = "phone"  # 30 characters
    WEBSITE = "website"  # 255 characters
    INTEGER = "integer"  # 32-bit signed
    BIGINT = "bigint"  # 64-bit signed
    DOUBLE = "double"
    CURRENCY = "currency"
    PERCENT = "percent"
    BOOLEAN = "boolean"
    DATE = "date"  # YYYY-MM-DD
    DATETIME = "datetime"  # ISO 8601 with an offset
    PICKLIST = "picklist"  # one of the field's values
    MULTISELECTPICKLIST = "multiselectpicklist"  # a list of the field's values
    LOOKUP = "lookup"  # {"id": ...}, or the bare id


_DEFAULT_LENGTH = {
    FieldType.TEXT: 255,
    FieldType.TEXTAREA: 32000,
    FieldType.EMAIL: 100,
    FieldType.PHONE: 30,
    FieldType.WEBSITE: 255,
}
_STRING_TYPES = frozenset(_DEFAULT_LENGTH)
_NUMBER_TYPES = frozenset({FieldType.DOUBLE, FieldType.CURRENCY, FieldType.PERCENT})
_INT_LIMITS = {FieldType.INTEGER: 2**31, FieldType.BIGINT: 2**63}
# Loose on purpose: Zoho's own check is not documented; this catches the obvious typos a test uses.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """One field of a module (or of a relation, such as ``Member_Status``)."""

    api_name: str
    type: FieldType = FieldType.TEXT
    max_length: int | None = None  # None: the type's default
    mandatory: bool = False  # required on insert; an update may not set it to null or ""
    unique: bool = False  # "Do not allow duplicate values": a collision is DUPLICATE_DATA
    external: bool = False  # addressable with X-EXTERNAL; external values are unique too
    values: tuple[str, ...] = ()  # picklist values
    lookup_module: str | None = None  # for lookups: the module the id must exist in, when known

    @property
    def length(self) -> int | None:
        return self.max_length if self.max_length is not None else _DEFAULT_LENGTH.get(self.type)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleSpec:
    """A module: its fields, its system duplicate-check fields for upsert, and its permission."""

    api_name: str
    fields: tuple[FieldSpec, ...]
    duplicate_check_fields: tuple[str, ...] = ()  # the system defaults of zoho-api.md §2.3
    no_permission: bool = False  # every call on the module answers 403 NO_PERMISSION
    by_name: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)
    mandatory: tuple[FieldSpec, ...] = field(init=False, repr=False, compare=False)
    indexed: frozenset[str] = field(init=False, repr=False, compare=False)
    external_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once here so the hot path never scans the field tuple.
        by_name = {f.api_name: f for f in self.fields}
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(self, "mandatory", tuple(f for f in self.fields if f.mandatory))
        indexed = {f.api_name for f in self.fields if f.unique or f.external}
        indexed.update(n for n in self.duplicate_check_fields if n in by_name)
        object.__setattr__(self, "indexed", frozenset(indexed))
        object.__setattr__(self, "external_fields", tuple(f.api_name for f in self.fields if f.external))


@dataclass(frozen=True, slots=True, kw_only=True)
class RelationSpec:
    """A many-to-many relation, seen from both sides: ``a_module``'s related list ``a_list`` holds
    ``b_module`` records and ``b_module``'s ``b_list`` holds ``a_module`` records. Linking from either
    side is the same link, with the same relation ``fields``."""

    a_module: str
    a_list: str
    b_module: str
    b_list: str
    fields: tuple[FieldSpec, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RelatedList:
    """A related list as seen from one module: where it leads and which fields a link carries."""

    api_name: str
    module: str  # the module whose related list this is
    related_module: str  # the module the list holds
    fields: Mapping[str, FieldSpec]


@dataclass(frozen=True, slots=True, kw_only=True)
class Schema:
    """Every module and relation the sandbox knows."""

    modules: tuple[ModuleSpec, ...]
    relations: tuple[RelationSpec, ...] = ()
    by_name: Mapping[str, ModuleSpec] = field(init=False, repr=False, compare=False)
    by_lower: Mapping[str, ModuleSpec] = field(init=False, repr=False, compare=False)
    lists: Mapping[str, Mapping[str, RelatedList]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {m.api_name: m for m in self.modules}
        lists: dict[str, dict[str, RelatedList]] = {m: {} for m in by_name}
        for rel in self.relations:
            for mod in (rel.a_module, rel.b_module):
                if mod not in by_name:
                    raise ValueError(f"relation {rel.a_module}/{rel.a_list} names unknown module {mod!r}")
            fields = {f.api_name: f for f in rel.fields}
            lists[rel.a_module][rel.a_list] = RelatedList(
                api_name=rel.a_list, module=rel.a_module, related_module=rel.b_module, fields=fields
            )
            lists[rel.b_module][rel.b_list] = RelatedList(
                api_name=rel.b_list, module=rel.b_module, related_module=rel.a_module, fields=fields
            )
        object.__setattr__(self, "by_name", by_name)
        # Zoho accepts module names in any case (the SDK lower-cases some of them).
        object.__setattr__(self, "by_lower", {m.lower(): spec for m, spec in by_name.items()})
        object.__setattr__(self, "lists", lists)

    def module(self, name: str) -> ModuleSpec | None:
        """The module called ``name`` (case-insensitive), or None."""
        return self.by_name.get(name) or self.by_lower.get(name.lower())

    def related_list(self, module: str, name: str) -> RelatedList | None:
        """The related list ``name`` of ``module`` (case-insensitive), or None."""
        lists = self.lists.get(module, {})
        found = lists.get(name)
        if found is None:
            lowered = name.lower()
            found = next((rl for n, rl in lists.items() if n.lower() == lowered), None)
        return found

    def with_no_permission(self, modules: Iterable[str]) -> Schema:
        """A copy where each module in ``modules`` answers 403 NO_PERMISSION."""
        names = set(modules)
        mods = tuple(
            ModuleSpec(
                api_name=m.api_name,
                fields=m.fields,
                duplicate_check_fields=m.duplicate_check_fields,
                no_permission=m.no_permission or m.api_name in names,
            )
            for m in self.modules
        )
        return Schema(modules=mods, relations=self.relations)


class BadValue(Exception):
    """A value does not fit its field; ``details`` holds the keys to add to INVALID_DATA's details."""

    def __init__(self, details: dict[str, JSON]) -> None:
        self.details = details
        super().__init__(details)


def _is_number(value: JSON) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_value(spec: FieldSpec, value: JSON, *, known_ids: Mapping[str, str] | None = None) -> JSON:
    """Validate one non-null value for ``spec`` and return what to store.

    ``known_ids`` maps record id -> module, so a lookup into a known module can be checked.
    """
    if spec.type is FieldType.LOOKUP:
        return _check_lookup(spec, value, known_ids)
    return _CHECKS[spec.type](spec, value)


def _wrong_type(spec: FieldSpec) -> BadValue:
    return BadValue({"expected_data_type": spec.type.value})


def _check_text(spec: FieldSpec, value: JSON) -> JSON:
    if _is_number(value) and spec.type is not FieldType.EMAIL:
        value = str(value)  # Zoho stores a number sent to a text field as its text
    if not isinstance(value, str):
        raise _wrong_type(spec)
    limit = spec.length
    if limit is not None and len(value) > limit:
        raise BadValue({"maximum_length": limit})
    if spec.type is FieldType.EMAIL and not _EMAIL.match(value):
        raise _wrong_type(spec)
    return value


def _check_integer(spec: FieldSpec, value: JSON) -> JSON:
    number: JSON = value
    # Zoho coerces numeric strings for number fields; so do we, but nothing else.
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    if not isinstance(number, int) or isinstance(number, bool) or abs(number) >= _INT_LIMITS[spec.type]:
        raise _wrong_type(spec)
    return number


def _check_number(spec: FieldSpec, value: JSON) -> JSON:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _wrong_type(spec) from None
    if not _is_number(value):
        raise _wrong_type(spec)
    return value


def _check_boolean(spec: FieldSpec, value: JSON) -> JSON:
    if not isinstance(value, bool):
        raise _wrong_type(spec)
    return value


def _check_date(spec: FieldSpec, value: JSON) -> JSON:
    if not isinstance(value, str) or len(value) != 10:
        raise _wrong_type(spec)
    try:
        date.fromisoformat(value)
    except ValueError:
        raise _wrong_type(spec) from None
    return value


def _check_datetime(spec: FieldSpec, value: JSON) -> JSON:
    if not isinstance(value, str) or "T" not in value:
        raise _wrong_type(spec)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _wrong_type(spec) from None
    if parsed.tzinfo is None:
        raise _wrong_type(spec)  # Zoho writes every datetime with its offset, and wants one
    return value


def _check_picklist(spec: FieldSpec, value: JSON) -> JSON:
    if not isinstance(value, str):
        raise _wrong_type(spec)
    if spec.values and value not in spec.values:
        raise BadValue({"supported_values": list(spec.values)})
    return value


def _check_multiselect(spec: FieldSpec, value: JSON) -> JSON:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _wrong_type(spec)
    if spec.values and any(v not in spec.values for v in value):
        raise BadValue({"supported_values": list(spec.values)})
    return value


def _check_lookup(spec: FieldSpec, value: JSON, known_ids: Mapping[str, str] | None) -> JSON:
    """{"id": ...} or the bare id, as a string or a JSON number; stored as {"id": "..."}."""
    raw = value.get("id") if isinstance(value, dict) else value
    rid = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(rid, str) or not _DIGITS.match(rid):
        raise _wrong_type(spec)
    if known_ids is not None and spec.lookup_module is not None and known_ids.get(rid) != spec.lookup_module:
        raise _wrong_type(spec)
    return {"id": rid}


# The checker of every type but LOOKUP (which also needs the known ids).
_CHECKS: Mapping[FieldType, Callable[[FieldSpec, JSON], JSON]] = {
    **dict.fromkeys(_STRING_TYPES, _check_text),
    **dict.fromkeys(_INT_LIMITS, _check_integer),
    **dict.fromkeys(_NUMBER_TYPES, _check_number),
    FieldType.BOOLEAN: _check_boolean,
    FieldType.DATE: _check_date,
    FieldType.DATETIME: _check_datetime,
    FieldType.PICKLIST: _check_picklist,
    FieldType.MULTISELECTPICKLIST: _check_multiselect,
}
