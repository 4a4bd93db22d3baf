"""A deterministic sync scenario for the fault and chaos suites: a seeded CRM, sources for every operation,
and the CRM state they must produce, computed here in plain Python, independently of the engine.

``build_scenario(directory, seed=...)`` writes the sources and returns a :class:`Scenario`:

- ``seed``: the sandbox's starting state (Contacts with ``External_Contact_ID`` and a unique ``Email``,
  Deals with ``External_Deal_ID``, Leads by record id, Deal↔Contact links with a ``Contact_Role``);
- ``streams``: stream tables for ``tests.conftest.write_config``, one per operation and addressing form:

  ============================  ==============================================  ===========================
  stream                        operation, addressing                           source
  ============================  ==============================================  ===========================
  ``contacts_by_ext``           update by ``External_Contact_ID``               CSV, repeated keys (the
                                                                                last row for a key wins),
                                                                                empty cells (not sent)
  ``leads_by_id``               update by record id                             JSONL, repeated keys,
                                                                                explicit nulls (cleared)
  ``contacts_upsert``           upsert by ``Email``: updates and inserts        CSV, an insert and its
                                                                                later update by one key
  ``deal_links_ext``            update_related Deals→Contacts, external IDs     CSV, new links and role
                                                                                changes, repeated keys
  ``deal_links_ids``            update_related Deals→Contacts, record ids       JSONL
  ``deal_unlinks_ids``          delete_related by record ids (multi-delink)     CSV
  ``deal_unlinks_ext``          delete_related by external IDs (one per call)   CSV
  ============================  ==============================================  ===========================

- ``expected``: the final CRM state (every record's fields, every link with its fields) and
  ``Scenario.compare(state)`` lists every difference from a sandbox's state (empty: equal).

Every change is valid, so every change must end ``SUCCESS`` whatever transient faults the CRM injects. Each
relation and each record is changed by one stream only: the order of changes across streams is not defined.

Every row carries a marker that the CRM keeps, so a sandbox history (``record_history``) maps each applied
write back to its row: ``Last_Name`` ``L<row>`` (``contacts_by_ext``) or ``U<row>`` (``contacts_upsert``),
``Company`` ``Co <row>`` (``leads_by_id``), the role id of a link (:func:`role_mark`: stream, row and
role); an unlink is the one row that removes its relation. ``Scenario.keys`` gives each row's key;
:func:`trace_history` turns a history into :class:`Write` s and :func:`audit_history` checks their order
(no older row after a newer one) and counts the changes applied more than once.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "Audit",
    "Expected",
    "Scenario",
    "Sizes",
    "Write",
    "audit_history",
    "build_scenario",
    "publish_figures",
    "role_mark",
    "trace_history",
]

JSONValue = Any

ROLES = ("111111000000026002", "111111000000026003", "111111000000026004", "111111000000026005")
# Role ids that the link streams write: "111111", the stream (1: deal_links_ext, 2: deal_links_ids), the row
# (8 digits) and which of ROLES it stands for (3 digits): 18 digits, like Zoho's ids. Seeded links keep ROLES.
ROLE_STREAMS = ("deal_links_ext", "deal_links_ids")
TITLES = ("CEO", "CFO", "CTO", "VP Sales", "Buyer", "Engineer", "Office Manager")
STATUSES = ("Attempted to Contact", "Contacted", "Not Contacted", "Pre-Qualified")
SYSTEM_FIELDS = frozenset({"id", "Created_Time", "Modified_Time", "Created_By", "Modified_By"})

CONTACT_ID0 = 111111000001000000
DEAL_ID0 = 111111000002000000
LEAD_ID0 = 111111000003000000


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How big the scenario is. The defaults make about 22,500 changes (related rows repeat at random)."""

    contacts: int = 5000  # seeded; the first ``ext_contacts`` are updated by external ID, the rest by upsert
    ext_contacts: int = 3000
    deals: int = 150
    leads: int = 2000
    links_per_deal: int = 30  # seeded links
    contact_updates: int = 6000  # rows of contacts_by_ext (about two per key)
    lead_updates: int = 4000  # rows of leads_by_id
    upserts: int = 3000  # rows of contacts_upsert
    new_emails: int = 800  # of which inserts (a new email may appear again: insert, then update)
    new_links_ext: int = 3500  # new links by external IDs
    new_links_ids: int = 1500  # new links by record ids
    role_changes_ext: int = 600  # seeded links whose role changes, by external IDs
    role_changes_ids: int = 300  # ... by record ids
    unlinks_ids: int = 2400  # seeded links removed by record ids
    unlinks_ext: int = 300  # seeded links removed by external IDs
    repeat_fraction: float = 0.15  # related rows written a second time, later, with another role

    def scaled(self, factor: float) -> Sizes:
        """Every count times ``factor`` (at least 1), for a smaller or bigger run of the same shape."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = max(1, round(value * factor)) if isinstance(value, int) else value
        out["links_per_deal"] = self.links_per_deal  # keep the per-deal shape; scale the number of deals
        return Sizes(**out)


@dataclass(slots=True)
class Expected:
    """The CRM state the scenario must end in."""

    # module -> record id -> fields (system fields left out), for the seeded records
    records: dict[str, dict[str, dict[str, JSONValue]]]
    # Contacts the upsert inserts: Email -> fields (their ids are the CRM's to choose)
    inserted: dict[str, dict[str, JSONValue]]
    # (deal id, contact id) -> relation fields
    links: dict[tuple[str, str], dict[str, JSONValue]]


@dataclass(slots=True)
class Scenario:
    """Sources written to disk, the seed to load into the sandbox, and the expected end state."""

    seed: dict[str, Any]
    streams: list[dict[str, Any]]
    changes: dict[str, int]  # stream -> number of changes (rows), seqs 1..n
    expected: Expected
    sizes: Sizes
    seeded_links: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    # stream -> the key each row changes, row seq = index + 1: a record id (``contacts_by_ext``,
    # ``leads_by_id``), an Email (``contacts_upsert``), or ``"deal id/contact id"`` (relations)
    keys: dict[str, list[str]] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)  # seeded contact id -> its Email

    @property
    def total(self) -> int:
        return sum(self.changes.values())

    def compare(self, state: Any, *, limit: int = 20) -> list[str]:
        """Every difference between ``state`` (a ``SandboxState``) and the expected state, at most ``limit``."""
        diffs: list[str] = []

        def add(message: str) -> None:
            if len(diffs) < limit:
                diffs.append(message)
            elif len(diffs) == limit:
                diffs.append("... more differences")

        exp = self.expected
        for module, expected_records in exp.records.items():
            actual: dict[str, dict[str, JSONValue]] = {
                str(rec["id"]): _strip(rec) for rec in state.iter_records(module)
            }
            for rid, want in expected_records.items():
                got = actual.pop(rid, None)
                if got is None:
                    add(f"{module} {rid}: missing")
                elif got != want:
                    add(f"{module} {rid}: expected {want}, found {got}")
            if module == "Contacts":
                by_email: dict[str, list[dict[str, JSONValue]]] = {}
                for rec in actual.values():
                    by_email.setdefault(str(rec.get("Email")), []).append(rec)
                for email, want in exp.inserted.items():
                    found = by_email.pop(email, [])
                    if len(found) != 1:
                        add(f"Contacts with Email {email}: expected 1 inserted record, found {len(found)}")
                    elif found[0] != want:
                        add(f"Contacts inserted {email}: expected {want}, found {found[0]}")
                for email, recs in by_email.items():
                    add(f"Contacts: {len(recs)} unexpected record(s) with Email {email}")
            else:
                for rid in actual:
                    add(f"{module} {rid}: unexpected record")
        for module, count in state.counts().items():
            if module not in exp.records and count:
                add(f"{module}: {count} unexpected records")
        links = actual_links(state)
        for pair, want in exp.links.items():
            got = links.pop(pair, None)
            if got is None:
                add(f"link Deal {pair[0]} - Contact {pair[1]}: missing")
            elif got != want:
                add(f"link Deal {pair[0]} - Contact {pair[1]}: expected {want}, found {got}")
        for pair, got in links.items():
            add(f"link Deal {pair[0]} - Contact {pair[1]}: should not exist, found {got}")
        return diffs

    def expected_doc(self) -> dict[str, Any]:
        """The expected state as a sandbox seed document (inserted records get new ids when loaded)."""
        exp = self.expected
        records: dict[str, list[dict[str, JSONValue]]] = {
            module: [{"id": rid, **fields} for rid, fields in recs.items()] for module, recs in exp.records.items()
        }
        records["Contacts"] = records.get("Contacts", []) + [dict(fields) for fields in exp.inserted.values()]
        relations = [
            {"module": "Deals", "id": did, "related_list": "Contacts", "related_id": cid, "fields": dict(fields)}
            for (did, cid), fields in exp.links.items()
        ]
        return {"records": records, "relations": relations}

    def duplicate_inserts(self, state: Any) -> int:
        """Records the upsert inserted more than once (an insert applied twice would show here)."""
        seeded = self.expected.records.get("Contacts", {})
        seen: dict[str, int] = {}
        for rec in state.iter_records("Contacts"):
            if str(rec["id"]) not in seeded:
                email = str(rec.get("Email"))
                seen[email] = seen.get(email, 0) + 1
        return sum(n - 1 for n in seen.values() if n > 1)


def actual_links(state: Any) -> dict[tuple[str, str], dict[str, JSONValue]]:
    """Every Deal↔Contact link of a sandbox state as (deal id, contact id) -> fields, checked both ways."""
    out: dict[tuple[str, str], dict[str, JSONValue]] = {}
    for (module, rid), by_module in state.links.items():
        if module == "Deals":
            for cid, fields in by_module.get("Contacts", {}).items():
                out[(rid, cid)] = dict(fields)
    for (module, rid), by_module in state.links.items():
        if module == "Contacts":
            for did in by_module.get("Deals", {}):
                if (did, rid) not in out:
                    out[(did, rid)] = {"<one-sided link>": True}
    return out


def _strip(rec: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    return {k: v for k, v in rec.items() if k not in SYSTEM_FIELDS}


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(rows)


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def build_scenario(directory: Path, *, seed: int, sizes: Sizes | None = None) -> Scenario:
    """Write every source under ``directory`` and return the scenario; the same seed gives the same files."""
    sizes = sizes or Sizes()
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)

    contact_ids = [str(CONTACT_ID0 + i) for i in range(sizes.contacts)]
    deal_ids = [str(DEAL_ID0 + i) for i in range(sizes.deals)]
    lead_ids = [str(LEAD_ID0 + i) for i in range(sizes.leads)]
    contact_ext = {cid: f"C{i}" for i, cid in enumerate(contact_ids)}
    deal_ext = {did: f"D{i}" for i, did in enumerate(deal_ids)}
    contact_email = {cid: f"c{i}@example.com" for i, cid in enumerate(contact_ids)}

    contacts: dict[str, dict[str, JSONValue]] = {
        cid: {
            "Last_Name": f"Old{i}",
            "Title": rng.choice(TITLES),
            "Email": contact_email[cid],
            "Phone": f"+1 555 {i:07d}",
            "External_Contact_ID": contact_ext[cid],
        }
        for i, cid in enumerate(contact_ids)
    }
    deals: dict[str, dict[str, JSONValue]] = {
        did: {"Deal_Name": f"Deal {i}", "Amount": float(1000 + i), "External_Deal_ID": deal_ext[did]}
        for i, did in enumerate(deal_ids)
    }
    leads: dict[str, dict[str, JSONValue]] = {
        lid: {"Last_Name": f"Lead{i}", "Company": f"Company {i}", "Description": f"seeded {i}"}
        for i, lid in enumerate(lead_ids)
    }
    seeded_links: dict[tuple[str, str], dict[str, JSONValue]] = {}
    per_deal = min(sizes.links_per_deal, sizes.contacts)
    for did in deal_ids:
        for cid in rng.sample(contact_ids, per_deal):
            seeded_links[(did, cid)] = {"Contact_Role": {"id": rng.choice(ROLES)}}

    seed_doc: dict[str, Any] = {
        "records": {
            "Contacts": [{"id": cid, **fields} for cid, fields in contacts.items()],
            "Deals": [{"id": did, **fields} for did, fields in deals.items()],
            "Leads": [{"id": lid, **fields} for lid, fields in leads.items()],
        },
        "relations": [
            {"module": "Deals", "id": did, "related_list": "Contacts", "related_id": cid, "fields": dict(fields)}
            for (did, cid), fields in seeded_links.items()
        ],
    }

    # The expected state starts as the seed; each stream's rows are applied to it in file order.
    records = {
        "Contacts": {k: dict(v) for k, v in contacts.items()},
        "Deals": {k: dict(v) for k, v in deals.items()},
        "Leads": {k: dict(v) for k, v in leads.items()},
    }
    inserted: dict[str, dict[str, JSONValue]] = {}
    links = {k: dict(v) for k, v in seeded_links.items()}
    changes: dict[str, int] = {}
    keys: dict[str, list[str]] = {}  # stream -> the key each row changes (row seq = index + 1)
    streams: list[dict[str, Any]] = []

    # 1. update by external ID (CSV): repeated keys, empty cells are not sent.
    ext_pool = contact_ids[: sizes.ext_contacts]
    rows: list[list[object]] = []
    for seq in range(1, sizes.contact_updates + 1):
        cid = rng.choice(ext_pool)
        keys.setdefault("contacts_by_ext", []).append(cid)
        title = rng.choice(TITLES) if rng.random() < 0.75 else ""
        description = f"note {seq}" if rng.random() < 0.7 else ""
        rows.append([contact_ext[cid], f"L{seq}", title, description])
        rec = records["Contacts"][cid]
        rec["Last_Name"] = f"L{seq}"
        if title:
            rec["Title"] = title
        if description:
            rec["Description"] = description
    path = directory / "contacts_by_ext.csv"
    _write_csv(path, ["erp_id", "last_name", "title", "description"], rows)
    changes["contacts_by_ext"] = len(rows)
    streams.append(
        {
            "name": "contacts_by_ext",
            "operation": "update",
            "module": "Contacts",
            "source": {"kind": "csv", "path": str(path)},
            "match": {"column": "erp_id", "field": "External_Contact_ID"},
            "fields": {"Last_Name": "last_name", "Title": "title", "Description": "description"},
        }
    )

    # 2. update by record ID (JSONL): repeated keys, absent keys not sent, JSON nulls clear the field.
    jrows: list[dict[str, object]] = []
    for seq in range(1, sizes.lead_updates + 1):
        lid = rng.choice(lead_ids)
        keys.setdefault("leads_by_id", []).append(lid)
        row: dict[str, object] = {"crm_id": int(lid) if rng.random() < 0.2 else lid, "company": f"Co {seq}"}
        update: dict[str, JSONValue] = {"Company": f"Co {seq}"}
        if rng.random() < 0.6:
            revenue = round(rng.uniform(1_000, 5_000_000), 2)
            row["revenue"] = revenue
            update["Annual_Revenue"] = revenue
        if rng.random() < 0.5:
            status = rng.choice(STATUSES)
            row["status"] = status
            update["Lead_Status"] = status
        draw = rng.random()
        if draw < 0.2:
            row["description"] = None
            update["Description"] = None
        elif draw < 0.5:
            row["description"] = f"lead note {seq}"
            update["Description"] = f"lead note {seq}"
        jrows.append(row)
        records["Leads"][lid].update(update)
    path = directory / "leads_by_id.jsonl"
    _write_jsonl(path, jrows)
    changes["leads_by_id"] = len(jrows)
    streams.append(
        {
            "name": "leads_by_id",
            "operation": "update",
            "module": "Leads",
            "source": {"kind": "jsonl", "path": str(path)},
            "match": {"column": "crm_id"},
            "fields": {
                "Company": "company",
                "Annual_Revenue": {"column": "revenue", "type": "float"},
                "Lead_Status": "status",
                "Description": "description",
            },
        }
    )

    # 3. upsert by Email (CSV): existing contacts updated, new emails inserted (then maybe updated again).
    upsert_pool = contact_ids[sizes.ext_contacts :]
    by_email = {contact_email[cid]: cid for cid in upsert_pool}
    new_emails = [f"new{k}@example.org" for k in range(sizes.new_emails)]
    rows = []
    for seq in range(1, sizes.upserts + 1):
        if upsert_pool and rng.random() < 0.6:
            email = contact_email[rng.choice(upsert_pool)]
        else:
            email = rng.choice(new_emails)
        last_name, phone = f"U{seq}", f"+44 20 {seq:07d}"
        keys.setdefault("contacts_upsert", []).append(email)
        rows.append([email, last_name, phone])
        fields = {"Email": email, "Last_Name": last_name, "Phone": phone}
        if email in by_email:
            records["Contacts"][by_email[email]].update(fields)
        elif email in inserted:
            inserted[email].update(fields)
        else:
            inserted[email] = dict(fields)
    path = directory / "contacts_upsert.csv"
    _write_csv(path, ["email", "last_name", "phone"], rows)
    changes["contacts_upsert"] = len(rows)
    streams.append(
        {
            "name": "contacts_upsert",
            "operation": "upsert",
            "module": "Contacts",
            "source": {"kind": "csv", "path": str(path)},
            "match": {"column": "email", "field": "Email"},
            "duplicate_check_fields": ["Email"],
            "fields": {"Last_Name": "last_name", "Phone": "phone"},
        }
    )

    # Relations: each seeded link goes to at most one stream; new links are pairs not seeded.
    seeded = list(seeded_links)
    rng.shuffle(seeded)
    cut = _cutter(seeded)
    del_ids = cut(sizes.unlinks_ids)
    del_ext = cut(sizes.unlinks_ext)
    role_ext = cut(sizes.role_changes_ext)
    role_ids = cut(sizes.role_changes_ids)
    new_pairs: list[tuple[str, str]] = []
    taken = set(seeded_links)
    wanted = sizes.new_links_ext + sizes.new_links_ids
    while len(new_pairs) < wanted:
        pair = (rng.choice(deal_ids), rng.choice(contact_ids))
        if pair not in taken:
            taken.add(pair)
            new_pairs.append(pair)
    new_ext, new_ids = new_pairs[: sizes.new_links_ext], new_pairs[sizes.new_links_ext :]

    def link_rows(pairs: list[tuple[str, str]], stream_no: int) -> list[tuple[str, str, str]]:
        out = [(d, c, rng.choice(ROLES)) for d, c in pairs]
        rng.shuffle(out)
        for d, c, _ in list(out):
            if rng.random() < sizes.repeat_fraction:
                # The same relation again, elsewhere in the file, with another role: the later row wins.
                at = rng.randrange(len(out) + 1)
                out.insert(at, (d, c, rng.choice(ROLES)))
        # Each row's role id carries the row: the CRM keeps it, so every applied link names its source row.
        return [(d, c, role_mark(stream_no, seq, role)) for seq, (d, c, role) in enumerate(out, start=1)]

    def apply_links(rows_: list[tuple[str, str, str]]) -> None:
        for d, c, role in rows_:
            links.setdefault((d, c), {})["Contact_Role"] = {"id": role}

    # 4. update_related by external IDs (CSV)
    lrows = link_rows(role_ext + new_ext, 1)
    apply_links(lrows)
    path = directory / "deal_links_ext.csv"
    _write_csv(
        path, ["deal_erp_id", "contact_erp_id", "role_id"], [[deal_ext[d], contact_ext[c], r] for d, c, r in lrows]
    )
    changes["deal_links_ext"] = len(lrows)
    keys["deal_links_ext"] = [f"{d}/{c}" for d, c, _ in lrows]
    streams.append(
        {
            "name": "deal_links_ext",
            "operation": "update_related",
            "module": "Deals",
            "related_list": "Contacts",
            "source": {"kind": "csv", "path": str(path)},
            "parent": {"column": "deal_erp_id", "field": "External_Deal_ID"},
            "match": {"column": "contact_erp_id", "field": "External_Contact_ID"},
            "fields": {"Contact_Role": "role_id"},
        }
    )

    # 5. update_related by record ids (JSONL)
    lrows = link_rows(role_ids + new_ids, 2)
    apply_links(lrows)
    path = directory / "deal_links_ids.jsonl"
    _write_jsonl(path, [{"deal_id": d, "contact_id": c, "role": r} for d, c, r in lrows])
    changes["deal_links_ids"] = len(lrows)
    keys["deal_links_ids"] = [f"{d}/{c}" for d, c, _ in lrows]
    streams.append(
        {
            "name": "deal_links_ids",
            "operation": "update_related",
            "module": "Deals",
            "related_list": "Contacts",
            "source": {"kind": "jsonl", "path": str(path)},
            "parent": {"column": "deal_id"},
            "match": {"column": "contact_id"},
            "fields": {"Contact_Role": "role"},
        }
    )

    # 6. delete_related by record ids (CSV): one multi-delink call per deal, up to 100 ids.
    rng.shuffle(del_ids)
    for pair in del_ids:
        del links[pair]
    path = directory / "deal_unlinks_ids.csv"
    _write_csv(path, ["deal_id", "contact_id"], [[d, c] for d, c in del_ids])
    changes["deal_unlinks_ids"] = len(del_ids)
    keys["deal_unlinks_ids"] = [f"{d}/{c}" for d, c in del_ids]
    streams.append(
        {
            "name": "deal_unlinks_ids",
            "operation": "delete_related",
            "module": "Deals",
            "related_list": "Contacts",
            "source": {"kind": "csv", "path": str(path)},
            "parent": {"column": "deal_id"},
            "match": {"column": "contact_id"},
        }
    )

    # 7. delete_related by external IDs (CSV): one call per relation.
    for pair in del_ext:
        del links[pair]
    path = directory / "deal_unlinks_ext.csv"
    _write_csv(path, ["deal_erp_id", "contact_erp_id"], [[deal_ext[d], contact_ext[c]] for d, c in del_ext])
    changes["deal_unlinks_ext"] = len(del_ext)
    keys["deal_unlinks_ext"] = [f"{d}/{c}" for d, c in del_ext]
    streams.append(
        {
            "name": "deal_unlinks_ext",
            "operation": "delete_related",
            "module": "Deals",
            "related_list": "Contacts",
            "source": {"kind": "csv", "path": str(path)},
            "parent": {"column": "deal_erp_id", "field": "External_Deal_ID"},
            "match": {"column": "contact_erp_id", "field": "External_Contact_ID"},
        }
    )

    return Scenario(
        seed=seed_doc,
        streams=streams,
        changes=changes,
        expected=Expected(records=records, inserted=inserted, links=links),
        sizes=sizes,
        seeded_links=len(seeded_links),
        notes={"inserts": len(inserted), "links_at_end": len(links)},
        keys=keys,
        emails={cid: contact_email[cid] for cid in contact_ids},
    )


def _cutter(items: list[tuple[str, str]]) -> Callable[[int], list[tuple[str, str]]]:
    """Successive disjoint slices of ``items``."""
    start = 0

    def cut(n: int) -> list[tuple[str, str]]:
        nonlocal start
        if start + n > len(items):
            raise ValueError(f"the scenario needs {start + n} seeded links, only {len(items)} are seeded")
        part = items[start : start + n]
        start += n
        return part

    return cut


# ------------------------------------------------------------------------------------------------ history


def role_mark(stream_no: int, seq: int, role: str) -> str:
    """The role id that row ``seq`` of link stream ``stream_no`` (1 or 2) writes, standing for ``role``."""
    return f"111111{stream_no}{seq:08d}{ROLES.index(role):03d}"


def _role_row(role_id: object) -> tuple[str, int] | None:
    """(stream, row) of a role id written by :func:`role_mark`; None for any other id (a seeded role)."""
    if not isinstance(role_id, str) or len(role_id) != 18 or not role_id.isdigit() or role_id[6] not in "12":
        return None
    return ROLE_STREAMS[int(role_id[6]) - 1], int(role_id[7:15])


class Write(NamedTuple):
    """One applied write of the sandbox's history, traced back to the source row whose marker it carries."""

    n: int  # its history entry
    stream: str
    key: str  # as in ``Scenario.keys``
    seq: int  # the row it carries; a merged write carries its newest row (fields merged, later wins)


