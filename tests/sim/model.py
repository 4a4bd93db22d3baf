"""The oracle: a plain in-memory model of what the CRM should hold, and of what each source row asks for.

Rows are read here exactly as the sim streams map them (``spec.py``), independently of the engine:
:func:`changes_of` turns one export into :class:`Chg` values (key, operation, the fields the CRM would
store, the row's version and position, and whether the row is bad), and :class:`Model` folds the valid ones
in source order over the state the CRM held before, which is what the CRM must hold after the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.sim.spec import ROLES, UNKNOWN_LEAD, Row, Spec, contact_id, deal_id, lead_id

__all__ = [
    "Chg",
    "Export",
    "Key",
    "Model",
    "changes_of",
    "crm_holds",
    "entry_key",
    "entry_keys",
    "record_key",
    "record_of",
    "version_field",
]

# ("rec", module, record id) or ("rel", deal id, contact id); the phones stream's writes of a contact are
# their own key ("rec", "Contacts#phones", id): its rows carry their own version (Source_Seq2)
Key = tuple[str, str, str]
PHONES = "Contacts#phones"
SYSTEM_FIELDS = frozenset({"id", "Created_Time", "Modified_Time", "Created_By", "Modified_By"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Chg:
    """One source row as the oracle reads it."""

    stream: str
    seq: int  # the row's number in its source, from 1: the engine's seq, and the row's position
    key: Key
    op: str  # update | link | unlink
    fields: Mapping[str, Any]
    version: int | None
    bad: str | None  # "invalid": refused before sending; "rejected": the CRM refuses it; None: valid


@dataclass(slots=True)
class Export:
    """One step's rows of every stream, read, with lookups by key and by version."""

    changes: dict[tuple[str, int], Chg]
    by_key: dict[Key, list[Chg]] = field(default_factory=dict)
    pos: dict[Key, dict[int, int]] = field(default_factory=dict)  # key -> version -> position (seq)

    @classmethod
    def of(cls, spec: Spec, exports: Mapping[str, Sequence[Row]]) -> Export:
        out = cls(changes={})
        for stream, rows in exports.items():
            for chg in changes_of(spec, stream, rows):
                out.changes[(stream, chg.seq)] = chg
                if chg.bad is None:
                    out.by_key.setdefault(chg.key, []).append(chg)
                    if chg.version is not None:
                        out.pos.setdefault(chg.key, {})[chg.version] = chg.seq
        return out

    def position(self, key: Key, version: int | None) -> int | None:
        """Where the row of ``version`` is in this export (None: it is not)."""
        if version is None:
            return None
        return self.pos.get(key, {}).get(version)


def record_key(module: str, rid: str) -> Key:
    return ("rec", module, rid)


def record_of(key: Key) -> Key:
    """The record or link a key's writes land on."""
    return ("rec", "Contacts", key[2]) if key[1] == PHONES else key


def version_field(key: Key) -> str:
    """The field that carries a key's row versions."""
    return "Source_Seq2" if key[1] == PHONES else "Source_Seq"


def entry_keys(entry: Mapping[str, Any]) -> list[Key]:
    """The keys a sandbox history entry wrote (a write coalesced across contacts and phones writes both)."""
    if entry["related_id"] is None and entry["module"] == "Contacts":
        rid, fields = str(entry["id"]), entry["fields"]
        keys = [("rec", PHONES, rid)] if "Source_Seq2" in fields else []
        return [*keys, record_key("Contacts", rid)] if "Source_Seq" in fields or not keys else keys
    return [entry_key(entry)]


def entry_key(entry: Mapping[str, Any]) -> Key:
    """The key a sandbox history entry wrote: a record, or a Deal-Contact pair (either side addressed)."""
    if entry["related_id"] is None:
        return record_key(str(entry["module"]), str(entry["id"]))
    if entry["module"] == "Deals":
        return ("rel", str(entry["id"]), str(entry["related_id"]))
    return ("rel", str(entry["related_id"]), str(entry["id"]))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _contact(spec: Spec, row: Row, seq: int) -> Chg:
    erp = str(row["erp_id"])
    known = erp.startswith("C") and erp[1:].isdigit() and int(erp[1:]) < spec.contacts
    rid = contact_id(int(erp[1:])) if known else erp
    fields: dict[str, Any] = {}
    for column, name in (("last_name", "Last_Name"), ("title", "Title"), ("dept", "Department")):
        if row[column]:
            fields[name] = row[column]
    fields["Source_Seq"] = row["version"]
    bad = "invalid" if row.get("_bad") else (None if known and not row.get("_refused") else "rejected")
    return Chg(stream="contacts", seq=seq, key=record_key("Contacts", rid), op="update", fields=fields,
               version=_int(row["version"]), bad=bad)  # fmt: skip


def _lead(spec: Spec, row: Row, seq: int) -> Chg:
    rid = str(row["crm_id"])
    fields: dict[str, Any] = {}
    if "company" in row:
        fields["Company"] = row["company"]
    if "description" in row:
        fields["Description"] = row["description"]
    fields["Source_Seq"] = row["version"]
    bad = "invalid" if row.get("_bad") else ("rejected" if rid == UNKNOWN_LEAD or row.get("_refused") else None)
    return Chg(stream="leads", seq=seq, key=record_key("Leads", rid), op="update", fields=fields,
               version=_int(row["version"]), bad=bad)  # fmt: skip


