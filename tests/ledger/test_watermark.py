"""The contiguous terminal watermark: it only advances once everything before it is done."""

from __future__ import annotations

import random

import pytest

from syncengine.ledger import Watermark


def test_in_order_completion_advances_one_by_one() -> None:
    """Each seq done in order moves the watermark to it."""
    mark = Watermark()
    assert mark.value is None
    for seq in range(1, 4):
        mark.seen(seq)
    assert mark.value is None
    for seq in range(1, 4):
        mark.done(seq)
        assert mark.value == seq
    assert mark.outstanding == 0


def test_out_of_order_completion_waits_for_the_oldest() -> None:
    """Later seqs done first do not move it; the oldest one done releases all of them at once."""
    mark = Watermark()
    for seq in range(1, 6):
        mark.seen(seq)
    for seq in (5, 3, 4):
        mark.done(seq)
    assert (mark.value, mark.outstanding) == (None, 2)
    mark.done(1)
    assert mark.value == 1
    mark.done(2)
    assert (mark.value, mark.outstanding) == (5, 0)


def test_seqs_never_read_do_not_hold_it_back() -> None:
    """Gaps in the source's numbering (a header, blank lines) are not waited for."""
    mark = Watermark()
    for seq in (2, 3, 7, 10):
        mark.seen(seq)
    for seq in (10, 2, 3):
        mark.done(seq)
    assert mark.value == 3
    mark.done(7)
    assert mark.value == 10


def test_it_starts_from_a_resumed_checkpoint() -> None:
    """With start=S nothing is done yet but S already holds; seqs at or below S are refused."""
    mark = Watermark(start=100)
    assert mark.value == 100
    mark.seen(101)
    assert mark.value == 100
    mark.done(101)
    assert mark.value == 101
    with pytest.raises(ValueError, match="ascending"):
        mark.seen(100)


def test_done_before_seen_is_remembered() -> None:
    """A seq reported done before it is reported seen does not hold the watermark back later."""
    mark = Watermark()
    mark.seen(1)
    mark.done(2)
    mark.seen(2)
    assert mark.value is None
    mark.done(1)
    assert mark.value == 2


def test_repeated_and_unknown_done_are_harmless() -> None:
    """Reporting a seq done twice, or one below the watermark that was never seen, changes nothing."""
    mark = Watermark()
    mark.seen(5)
    mark.done(5)
    mark.done(5)
    mark.done(3)
    assert (mark.value, mark.outstanding) == (5, 0)


def test_memory_holds_only_the_gaps() -> None:
    """One stuck change among a million done ones: it keeps one entry, and the watermark waits before it."""
    mark = Watermark()
    for seq in range(1_000_000):
        mark.seen(seq)
        if seq != 10:
            mark.done(seq)
    assert (mark.value, mark.outstanding) == (9, 1)
    mark.done(10)
    assert (mark.value, mark.outstanding) == (999_999, 0)


@pytest.mark.parametrize("seed", range(5), ids=lambda s: f"seed-{s}")
def test_matches_a_brute_force_model_under_random_completion(seed: int) -> None:
    """Random gaps and a random completion order: after every step it equals the brute-force answer."""
    rng = random.Random(seed)
    seen = sorted(rng.sample(range(1, 3000), 600))
    mark = Watermark()
    done: set[int] = set()
    pending = list(seen)
    read = 0
    while pending or read < len(seen):
        if read < len(seen) and (not pending or rng.random() < 0.5):
            mark.seen(seen[read])
            read += 1
        else:
            candidates = [s for s in seen[:read] if s not in done]
            if not candidates:
                continue
            seq = rng.choice(candidates)
            done.add(seq)
            pending.remove(seq)
            mark.done(seq)
        expected = None
        for s in seen[:read]:
            if s not in done:
                break
            expected = s
        assert mark.value == expected