def _marked(value: object, prefix: str) -> int | None:
    if isinstance(value, str) and value.startswith(prefix) and value[len(prefix) :].isdigit():
        return int(value[len(prefix) :])
    return None


def trace_history(scenario: Scenario, entries: Iterable[Mapping[str, Any]]) -> tuple[list[Write], list[str]]:
    """Every entry of a sandbox history (``SandboxState.history``) as the write of a source row, by the
    marker each row carries into the CRM: ``Last_Name`` ``L<row>`` (``contacts_by_ext``) or ``U<row>``
    (``contacts_upsert``), ``Company`` ``Co <row>`` (``leads_by_id``), the role id (:func:`role_mark`) of a
    link; an unlink is the one row that removes its relation. Also returns every entry that no source row
    asked for, or whose marker names a row of another key."""
    unlinks = {
        key: (stream, seq)
        for stream in ("deal_unlinks_ids", "deal_unlinks_ext")
        for seq, key in enumerate(scenario.keys.get(stream, ()), start=1)
    }
    email_of = dict(scenario.emails)  # record id -> Email, for the upsert's updates; its inserts add theirs
    writes: list[Write] = []
    strange: list[str] = []
    for entry in entries:
        op, module, rid, fields = entry["op"], entry["module"], str(entry["id"]), entry["fields"]
        stream, key, seq = "", "", None
        if op in ("update", "insert") and module == "Contacts" and isinstance(fields, Mapping):
            last = fields.get("Last_Name")
            if (seq := _marked(last, "L")) is not None:
                stream, key = "contacts_by_ext", rid
            elif (seq := _marked(last, "U")) is not None:
                email = fields.get("Email")
                if isinstance(email, str):
                    email_of.setdefault(rid, email)
                stream, key = "contacts_upsert", str(email if isinstance(email, str) else email_of.get(rid))
        elif op == "update" and module == "Leads" and isinstance(fields, Mapping):
            seq, stream, key = _marked(fields.get("Company"), "Co "), "leads_by_id", rid
        elif op in ("link", "unlink") and module in ("Deals", "Contacts"):
            other = str(entry["related_id"])
            key = f"{rid}/{other}" if module == "Deals" else f"{other}/{rid}"
            if op == "unlink":
                stream, seq = unlinks.get(key, ("", None))
            elif isinstance(fields, Mapping) and isinstance(role := fields.get("Contact_Role"), Mapping):
                stream, seq = _role_row(role.get("id")) or ("", None)
        rows = scenario.keys.get(stream, [])
        if seq is None or not 1 <= seq <= len(rows) or rows[seq - 1] != key:
            strange.append(f"history n={entry['n']}: {op} {module} {rid} {fields} (no source row of this key)")
            continue
        writes.append(Write(int(entry["n"]), stream, key, seq))
    return writes, strange


