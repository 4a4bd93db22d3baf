"""Skip-unchanged's rule (``syncengine.unchanged``) against a model of one key's CRM state, with Hypothesis.

Each example is a key's history (the rows of an earlier export, all applied) and a new export made from it
by edits (rows kept, changed, dropped, inserted, repeated). The rule decides each row of the new export while
a ledger model commits what it sends and skips, with lookups that may be stale by a chunk. Checked:

- the CRM ends as if every row of the new export had been applied in order;
- no write is older than the write before it (a row kept from the earlier export is as old as it was);
- a new export equal to the earlier one sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.ledger.chains import Chain
from syncengine.model import JSON, Change, Operation, Outcome, Status, Target
from syncengine.unchanged import Action, Passes, SkipUnchanged

TARGET = Target(operation=Operation.UPDATE, module="Contacts", match_field="External_Contact_ID")


@dataclass(frozen=True)
class Row:
    ident: int  # a row kept from the earlier export keeps its ident; an edited or new row gets a new one
    fields: tuple[tuple[str, int], ...]


def change(row: Row, seq: int) -> Change:
    # Each row also writes its own version, as an export's change log does (a timestamp, a version column):
    # rows with equal digests are then the same row, kept.
    fields: dict[str, JSON] = {**{name: value for name, value in row.fields}, "v": row.ident}
    return Change(stream="s", seq=seq, target=TARGET, key="K", fields=fields)


def fold(state: dict[str, JSON], fields: dict[str, JSON]) -> dict[str, JSON]:
    return {**state, **fields}


field_sets = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 3)), min_size=1, max_size=2).map(tuple)
_idents = iter(range(1, 10**12))


@st.composite
def rows(draw: st.DrawFn) -> Row:
    """A row with a fresh ident."""
    return Row(next(_idents), draw(field_sets))


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Row], list[Row]]:
    """An earlier export's rows of one key, and a new export made from them by edits."""
    before = draw(st.lists(rows(), min_size=0, max_size=5))
    after: list[Row] = []
    for row in before:
        edit = draw(st.sampled_from(["keep", "keep", "keep", "drop", "change", "insert", "repeat"]))
        if edit == "insert":
            after.append(draw(rows()))
        if edit in ("keep", "insert", "repeat"):
            after.append(row)
        if edit == "repeat":
            after.append(row)
        if edit == "change":
            after.append(draw(rows()))
    after += draw(st.lists(rows(), max_size=2))
    return before, after


@dataclass
class World:
    """The CRM's state of the key, the ledger's chain of it, and every write applied, in order."""

    state: dict[str, JSON] = field(default_factory=dict)
    chain: Chain | None = None
    writes: list[tuple[int, int, int]] = field(default_factory=list)  # (pass, seq, ident) of each write's newest row

    def commit(self, written_by: int, group: tuple[Change, ...]) -> None:
        digests = tuple(c.digest() for c in group)
        if self.chain is not None and self.chain[0] == written_by:
            digests = self.chain[1] + digests
        elif self.chain is not None and self.chain[1] == digests:
            return  # as the ledger does: a pass that repeated the chain leaves it as it was
        self.chain = (written_by, digests)


def run_pass(world: World, export: list[Row], passes: Passes, chunk: int) -> int:
    """Feed one export through the rule; returns the number of records sent."""
    rule = SkipUnchanged("s", passes)
    current = passes.current("s")
    idents = {seq: row.ident for seq, row in enumerate(export, start=1)}
    changes = [change(row, seq) for seq, row in enumerate(export, start=1)]
    sent = 0

    def apply(action: Action, group: tuple[Change, ...]) -> None:
        nonlocal sent
        if action is Action.SEND:
            sent += 1
            merged: dict[str, JSON] = {}
            for c in group:
                merged.update(c.fields)
            world.state = fold(world.state, merged)
            world.writes.append((current, group[-1].seq, idents[group[-1].seq]))
        if action is not Action.HOLD:
            world.commit(current, group)
            rule.committed(
                Outcome(change=c, status=Status.SUCCESS if action is Action.SEND else Status.SKIPPED, code="UNCHANGED")
                for c in group
            )

    key = changes[0].key_digest() if changes else 0
    for start in range(0, len(changes), chunk):
        rule.begin_lookup()
        seen = world.chain  # a lookup per chunk: it may be stale by the chunk's own commits
        for c in changes[start : start + chunk]:
            apply(*rule.decide(c, key, seen))
    for group in rule.finish():
        apply(Action.SEND, group)
    return sent


