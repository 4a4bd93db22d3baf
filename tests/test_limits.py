"""AIMD through its clock seam: ``AdaptiveLimit`` halves on a 429 (once per cool-down) and grows back by one.

The clock is a fake the test moves by hand, so the cool-down window is exact and nothing sleeps.
"""

from __future__ import annotations

import anyio
import pytest

from syncengine.limits import AdaptiveLimit, Backoff, CreditMeter


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limit(maximum: int = 8) -> tuple[AdaptiveLimit, FakeClock]:
    clock = FakeClock()
    return AdaptiveLimit(maximum, clock=clock), clock


def test_a_throttle_halves_the_limit() -> None:
    """One 429 halves the concurrency: 8 -> 4."""
    adaptive, _ = limit(8)
    adaptive.throttled()
    assert adaptive.limit == 4


@pytest.mark.parametrize(
    ("later", "expected"),
    [(0.0, 4), (0.5, 4), (0.999, 4), (1.0, 2), (30.0, 2)],
    ids=["same-instant", "half-a-second", "just-inside", "window-ends", "much-later"],
)
def test_a_second_throttle_inside_the_cool_down_does_not_halve_again(later: float, expected: int) -> None:
    """A burst of 429s is one cut: a second one within a second of the cut leaves the limit where it is."""
    adaptive, clock = limit(8)
    adaptive.throttled()
    clock.now += later
    adaptive.throttled()
    assert adaptive.limit == expected


def test_the_cool_down_counts_from_the_last_cut_not_the_last_429() -> None:
    """429s every 0.6 s: the ones inside the window do not cut nor extend it; the next past it cuts."""
    adaptive, clock = limit(16)
    seen = []
    for _ in range(4):
        adaptive.throttled()
        seen.append(adaptive.limit)
        clock.now += 0.6
    assert seen == [8, 8, 4, 4]  # t=0 cut, 0.6 no, 1.2 cut, 1.8 no


def test_throttles_never_take_the_limit_below_one() -> None:
    """Spaced 429s keep halving down to one call at a time, and no lower."""
    adaptive, clock = limit(8)
    seen = []
    for _ in range(6):
        adaptive.throttled()
        seen.append(adaptive.limit)
        clock.now += 1.0
    assert seen == [4, 2, 1, 1, 1, 1]


def test_clean_calls_grow_the_limit_back_by_one_per_limits_worth() -> None:
    """After a cut the limit grows by one after ``limit`` clean calls (4 to reach 5, then 5 to reach 6)."""
    adaptive, _ = limit(8)
    adaptive.throttled()
    grown = []
    for _ in range(9):
        adaptive.succeeded()
        grown.append(adaptive.limit)
    assert grown == [4, 4, 4, 5, 5, 5, 5, 5, 6]


def test_growth_stops_at_the_configured_maximum() -> None:
    """Clean calls never raise the limit above the configured concurrency."""
    adaptive, _ = limit(3)
    adaptive.throttled()  # 3 -> 1
    for _ in range(50):
        adaptive.succeeded()
    assert adaptive.limit == 3


def test_a_throttle_restarts_the_count_of_clean_calls() -> None:
    """A 429 inside the cool-down does not cut, but the clean calls before it no longer count towards growth."""
    adaptive, clock = limit(8)
    adaptive.throttled()  # 8 -> 4
    for _ in range(3):
        adaptive.succeeded()
    clock.now += 0.5
    adaptive.throttled()  # inside the window: still 4
    for _ in range(3):
        adaptive.succeeded()
    assert adaptive.limit == 4  # 6 clean calls, but only 3 since the last 429
    adaptive.succeeded()
    assert adaptive.limit == 5


async def test_a_halved_limit_holds_calls_back_and_growth_lets_one_in() -> None:
    """After a cut a call beyond the new limit waits for a slot; growing the limit admits it without a release."""
    adaptive, _ = limit(4)
    adaptive.throttled()  # 4 -> 2
    entered = anyio.Event()
    release = anyio.Event()

    async def hold() -> None:
        async with adaptive.slot():
            await release.wait()

    async def third() -> None:
        async with adaptive.slot():
            entered.set()
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            assert adaptive.in_flight == 2 and not entered.is_set()
            adaptive.succeeded()
            adaptive.succeeded()  # 2 clean calls at limit 2: it grows to 3
            await entered.wait()
            assert adaptive.limit == 3 and adaptive.in_flight == 3
            release.set()
    assert adaptive.max_in_flight == 3 and adaptive.in_flight == 0


def test_the_credit_meter_refuses_what_would_exceed_the_budget_and_takes_refunds() -> None:
    """``spend`` never lets spending pass the budget; a refunded 429 frees its credits again."""
    meter = CreditMeter(5)
    assert meter.spend(3) and not meter.spend(3) and meter.spent == 3
    meter.refund(3)
    assert meter.spend(5) and meter.spent == 5 and meter.take() == 5 and meter.take() == 0


def test_backoff_waits_grow_stay_under_their_cap_and_stop_at_the_total() -> None:
    """The one backoff: no wait before the first try, full jitter under min(maximum, initial * 2**n), and no
    further try once the waits would pass the total."""
    backoff = Backoff(initial=1.0, maximum=4.0, attempts=50, total=20.0)
    for _ in range(50):
        waits = list(backoff.waits())
        assert waits[0] == 0.0
        assert all(0.0 <= w <= min(4.0, 2.0**n) for n, w in enumerate(waits[1:], start=1))
        assert sum(waits) <= 20.0 and len(waits) < 50  # 49 waits of up to 4 s would pass 20 s
    assert len(list(Backoff(attempts=3).waits())) == 3
