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
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Expected", "Scenario", "Sizes", "build_scenario", "publish_figures"]

JSONValue = Any

ROLES = ("111111000000026002", "111111000000026003", "111111000000026004", "111111000000026005")
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
    streams: list[dict[str, Any]] = []

    # 1. update by external ID (CSV): repeated keys, empty cells are not sent.
    ext_pool = contact_ids[: sizes.ext_contacts]
    rows: list[list[object]] = []
    for seq in range(1, sizes.contact_updates + 1):
        cid = rng.choice(ext_pool)
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

    def link_rows(pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
        out = [(d, c, rng.choice(ROLES)) for d, c in pairs]
        rng.shuffle(out)
        for d, c, _ in list(out):
            if rng.random() < sizes.repeat_fraction:
                # The same relation again, elsewhere in the file, with another role: the later row wins.
                at = rng.randrange(len(out) + 1)
                out.insert(at, (d, c, rng.choice(ROLES)))
        return out

    def apply_links(rows_: list[tuple[str, str, str]]) -> None:
        for d, c, role in rows_:
            links.setdefault((d, c), {})["Contact_Role"] = {"id": role}

    # 4. update_related by external IDs (CSV)
    lrows = link_rows(role_ext + new_ext)
    apply_links(lrows)
    path = directory / "deal_links_ext.csv"
    _write_csv(
        path, ["deal_erp_id", "contact_erp_id", "role_id"], [[deal_ext[d], contact_ext[c], r] for d, c, r in lrows]
    )
    changes["deal_links_ext"] = len(lrows)
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
    lrows = link_rows(role_ids + new_ids)
    apply_links(lrows)
    path = directory / "deal_links_ids.jsonl"
    _write_jsonl(path, [{"deal_id": d, "contact_id": c, "role": r} for d, c, r in lrows])
    changes["deal_links_ids"] = len(lrows)
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
