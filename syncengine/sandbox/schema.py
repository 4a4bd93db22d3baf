"""The sandbox's field schema: modules, their fields, and the relations between modules.

A schema is immutable and shared by every request, so validation never copies it. ``check_value``
turns one incoming JSON value into the value to store, or raises ``BadValue`` with the extra
``details`` keys Zoho would send (``expected_data_type``, ``maximum_length`` or ``supported_values``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from syncengine.model import JSON

__all__ = [
    "DEFAULT_SCHEMA",
    "BadValue",
    "FieldSpec",
    "FieldType",
    "ModuleSpec",
    "RelatedList",
    "RelationSpec",
    "Schema",
    "check_value",
    "default_schema",
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
    t = spec.type
    if t in _STRING_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool) and t is not FieldType.EMAIL:
            value = str(value)  # Zoho stores a number sent to a text field as its text
        if not isinstance(value, str):
            raise BadValue({"expected_data_type": t.value})
        limit = spec.length
        if limit is not None and len(value) > limit:
            raise BadValue({"maximum_length": limit})
        if t is FieldType.EMAIL and not _EMAIL.match(value):
            raise BadValue({"expected_data_type": t.value})
        return value
    if t in _INT_LIMITS:
        number: JSON = value
        # Zoho coerces numeric strings for number fields; so do we, but nothing else.
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
            number = int(value)
        if not isinstance(number, int) or isinstance(number, bool) or abs(number) >= _INT_LIMITS[t]:
            raise BadValue({"expected_data_type": t.value})
        return number
    if t in _NUMBER_TYPES:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise BadValue({"expected_data_type": t.value}) from None
        if not _is_number(value):
            raise BadValue({"expected_data_type": t.value})
        return value
    if t is FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise BadValue({"expected_data_type": t.value})
        return value
    if t is FieldType.DATE:
        try:
            date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else _raise()
        except ValueError:
            raise BadValue({"expected_data_type": t.value}) from None
        return value
    if t is FieldType.DATETIME:
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) and "T" in value else _raise()
        except ValueError:
            raise BadValue({"expected_data_type": t.value}) from None
        if parsed.tzinfo is None:
            raise BadValue({"expected_data_type": t.value})
        return value
    if t is FieldType.PICKLIST:
        if not isinstance(value, str):
            raise BadValue({"expected_data_type": t.value})
        if spec.values and value not in spec.values:
            raise BadValue({"supported_values": list(spec.values)})
        return value
    if t is FieldType.MULTISELECTPICKLIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadValue({"expected_data_type": t.value})
        if spec.values and any(v not in spec.values for v in value):
            raise BadValue({"supported_values": list(spec.values)})
        return value
    # LOOKUP: {"id": ...} or the bare id, as a string or a JSON number.
    raw = value.get("id") if isinstance(value, dict) else value
    rid = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(rid, str) or not _DIGITS.match(rid):
        raise BadValue({"expected_data_type": t.value})
    if known_ids is not None and spec.lookup_module is not None and known_ids.get(rid) != spec.lookup_module:
        raise BadValue({"expected_data_type": t.value})
    return {"id": rid}


def _raise() -> datetime:
    raise ValueError


def _text(name: str, **kw: object) -> FieldSpec:
    return FieldSpec(api_name=name, type=FieldType.TEXT, **kw)  # type: ignore[arg-type]


def _f(name: str, type_: FieldType, **kw: object) -> FieldSpec:
    return FieldSpec(api_name=name, type=type_, **kw)  # type: ignore[arg-type]


_LEAD_SOURCES = (
    "Advertisement",
    "Cold Call",
    "Employee Referral",
    "External Referral",
    "Online Store",
    "Partner",
    "Public Relations",
    "Sales Email Alias",
    "Seminar Partner",
    "Internal Seminar",
    "Trade Show",
    "Web Download",
    "Web Research",
    "Chat",
)
_MEMBER_STATUS = (
    "Planning",
    "Active",
    "Invited",
    "Sent",
    "Received",
    "Opened",
    "Responded",
    "Bounced",
    "Opted Out",
    "Registered",
    "Attended",
    "Did Not Attend",
)
_STAGES = (
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed Lost to Competition",
)
_LIST_PRICE = (_f("list_price", FieldType.CURRENCY),)


def default_schema() -> Schema:
    """The built-in schema the demo and the tests use (a trimmed copy of a standard Zoho org)."""
    leads = ModuleSpec(
        api_name="Leads",
        duplicate_check_fields=("Email",),
        fields=(
            _text("Last_Name", max_length=80, mandatory=True),
            _text("First_Name", max_length=40),
            _text("Company", max_length=200),
            _text("Designation", max_length=100),
            _f("Email", FieldType.EMAIL),
            _f("Phone", FieldType.PHONE),
            _f("Mobile", FieldType.PHONE),
            _f("Website", FieldType.WEBSITE),
            _f("Lead_Source", FieldType.PICKLIST, values=_LEAD_SOURCES),
            _f(
                "Lead_Status",
                FieldType.PICKLIST,
                values=(
                    "Attempted to Contact",
                    "Contact in Future",
                    "Contacted",
                    "Junk Lead",
                    "Lost Lead",
                    "Not Contacted",
                    "Pre-Qualified",
                    "Not Qualified",
                ),
            ),
            _text("Industry", max_length=120),
            _f("Annual_Revenue", FieldType.CURRENCY),
            _f("No_of_Employees", FieldType.INTEGER),
            _f("Email_Opt_Out", FieldType.BOOLEAN),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Lead_ID", external=True),
        ),
    )
    contacts = ModuleSpec(
        api_name="Contacts",
        duplicate_check_fields=("Email",),
        fields=(
            _text("Last_Name", max_length=80, mandatory=True),
            _text("First_Name", max_length=40),
            _f("Email", FieldType.EMAIL, unique=True),
            _f("Secondary_Email", FieldType.EMAIL),
            _f("Phone", FieldType.PHONE),
            _f("Mobile", FieldType.PHONE),
            _text("Title", max_length=100),
            _text("Department", max_length=100),
            _f("Date_of_Birth", FieldType.DATE),
            _f("Account_Name", FieldType.LOOKUP, lookup_module="Accounts"),
            _f("Lead_Source", FieldType.PICKLIST, values=_LEAD_SOURCES),
            _text("Mailing_Street", max_length=250),
            _text("Mailing_City", max_length=100),
            _text("Mailing_State", max_length=100),
            _text("Mailing_Zip", max_length=30),
            _text("Mailing_Country", max_length=100),
            _f("Email_Opt_Out", FieldType.BOOLEAN),
            _f("Last_Activity_Time", FieldType.DATETIME),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Contact_ID", external=True),
        ),
    )
    accounts = ModuleSpec(
        api_name="Accounts",
        duplicate_check_fields=("Account_Name",),
        fields=(
            _text("Account_Name", max_length=200, mandatory=True),
            _text("Account_Number", max_length=40),
            _f("Phone", FieldType.PHONE),
            _f("Website", FieldType.WEBSITE),
            _text("Industry", max_length=120),
            _f(
                "Account_Type",
                FieldType.PICKLIST,
                values=(
                    "Analyst",
                    "Competitor",
                    "Customer",
                    "Distributor",
                    "Integrator",
                    "Investor",
                    "Other",
                    "Partner",
                    "Press",
                    "Prospect",
                    "Reseller",
                    "Supplier",
                    "Vendor",
                ),
            ),
            _f("Annual_Revenue", FieldType.CURRENCY),
            _f("Employees", FieldType.INTEGER),
            _text("Billing_City", max_length=100),
            _text("Billing_Country", max_length=100),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Account_ID", external=True),
        ),
    )
    deals = ModuleSpec(
        api_name="Deals",
        duplicate_check_fields=("Deal_Name",),
        fields=(
            _text("Deal_Name", max_length=120, mandatory=True),
            _f("Amount", FieldType.CURRENCY),
            _f("Stage", FieldType.PICKLIST, values=_STAGES),
            _f("Pipeline", FieldType.PICKLIST, values=("Standard (Standard)",)),
            _f("Type", FieldType.PICKLIST, values=("Existing Business", "New Business")),
            _f("Closing_Date", FieldType.DATE),
            _f("Probability", FieldType.PERCENT),
            _f("Account_Name", FieldType.LOOKUP, lookup_module="Accounts"),
            _f("Contact_Name", FieldType.LOOKUP, lookup_module="Contacts"),
            _f("Lead_Source", FieldType.PICKLIST, values=_LEAD_SOURCES),
            _text("Next_Step", max_length=100),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Deal_ID", external=True),
        ),
    )
    products = ModuleSpec(
        api_name="Products",
        duplicate_check_fields=("Product_Name",),
        fields=(
            _text("Product_Name", max_length=200, mandatory=True),
            _text("Product_Code", max_length=40),
            _f("Unit_Price", FieldType.CURRENCY),
            _f("Qty_in_Stock", FieldType.DOUBLE),
            _f("Product_Active", FieldType.BOOLEAN),
            _f("Product_Category", FieldType.PICKLIST, values=("Hardware", "Software", "CRM Applications")),
            _text("Manufacturer", max_length=100),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Product_ID", external=True),
        ),
    )
    campaigns = ModuleSpec(
        api_name="Campaigns",
        duplicate_check_fields=("Campaign_Name",),
        fields=(
            _text("Campaign_Name", max_length=200, mandatory=True),
            _f(
                "Type",
                FieldType.PICKLIST,
                values=(
                    "Advertisement",
                    "Banner Ads",
                    "Conference",
                    "Direct mail",
                    "Email",
                    "Partner",
                    "Public Relations",
                    "Referral Program",
                    "Telemarketing",
                    "Trade Show",
                    "Webinar",
                    "Others",
                ),
            ),
            _f("Status", FieldType.PICKLIST, values=("Planning", "Active", "Inactive", "Complete")),
            _f("Start_Date", FieldType.DATE),
            _f("End_Date", FieldType.DATE),
            _f("Expected_Revenue", FieldType.CURRENCY),
            _f("Budgeted_Cost", FieldType.CURRENCY),
            _f("Actual_Cost", FieldType.CURRENCY),
            _f("Description", FieldType.TEXTAREA),
        ),
    )
    price_books = ModuleSpec(
        api_name="Price_Books",
        duplicate_check_fields=("Price_Book_Name",),
        fields=(
            _text("Price_Book_Name", max_length=120, mandatory=True),
            _f("Active", FieldType.BOOLEAN),
            _f("Pricing_Model", FieldType.PICKLIST, values=("Flat", "Differential")),
            _f("Description", FieldType.TEXTAREA),
        ),
    )
    member_status = (_f("Member_Status", FieldType.PICKLIST, values=_MEMBER_STATUS),)
    relations = (
        # Contact_Role holds the id of a contact role, e.g. "111111000000026002" in the Zoho docs.
        RelationSpec(
            a_module="Contacts",
            a_list="Deals",
            b_module="Deals",
            b_list="Contacts",
            fields=(_f("Contact_Role", FieldType.LOOKUP),),
        ),
        RelationSpec(a_module="Campaigns", a_list="Leads", b_module="Leads", b_list="Campaigns", fields=member_status),
        RelationSpec(
            a_module="Campaigns",
            a_list="Contacts",
            b_module="Contacts",
            b_list="Campaigns",
            fields=member_status,
        ),
        RelationSpec(a_module="Products", a_list="Leads", b_module="Leads", b_list="Products", fields=_LIST_PRICE),
        RelationSpec(
            a_module="Products", a_list="Accounts", b_module="Accounts", b_list="Products", fields=_LIST_PRICE
        ),
        RelationSpec(
            a_module="Products", a_list="Contacts", b_module="Contacts", b_list="Products", fields=_LIST_PRICE
        ),
        RelationSpec(a_module="Products", a_list="Deals", b_module="Deals", b_list="Products", fields=_LIST_PRICE),
        RelationSpec(
            a_module="Products",
            a_list="Price_Books",
            b_module="Price_Books",
            b_list="Products",
            fields=_LIST_PRICE,
        ),
    )
    return Schema(modules=(leads, contacts, accounts, deals, products, campaigns, price_books), relations=relations)


DEFAULT_SCHEMA = default_schema()
