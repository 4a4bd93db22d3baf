"""The three checks run after every step: history never goes backwards, outcomes agree with it, state = model.

(b) A write applied in step r for key K is *backwards* when the previous applied write of K came from the row
of version u, this one from the row of version v, and in step r's export the row of u is at a later position
than the row of v (a u that is not in the export is older than every row of it). A write whose version is not
in the export at all is a violation too (the engine sent something the source no longer says). A delink
carries no version: it is attributed to the *group* of delink rows of its pair that starts at the first delink
row after the row the CRM held and runs until the pair's next link row (the engine may coalesce them into one
delink), and it carries the version of the group's last row.

(c) Every outcome must agree with the history: SUCCESS only for a write the CRM applied in this run (a merged
write counts for every row it covers: same key, a version at or after the row, and the row's fields among
its fields) or, for a delink, an unlink of the pair attributed to that row's group (a later delink of a
group finds the relation gone: the CRM provably holds what it asks), or a delink whose note says it is
ambiguous when an earlier try may really have reached the CRM (faults, or a killed process), or a delink that
superseded a link of its pair in its record and finds the pair absent; SKIPPED only when the CRM holds that row
or a later one; REJECTED only for a row the CRM refuses (unknown key) or a delink that removed nothing (not
the first row of a group that was applied); INVALID exactly for the bad rows; FAILED only under faults; one
outcome per change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncengine.ledger import OutcomeRow, RunSummary
from syncengine.model import Status
from tests.sim.model import Chg, Export, Key, entry_keys, version_field

__all__ = ["Applied", "History", "Violation", "check_outcomes", "check_summary"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken promise: which check, after which step, what was seen."""

    check: str  # state | history | outcome | summary
    step: int
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] step {self.step}: {self.message}"


@dataclass(slots=True)
class Applied:
    """What the CRM applied in one step, per key: (history entry, the version it is attributed to)."""

    writes: dict[Key, list[tuple[Mapping[str, Any], int | None]]] = field(default_factory=dict)
    groups: dict[Key, list[list[int | None]]] = field(default_factory=dict)  # versions of each unlink's group


class History:
    """Walks the sandbox's history step by step, remembering per key which row's effect the CRM holds."""

    def __init__(self) -> None:
        self.held: dict[Key, int | None] = {}

    def step(
        self, number: int, export: Export, entries: Iterable[Mapping[str, Any]]
    ) -> tuple[Applied, list[Violation]]:
        applied = Applied()
        problems: list[Violation] = []
        for entry, key in ((e, k) for e in entries for k in entry_keys(e)):
            before = self.held.get(key)
            at_before = export.position(key, before)
            after_pos = -1 if at_before is None else at_before
            if entry["op"] == "unlink":
                group = _group(export.by_key.get(key, []), after_pos)
                if not group:
                    msg = f"{_name(key)}: BACKWARDS delink: applied (n={entry['n']}) while the CRM held the row of "
                    msg += f"version {before} (position {at_before}), and no delink row of the pair follows that row"
                    problems.append(Violation("history", number, msg))
                    version = None
                else:
                    version = group[-1]
                    applied.groups.setdefault(key, []).append(group)
            else:
                raw = entry["fields"].get(version_field(key))
                version = raw if isinstance(raw, int) else None
                at = export.position(key, version)
                if at is None:
                    problems.append(
                        Violation("history", number, f"{_name(key)}: write n={entry['n']} of version {version} "
                                  f"{dict(entry['fields'])} is not a row of this step's export"))  # fmt: skip
                elif at_before is not None and at_before > at:
                    problems.append(
                        Violation("history", number, f"{_name(key)}: BACKWARDS: write n={entry['n']} of version "
                                  f"{version} (position {at}) applied after version {before} (position "
                                  f"{at_before}) {dict(entry['fields'])}"))  # fmt: skip
            applied.writes.setdefault(key, []).append((entry, version))
            self.held[key] = version
        return applied, problems


def _group(changes: Sequence[Chg], after: int) -> list[int | None]:
    """Versions of the delink rows from the first one after position ``after`` up to the next link row."""
    out: list[int | None] = []
    for chg in changes:
        if chg.seq <= after:
            continue
        if chg.op == "unlink":
            out.append(chg.version)
        elif out:
            break
    return out


def _name(key: Key) -> str:
    return f"{key[1]} {key[2]}" if key[0] == "rec" else f"link Deal {key[1]} - Contact {key[2]}"


def _success_ok(chg: Chg, applied: Applied, export: Export) -> bool:
    if chg.op == "unlink":
        if any(chg.version in group for group in applied.groups.get(chg.key, [])):
            return True
        # A record that merged the pair's held rows goes out as its trailing delinks (the links and delinks
        # before the last link superseded): those delink rows are the ones the applied unlink stands for.
        later = [c for c in export.by_key.get(chg.key, []) if c.seq > chg.seq]
        unlinked = any(entry["op"] == "unlink" for entry, _ in applied.writes.get(chg.key, []))
        return unlinked and not any(c.op == "link" for c in later)
    for entry, version in applied.writes.get(chg.key, []):
        if entry["op"] == "unlink":
            continue
        at = export.position(chg.key, version)
        if at is not None and at >= chg.seq and set(chg.fields) <= set(entry["fields"]):
            return True
    return False