@dataclass(slots=True)
class Audit:
    """What the history says about order and repetition (see :func:`audit_history`)."""

    writes: int = 0
    inversions: list[str] = field(default_factory=list)  # a key given an older row after a newer one
    applied_again: int = 0  # applications of a change beyond its first
    again_across: int = 0  # ... whose previous application was by an earlier process (a kill, a resume)
    again_within: int = 0  # ... by the same process (a retry, e.g. after a connection dropped after applying)
    changes_applied_again: int = 0  # distinct changes applied more than once
    # process -> changes it applied that a later process applied again (what its kill cost)
    again_after: dict[int, int] = field(default_factory=dict)
    unapplied: list[str] = field(default_factory=list)  # changes that no write applied
    by_history: int = 0  # writes whose rows were inferred from the history: no journaled call ends with them
    journal_problems: list[str] = field(default_factory=list)  # journaled records mixing keys

    def figures(self) -> dict[str, object]:
        return {
            "history_writes": self.writes,
            "inversions": len(self.inversions),
            "applied_more_than_once": self.applied_again,
            "applied_again_across_kills": self.again_across,
            "applied_again_within_a_process": self.again_within,
            "changes_applied_more_than_once": self.changes_applied_again,
            "changes_never_applied": len(self.unapplied),
            "writes_without_journaled_group": self.by_history,
        }