def first_seq(export: list[Row], ident: int) -> int | None:
    """Where the row with this ident first stands in the export, as a seq (None: not in it)."""
    return next((seq for seq, row in enumerate(export, start=1) if row.ident == ident), None)


@settings(max_examples=400, deadline=None)
@given(histories(), st.integers(1, 4))
def test_a_re_run_never_rolls_a_key_back_and_ends_at_its_last_row(
    history: tuple[list[Row], list[Row]], chunk: int
) -> None:
    """Whatever the edits between two exports, the key ends at the new export's rows applied in order, and
    no write is older than the one before it."""
    before, after = history
    world = World()
    run_pass(world, before, Passes(1), chunk)
    first_writes = len(world.writes)
    expected: dict[str, JSON] = dict(world.state)
    for seq, row in enumerate(after, start=1):
        expected = fold(expected, dict(change(row, seq).fields))
    run_pass(world, after, Passes(2), chunk)
    assert world.state == expected
    # The last write of the first pass is as old as that row's first place in the new export.
    last = first_seq(after, world.writes[first_writes - 1][2]) if first_writes else None
    for _, seq, ident in world.writes[first_writes:]:
        assert last is None or seq >= last, f"row {ident} (seq {seq}) written after a newer row (seq {last})"
        last = seq


@settings(max_examples=200, deadline=None)
@given(st.lists(rows(), min_size=1, max_size=6), st.integers(1, 4))
def test_an_unchanged_export_sends_nothing(export: list[Row], chunk: int) -> None:
    """An export run again unchanged, repeated rows of the key included, sends no record."""
    world = World()
    run_pass(world, export, Passes(1), chunk)
    assert run_pass(world, export, Passes(2), chunk) == 0
    assert run_pass(world, export, Passes(3), chunk) == 0


def test_a_key_that_departs_from_its_history_is_written_once_at_the_end() -> None:
    """History a, b, c; new export a, B: both are held, then go out at the end as one record (never a alone)."""
    a, b, c = Row(1, (("a", 1),)), Row(2, (("b", 1),)), Row(3, (("a", 2),))
    world = World()
    run_pass(world, [a, b, c], Passes(1), 10)
    rule = SkipUnchanged("s", Passes(2))
    first, second = change(a, 1), change(Row(4, (("b", 2),)), 2)
    key = first.key_digest()
    assert rule.decide(first, key, world.chain) == (Action.HOLD, ())
    assert rule.decide(second, key, world.chain) == (Action.HOLD, ())
    assert rule.finish() == [(first, second)]


def test_held_rows_past_the_memory_bound_go_out_oldest_key_first() -> None:
    """Over the bound, the keys held longest are sent (merged) until half the bound is held."""
    rule = SkipUnchanged("s", Passes(2), max_held=4)
    history: Chain = (1 << 20, (Change(stream="s", seq=0, target=TARGET, key="K", fields={"a": 9}).digest(),))
    changes = [Change(stream="s", seq=i, target=TARGET, key=f"K{i}", fields={"a": i}) for i in range(1, 7)]
    for c in changes:
        assert rule.decide(c, c.key_digest(), history) == (Action.HOLD, ())
    assert rule.held == 6
    assert rule.overflow() == [(changes[0],), (changes[1],), (changes[2],), (changes[3],)]
    assert rule.held == 2