def _link(spec: Spec, row: Row, seq: int) -> Chg:
    d = deal_id(int(str(row["deal"])[1:]))
    c = contact_id(int(str(row["contact"])[1:])) if row["contact"] else ""
    unlink = row["deleted"] == "true"
    fields: dict[str, Any] = {}
    if not unlink:
        if row["role"]:
            fields["Contact_Role"] = {"id": row["role"]}
        fields["Source_Seq"] = row["version"]
    return Chg(stream="links", seq=seq, key=("rel", d, c), op="unlink" if unlink else "link", fields=fields,
               version=_int(row["version"]), bad="invalid" if row.get("_bad") else None)  # fmt: skip


def _unlink(spec: Spec, row: Row, seq: int) -> Chg:
    key: Key = ("rel", str(row["deal_id"]), str(row["contact_id"]))
    return Chg(stream="unlinks", seq=seq, key=key, op="unlink", fields={}, version=_int(row["version"]),
               bad="invalid" if row.get("_bad") else None)  # fmt: skip


def _phone(spec: Spec, row: Row, seq: int) -> Chg:
    erp = str(row["erp"])
    known = erp.startswith("C") and erp[1:].isdigit() and int(erp[1:]) < spec.contacts
    rid = contact_id(int(erp[1:])) if known else erp
    bad = "invalid" if row.get("_bad") else (None if known else "rejected")
    fields = {"Phone": row["phone"], "Source_Seq2": row["version"]}
    return Chg(stream="phones", seq=seq, key=("rec", PHONES, rid), op="update", fields=fields,
               version=_int(row["version"]), bad=bad)  # fmt: skip


_READERS = {"contacts": _contact, "leads": _lead, "links": _link, "unlinks": _unlink, "phones": _phone}


def changes_of(spec: Spec, stream: str, rows: Sequence[Row]) -> list[Chg]:
    """Every row of one stream's export, read."""
    read = _READERS[stream]
    return [read(spec, row, seq) for seq, row in enumerate(rows, start=1)]


class Model:
    """What the CRM should hold: the seed, then every step's valid rows folded in source order."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.records: dict[Key, dict[str, Any]] = {}
        for i in range(spec.contacts):
            self.records[record_key("Contacts", contact_id(i))] = {
                "Last_Name": f"Seed{i}",
                "External_Contact_ID": f"C{i}",
            }
        for i in range(spec.deals):
            self.records[record_key("Deals", deal_id(i))] = {"Deal_Name": f"Deal {i}", "External_Deal_ID": f"D{i}"}
        for i in range(spec.leads):
            self.records[record_key("Leads", lead_id(i))] = {"Last_Name": f"Lead{i}", "Company": f"Seed Co {i}"}
        self.links: dict[Key, dict[str, Any]] = {
            ("rel", deal_id(d), contact_id(c)): {"Contact_Role": {"id": ROLES[r]}} for d, c, r in spec.seeded_links
        }

    def seed_doc(self) -> dict[str, Any]:
        """The sandbox seed document of the starting state."""
        records: dict[str, list[dict[str, Any]]] = {}
        for (_, module, rid), fields in self.records.items():
            records.setdefault(module, []).append({"id": rid, **fields})
        relations = [
            {"module": "Deals", "id": d, "related_list": "Contacts", "related_id": c, "fields": dict(fields)}
            for (_, d, c), fields in self.links.items()
        ]
        return {"records": records, "relations": relations}

    def fold(self, export: Export) -> None:
        """Apply every valid row of the export, each stream in source order (streams own disjoint keys)."""
        for chg in sorted(export.changes.values(), key=lambda c: (c.stream, c.seq)):
            if chg.bad is not None:
                continue
            if chg.op == "update":
                self.records[record_of(chg.key)].update(chg.fields)
            elif chg.op == "link":
                self.links.setdefault(chg.key, {}).update(chg.fields)
            else:
                self.links.pop(chg.key, None)  # not linked: the CRM refuses it, and nothing changes

    def differences(self, state: Any, skip: set[Key]) -> list[tuple[Key, str]]:
        """Every difference between the sandbox ``state`` and the model, leaving out the keys in ``skip``."""
        diffs: list[tuple[Key, str]] = []
        skip = {record_of(k) for k in skip}
        for key, want in self.records.items():
            got = crm_holds(state, key)
            if key not in skip and got != want:
                diffs.append((key, f"{key[1]} {key[2]}: CRM holds {got}, the model {want}"))
        linked: set[Key] = set(self.links)
        for (module, rid), by_module in state.links.items():
            if module == "Deals":
                linked.update(("rel", rid, other) for other in by_module.get("Contacts", {}))
        for key in sorted(linked - skip):
            found, wanted = crm_holds(state, key), self.links.get(key)
            if found != wanted:
                diffs.append((key, f"link Deal {key[1]} - Contact {key[2]}: CRM holds {found}, the model {wanted}"))
        return diffs


def crm_holds(state: Any, key: Key) -> dict[str, Any] | None:
    """What the sandbox holds for a key now: the record's fields (no system fields), or the link's fields."""
    if key[0] == "rec":
        rec = state.get_record(record_of(key)[1], key[2])
        return None if rec is None else {k: v for k, v in rec.items() if k not in SYSTEM_FIELDS}
    fields = state.links.get(("Deals", key[1]), {}).get("Contacts", {}).get(key[2])
    # A relation field set to null is cleared (the engine clears the fields a delink erased when it merges the
    # delink with a later link of the pair): null and absent are the same relation.
    return None if fields is None else {k: v for k, v in fields.items() if v is not None}