def audit_history(
    scenario: Scenario,
    writes: Sequence[Write],
    journal: Iterable[tuple[int, str, Sequence[int]]],
    process_of: Callable[[int], int],
) -> Audit:
    """Walk the writes in apply order, per key (a record, or a relation).

    - **Order**: a write of a row older than the newest row the key already received is an inversion (row
      order is the stream's source order; a merged write carries its newest row).
    - **Repetition**: each write applies the changes merged into its record. Which they are comes from the
      engine's dispatch journal (``journal``: per record of each journaled call, the process that sent it,
      its stream and the seqs merged into it): the record of the same process, stream and newest row. A
      write that no journaled record matches applies the key's rows after the newest row already applied
      below it. A change applied again is counted per application beyond the first, ``across`` when its
      previous application was by another process (``process_of``: history entry -> process), else
      ``within``.
    """
    audit = Audit(writes=len(writes))
    groups: dict[tuple[int, str, int], set[int]] = {}
    for process, stream, seqs in journal:
        rows = scenario.keys.get(stream, [])
        if not seqs:
            continue
        newest = max(seqs)
        if any(not 1 <= s <= len(rows) or rows[s - 1] != rows[newest - 1] for s in seqs):
            audit.journal_problems.append(f"{stream}: a journaled record merges rows of several keys: {seqs}")
            continue
        groups.setdefault((process, stream, newest), set()).update(seqs)
    by_key: dict[tuple[str, str], list[int]] = {}
    for stream, rows in scenario.keys.items():
        for seq, key in enumerate(rows, start=1):
            by_key.setdefault((stream, key), []).append(seq)
    held: dict[tuple[str, str], int] = {}
    received: dict[tuple[str, str], list[int]] = {}  # every row a key was written with, in apply order
    applied: dict[tuple[str, int], list[int]] = {}  # change -> the process of each application
    for w in writes:
        k = (w.stream, w.key)
        newest = held.get(k, 0)
        if w.seq < newest:
            audit.inversions.append(f"{w.stream} {w.key}: row {w.seq} applied (history n={w.n}) after row {newest}")
        held[k] = max(w.seq, newest)
        process = process_of(w.n)
        covered = groups.get((process, w.stream, w.seq))
        if covered is None:
            audit.by_history += 1
            below = max((s for s in received.get(k, ()) if s < w.seq), default=0)
            covered = {s for s in by_key[k] if below < s <= w.seq}
        received.setdefault(k, []).append(w.seq)
        for s in covered:
            applied.setdefault((w.stream, s), []).append(process)
    for stream, n in scenario.changes.items():
        for seq in range(1, n + 1):
            processes = applied.get((stream, seq), [])
            if not processes:
                audit.unapplied.append(f"{stream} row {seq} ({scenario.keys[stream][seq - 1]})")
                continue
            if len(processes) > 1:
                audit.changes_applied_again += 1
            for before, after in itertools.pairwise(processes):
                audit.applied_again += 1
                if before == after:
                    audit.again_within += 1
                else:
                    audit.again_across += 1
                    audit.again_after[before] = audit.again_after.get(before, 0) + 1
    return audit


def publish_figures(
    name: str, figures: Mapping[str, object], directory: Path, record: Callable[[str, object], None] | None
) -> str:
    """Write the figures to ``directory/<name>-figures.json``, hand them to ``record_property``, and return
    the one-line summary to print (pytest -rA shows it under the test's captured output)."""
    path = directory / f"{name}-figures.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if record is not None:
        for key, value in figures.items():
            record(key, value)
    line = f"{name} figures: " + ", ".join(f"{k}={v}" for k, v in figures.items()) + f" (written to {path})"
    print(line)
    return line
