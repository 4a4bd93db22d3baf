"""What one simulated scenario is: a seeded CRM, and steps (runs, kills, retries) with their exports and faults.

A :class:`Spec` is plain data and round-trips through JSON, so a failing scenario is printed and replayed as
it was. :func:`generate` draws one from a ``random.Random``; under Hypothesis that is ``st.randoms()``, whose
draws shrink towards zero, so every "feature on" choice is written to be off at zero (``_chance``) and every
count to be smallest at zero: a shrunk scenario is a small one.

Streams (each CRM object is written by one stream only, so the order across streams never matters):

- ``contacts``: update Contacts by ``External_Contact_ID`` (CSV; empty cells are not sent);
- ``leads``: update Leads by record id (JSONL; ``null`` clears a field, an absent key is not sent);
- ``links``: update_related Deals->Contacts by external IDs (CSV), ``deleted = true`` rows delink the pair;
- ``unlinks``: delete_related Deals->Contacts by record ids (CSV, one ``?ids=`` call per deal);
- ``phones``: update Contacts by ``External_Contact_ID`` too (JSONL), but only ``Phone``: the same records as
  ``contacts``, other fields, so their order across the two streams does not matter.

Every row carries ``version``: a global integer given when the row's content was made (an unchanged row of a
re-export keeps it). The sim schema maps it to ``Source_Seq`` (records and relations), so the sandbox history
says which row every applied write came from (``phones`` has its own, ``Source_Seq2``).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CONTACT_ID0",
    "DEFAULT",
    "Profile",
    "DEAL_ID0",
    "LEAD_ID0",
    "ROLES",
    "STREAMS",
    "Spec",
    "Step",
    "contact_id",
    "deal_id",
    "generate",
    "lead_id",
]

STREAMS = ("contacts", "leads", "links", "unlinks", "phones")
ROLES = ("111111000000026002", "111111000000026003", "111111000000026004")
TITLES = ("CEO", "CFO", "Buyer", "Engineer")
CONTACT_ID0 = 111111000001000000
DEAL_ID0 = 111111000002000000
LEAD_ID0 = 111111000003000000
UNKNOWN_LEAD = "111111000009999999"  # a record id the CRM does not hold: its rows are REJECTED

Row = dict[str, Any]  # column -> value as written; keys starting with "_" are not written (meta)


def contact_id(i: int) -> str:
    return str(CONTACT_ID0 + i)


def deal_id(i: int) -> str:
    return str(DEAL_ID0 + i)


def lead_id(i: int) -> str:
    return str(LEAD_ID0 + i)


@dataclass(slots=True, kw_only=True)
class Step:
    """One step: ``run`` (in process), ``kill`` (a real process, SIGKILLed, then resumed) or ``retry``."""

    kind: str
    exports: dict[str, list[Row]] = field(default_factory=dict)  # run and kill: the stream's rows, in order
    full: bool = False  # run --full: skip-unchanged off
    faults: dict[str, float] = field(default_factory=dict)  # sandbox options for the step
    expire_tokens: bool = False  # every issued token revoked every 15-60 ms while the run goes (they live 0.3 s)
    flaky: bool = False  # few tries (2), so transient faults end as FAILED, for a later retry
    kill_after: int = 1  # kill: SIGKILL once the sandbox applied this many writes of the step
    kills: int = 1  # kill: processes killed in a row (the later ones run ``run --resume``), then resumed
    storms: bool = False  # 429 storms (90% refused, 10-40 ms, every 20-60 ms), each revoking every token


@dataclass(slots=True, kw_only=True)
class Spec:
    """A whole scenario: what the CRM holds at the start, how the engine is set up, and the steps."""

    seed: int  # the sandbox's fault seed
    contacts: int
    leads: int
    deals: int
    link_pairs: list[tuple[int, int]]  # (deal, contact) pairs the links stream owns
    unlink_pairs: list[tuple[int, int]]  # pairs the unlinks stream owns (disjoint from link_pairs)
    seeded_links: list[tuple[int, int, int]]  # (deal, contact, role) linked at the start
    concurrency: int
    batch_size: int
    linger_ms: int
    steps: list[Step]
    strict: bool = False  # the sandbox's real-Zoho profile (``SandboxOptions(strict=True)``)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        raw = json.loads(text)
        raw["steps"] = [Step(**s) for s in raw["steps"]]
        for name in ("link_pairs", "unlink_pairs", "seeded_links"):
            raw[name] = [tuple(p) for p in raw[name]]
        return cls(**raw)

    def describe(self) -> str:
        """A short schedule: one line per step."""
        lines = [
            f"seed={self.seed} contacts={self.contacts} leads={self.leads} deals={self.deals} "
            f"concurrency={self.concurrency} batch_size={self.batch_size} linger_ms={self.linger_ms} "
            f"seeded_links={len(self.seeded_links)} strict={self.strict}"
        ]
        for i, s in enumerate(self.steps):
            rows = {k: len(v) for k, v in s.exports.items()}
            extra = f" kill_after={s.kill_after} kills={s.kills}" if s.kind == "kill" else ""
            lines.append(
                f"  step {i}: {s.kind} full={s.full} faults={s.faults} expire={s.expire_tokens} "
                f"storms={s.storms} flaky={s.flaky}{extra} rows={rows}"
            )
        return "\n".join(lines)


def _chance(rng: random.Random, p: float) -> bool:
    """True with probability ``p``, False when the draw shrinks to zero."""
    return rng.random() >= 1.0 - p


class _Versions:
    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


def _contact_row(rng: random.Random, spec: Spec, v: _Versions) -> Row:
    version = v.next()
    bad = rng.random()
    if bad >= 0.94:  # refused before sending: no key, or a version that is not an integer
        if _chance(rng, 0.5):
            return {"erp_id": "", "last_name": f"L{version}", "title": "", "dept": "", "version": version, "_bad": 1}
        return {"erp_id": "C0", "last_name": "", "title": "", "dept": "", "version": f"v{version}?", "_bad": 1}
    erp = f"CX{rng.randint(0, 1)}" if bad >= 0.90 else f"C{rng.randint(0, spec.contacts - 1)}"
    if bad >= 0.87 and bad < 0.90:  # the CRM refuses it: Last_Name is longer than 80 characters
        return {"erp_id": erp, "last_name": "N" * 81, "title": "CEO", "dept": "", "version": version, "_refused": 1}
    return {
        "erp_id": erp,
        "last_name": f"L{version}" if _chance(rng, 0.5) else "",
        "title": rng.choice(TITLES) if _chance(rng, 0.6) else "",
        "dept": f"D{version}" if _chance(rng, 0.4) else "",
        "version": version,
    }


def _lead_row(rng: random.Random, spec: Spec, v: _Versions) -> Row:
    version = v.next()
    bad = rng.random()
    if bad >= 0.94:
        return {"crm_id": f"L-{version}", "company": f"Co{version}", "version": version, "_bad": 1}
    row: Row = {"crm_id": UNKNOWN_LEAD if bad >= 0.90 else lead_id(rng.randint(0, spec.leads - 1))}
    if bad >= 0.87 and bad < 0.90:  # the CRM refuses it: Company is longer than 200 characters
        return {**row, "company": "C" * 201, "version": version, "_refused": 1}
    if _chance(rng, 0.3):
        row["crm_id"] = int(row["crm_id"])  # a JSON number is a record id too
    if _chance(rng, 0.7):
        row["company"] = f"Co{version}"
    draw = rng.random()
    if draw >= 0.75:
        row["description"] = None  # clears the field
    elif draw >= 0.4:
        row["description"] = f"note {version}"
    row["version"] = version
    return row


def _link_row(rng: random.Random, spec: Spec, v: _Versions) -> Row:
    version = v.next()
    d, c = spec.link_pairs[rng.randint(0, len(spec.link_pairs) - 1)]
    if _chance(rng, 0.04):
        return {"deal": f"D{d}", "contact": "", "role": "", "deleted": "", "version": version, "_bad": 1}
    deleted = _chance(rng, 0.35)
    role = "" if deleted or not _chance(rng, 0.8) else rng.choice(ROLES)
    return {"deal": f"D{d}", "contact": f"C{c}", "role": role, "deleted": "true" if deleted else "", "version": version}


def _unlink_row(rng: random.Random, spec: Spec, v: _Versions) -> Row:
    version = v.next()
    d, c = spec.unlink_pairs[rng.randint(0, len(spec.unlink_pairs) - 1)]
    if _chance(rng, 0.04):
        return {"deal_id": deal_id(d), "contact_id": "x", "version": version, "_bad": 1}
    return {"deal_id": deal_id(d), "contact_id": contact_id(c), "version": version}


def _phone_row(rng: random.Random, spec: Spec, v: _Versions) -> Row:
    version = v.next()
    bad = rng.random()
    if bad >= 0.95:
        return {"erp": "", "phone": f"+1 {version}", "version": version, "_bad": 1}
    erp = "CX0" if bad >= 0.91 else f"C{rng.randint(0, spec.contacts - 1)}"
    return {"erp": erp, "phone": None if _chance(rng, 0.2) else f"+1 555 {version:04d}", "version": version}


_MAKERS = {
    "contacts": _contact_row,
    "leads": _lead_row,
    "links": _link_row,
    "unlinks": _unlink_row,
    "phones": _phone_row,
}


def _fresh_export(rng: random.Random, spec: Spec, v: _Versions, stream: str) -> list[Row]:
    """2-20 rows; a key often has several rows, spread apart by a shuffle."""
    make = _MAKERS[stream]
    rows: list[Row] = []
    for _ in range(rng.randint(1, 12)):
        row = make(rng, spec, v)
        rows.append(row)
        if _chance(rng, 0.6) and not row.get("_bad"):
            for _ in range(rng.randint(1, 4)):  # the same key again, with new content
                rows.append(_same_key(stream, row, make(rng, spec, v)))
    rng.shuffle(rows)
    return rows


def _same_key(stream: str, row: Row, other: Row) -> Row:
    """``other``'s content under ``row``'s key (a bad ``other`` stays as it is: its key is what makes it bad)."""
    if other.get("_bad") or row.get("_bad"):
        return other
    keys = {
        "contacts": ("erp_id",),
        "leads": ("crm_id",),
        "links": ("deal", "contact"),
        "unlinks": ("deal_id",),
        "phones": ("erp",),
    }
    out = dict(other)
    for k in keys[stream]:
        out[k] = row[k]
    if stream == "unlinks":
        out["contact_id"] = row["contact_id"]
    return out


def _edit_export(rng: random.Random, spec: Spec, v: _Versions, stream: str, rows: list[Row]) -> list[Row]:
    """The next export of a stream: most rows unchanged (same version), some edited, dropped, added or moved."""
    out: list[Row] = []
    make = _MAKERS[stream]
    for row in rows:
        if _chance(rng, 0.1):
            continue  # gone from the export
        if _chance(rng, 0.2):
            out.append(_same_key(stream, row, make(rng, spec, v)))  # edited: new content, new version
        else:
            out.append(row)
    for _ in range(rng.randint(0, 3) if _chance(rng, 0.6) else 0):
        fresh = make(rng, spec, v)
        if out and _chance(rng, 0.5):
            fresh = _same_key(stream, out[rng.randint(0, len(out) - 1)], fresh)
        out.insert(rng.randint(0, len(out)), fresh)
    if len(out) > 1 and _chance(rng, 0.15):
        moved = out.pop(rng.randint(0, len(out) - 1))
        out.insert(rng.randint(0, len(out)), moved)
    return out


def _faults(rng: random.Random) -> tuple[dict[str, float], bool]:
    faults: dict[str, float] = {}
    if _chance(rng, 0.35):
        faults["error_rate"] = rng.choice((0.05, 0.15, 0.3))
    if _chance(rng, 0.35):
        faults["drop_rate"] = rng.choice((0.05, 0.15, 0.3))
    if _chance(rng, 0.2):
        faults["throttle_rate"] = rng.choice((0.2, 0.5))
    if _chance(rng, 0.25):
        faults["lock_rate"] = rng.choice((0.05, 0.2))
    return faults, _chance(rng, 0.2)


def _pairs(rng: random.Random, deals: int, contacts: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    every = [(d, c) for d in range(deals) for c in range(contacts)]
    rng.shuffle(every)
    n_links = rng.randint(1, max(1, min(6, len(every) - 1)))
    n_unlinks = rng.randint(1, max(1, min(6, len(every) - n_links)))
    return every[:n_links], every[n_links : n_links + n_unlinks]


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """How :func:`generate` draws: the default is the suite's mix; narrower ones isolate one kind of trouble."""

    steps: tuple[int, int] = (2, 5)  # how many run or kill steps (a flaky run adds a retry step)
    kill_chance: float = 0.03  # per step: a real process, SIGKILLed, then resumed
    first_kill: bool = False  # the first step is a kill
    fault_chance: float = 1.0  # scale of every fault's chance
    full_chance: float = 0.25  # per re-run: --full
    flaky_chance: float = 0.3  # per faulty run: few tries, then a retry step
    edit_chance: float = 0.6  # per re-run: the export is edited (else the same export again)