Current = Callable[[Key], Mapping[str, Any] | None]  # what the CRM holds for a key now (None: no record/link)


def _absent_ok(chg: Chg, row: OutcomeRow, current: Current, uncertain: bool) -> bool:
    """A delink that removed nothing in this step, reported SUCCESS, is right in two cases (DESIGN §3):
    its note says the evidence is ambiguous and an earlier try may really have reached the CRM (a dropped
    connection or a 5xx, or a killed process's journaled call), or the pair is absent and the record carried
    a link of it that the delink superseded (the CRM holds what the two leave)."""
    if chg.op != "unlink":
        return False
    if row.note and "ambiguous" in row.note:
        return uncertain
    return (row.message or "").startswith("relation absent") and current(chg.key) is None


def _skip_ok(chg: Chg, held: Mapping[Key, int | None], export: Export, current: Current) -> bool:
    """The CRM holds this row or a later one, and every field the row would write has the row's value
    (or a later row of the key writes that field, or delinks the pair). A delink of a pair the CRM does not
    hold is a no-op whatever row the history says the pair was last written by."""
    if chg.op == "unlink" and current(chg.key) is None:
        return True
    later = [c for c in export.by_key.get(chg.key, []) if c.seq > chg.seq]
    if chg.op == "link" and any(c.op == "unlink" for c in later):
        return True  # a later delink of the pair erases what this link would write (the state check sees it)
    at = export.position(chg.key, held.get(chg.key))
    if at is None or at < chg.seq:
        return False
    now = current(chg.key)
    if chg.op == "unlink":
        return now is None or any(c.op == "link" for c in later)
    if now is None:
        return False
    overridden = {name for c in later for name in c.fields}
    return all(now.get(name) == value or name in overridden for name, value in chg.fields.items())


def _rejected_ok(chg: Chg, applied: Applied) -> bool:
    if chg.bad == "rejected":
        return True
    if chg.op != "unlink" or chg.bad is not None:
        return False
    return not any(group[0] == chg.version for group in applied.groups.get(chg.key, []))


def check_outcomes(
    number: int,
    export: Export,
    expected: set[tuple[str, int]],
    rows: Sequence[OutcomeRow],
    applied: Applied,
    held: Mapping[Key, int | None],
    current: Current,
    faulty: bool,
) -> tuple[list[Violation], set[Key]]:
    """Check every outcome row of a step's run; returns the violations and the keys left FAILED."""
    problems: list[Violation] = []
    seen = Counter((r.stream, r.seq) for r in rows)
    twice = sorted(k for k, n in seen.items() if n > 1)
    missing = sorted(expected - seen.keys())
    extra = sorted(seen.keys() - expected)
    for what, keys in (("more than one outcome", twice), ("no outcome", missing), ("an unexpected outcome", extra)):
        if keys:
            problems.append(Violation("outcome", number, f"{len(keys)} changes have {what}: {keys[:8]}"))
    failed: set[Key] = set()
    for row in rows:
        chg = export.changes.get((row.stream, row.seq))
        if chg is None:
            continue
        status = row.status
        ok = True
        if chg.bad == "invalid" or status is Status.INVALID:
            ok = chg.bad == "invalid" and status is Status.INVALID
        elif status is Status.SUCCESS:
            ok = chg.bad is None and (_success_ok(chg, applied, export) or _absent_ok(chg, row, current, faulty))
        elif status is Status.SKIPPED:
            ok = chg.bad is None and _skip_ok(chg, held, export, current)
        elif status is Status.REJECTED:
            ok = _rejected_ok(chg, applied)
        elif status is Status.FAILED:
            ok = faulty
            failed.add(chg.key)
        else:
            ok = False
        if not ok:
            writes = [(e["n"], e["op"], v) for e, v in applied.writes.get(chg.key, [])]
            problems.append(
                Violation("outcome", number, f"{row.stream}#{row.seq} {chg.op} {_name(chg.key)} v{chg.version} "
                          f"(bad={chg.bad}) is {status.value} {row.code} {row.message!r} note={row.note!r}; "
                          f"applied this step (n, op, version): {writes}"))  # fmt: skip
    return problems, failed


def check_summary(number: int, summary: RunSummary, expected: int) -> list[Violation]:
    """The run completed; read = succeeded + rejected + failed + invalid + skipped + pending, as expected."""
    problems: list[Violation] = []
    s = summary
    if not s.adds_up:
        problems.append(Violation("summary", number, f"the summary does not add up: {s}"))
    if s.read != expected or s.pending or s.state != "completed":
        problems.append(
            Violation("summary", number, f"run {s.run_id} state={s.state} read={s.read} (expected {expected}) "
                      f"pending={s.pending} succeeded={s.succeeded} rejected={s.rejected} failed={s.failed} "
                      f"invalid={s.invalid} skipped={s.skipped}"))  # fmt: skip
    return problems