DEFAULT = Profile()


def _step(rng: random.Random, profile: Profile, i: int, exports: dict[str, list[Row]]) -> Step:
    kill = (i == 0 and profile.first_kill) or _chance(rng, profile.kill_chance)
    faulty = not kill and _chance(rng, profile.fault_chance)
    faults, expire = _faults(rng) if faulty else ({}, False)
    return Step(
        kind="kill" if kill else "run",
        exports={s: list(rows) for s, rows in exports.items()},
        full=i > 0 and _chance(rng, profile.full_chance),
        faults=faults,
        expire_tokens=expire,
        flaky=not kill and bool(faults) and _chance(rng, profile.flaky_chance),
        kill_after=rng.randint(1, 4),
        kills=rng.randint(1, 2) if kill else 1,
        storms=faulty and _chance(rng, 0.15),
    )


def generate(rng: random.Random, profile: Profile = DEFAULT) -> Spec:
    """One scenario drawn from ``rng``."""
    contacts, leads, deals = rng.randint(2, 6), rng.randint(1, 4), rng.randint(1, 3)
    link_pairs, unlink_pairs = _pairs(rng, deals, contacts)
    seeded = [(d, c, rng.randint(0, len(ROLES) - 1)) for d, c in link_pairs + unlink_pairs if _chance(rng, 0.5)]
    spec = Spec(
        seed=rng.randint(0, 2**31),
        contacts=contacts,
        leads=leads,
        deals=deals,
        link_pairs=link_pairs,
        unlink_pairs=unlink_pairs,
        seeded_links=seeded,
        concurrency=rng.choice((1, 2, 4)),
        batch_size=rng.choice((100, 3, 1, 10)),
        linger_ms=rng.choice((20, 0, 100)),
        steps=[],
    )
    versions = _Versions()
    streams = [s for s in STREAMS if _chance(rng, 0.6)] or [STREAMS[rng.randint(0, len(STREAMS) - 1)]]
    exports = {s: _fresh_export(rng, spec, versions, s) for s in streams}
    for i in range(rng.randint(*profile.steps)):
        if i and _chance(rng, profile.edit_chance):
            exports = {s: _edit_export(rng, spec, versions, s, rows) for s, rows in exports.items()}
        step = _step(rng, profile, i, exports)
        spec.steps.append(step)
        if step.flaky:
            spec.steps.append(Step(kind="retry"))
    spec.strict = _chance(rng, 0.5)  # drawn last, so the rest of a seeded scenario is as it was
    _settle_refusals(spec)
    return spec


def _settle_refusals(spec: Spec) -> None:
    """A row the CRM refuses stays so only where its key has no other row in the export.

    Coalesced with another row of its key, whether the CRM sees the bad value depends on how the engine
    merged them (later fields win), which the model cannot know; such a row becomes a plain valid row (in
    place, so every step that holds it agrees).
    """
    for step in spec.steps:
        for stream, rows in step.exports.items():
            if stream not in ("contacts", "leads"):
                continue
            column = "erp_id" if stream == "contacts" else "crm_id"
            counts: dict[str, int] = {}
            for row in rows:
                if not row.get("_bad"):
                    counts[str(row[column])] = counts.get(str(row[column]), 0) + 1
            for row in rows:
                if row.get("_refused") and counts[str(row[column])] > 1:
                    del row["_refused"]
                    row["last_name" if stream == "contacts" else "company"] = f"R{row['version']}"
