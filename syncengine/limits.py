"""Zoho's limits, respected rather than discovered (DESIGN §2, promise 3).

- ``AdaptiveLimit``: calls in flight never exceed the configured concurrency; on a 429 the limit is
  halved (at most once a second, so one burst of 429s is one cut), and it grows back by one after a
  limit's worth of clean calls (AIMD).
- sub-concurrency: calls carrying more than 10 records also need a slot of their own, taken first so
  a waiting complex call never sits on a general slot.
- an optional steady rate (aiolimiter) and an optional credit budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from aiolimiter import AsyncLimiter

__all__ = ["Backoff", "AdaptiveLimit", "CreditMeter", "Limits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """The one backoff of the engine: exponential with full jitter, bounded per wait and in total.

    The sender's retries (``RetryPolicy``), the token fetch and a watch's outage wait all use it, each with its
    own numbers: ``wait(n)`` is uniform in [0, min(maximum, initial * 2**n)], and ``waits()`` yields the waits
    of ``attempts`` tries (none before the first) until their sum would pass ``total``.
    """

    initial: float = 0.25  # seconds
    maximum: float = 30.0
    attempts: int = 8
    total: float = math.inf  # seconds of waiting, over all the tries

    def wait(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.maximum, self.initial * 2.0**attempt))

    def waits(self) -> Iterator[float]:
        """0 before the first try, then one wait before each further try, within ``total``."""
        spent = 0.0
        for attempt in range(self.attempts):
            wait = self.wait(attempt) if attempt else 0.0
            if spent + wait > self.total:
                return
            spent += wait
            yield wait


class AdaptiveLimit:
    """A semaphore whose size moves between 1 and ``maximum`` with the CRM's 429s."""

    def __init__(self, maximum: int, *, clock: Callable[[], float] = anyio.current_time) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.in_flight = 0
        self.max_in_flight = 0
        self._clean = 0
        self._last_cut = float("-inf")
        self._clock = clock
        self._changed = anyio.Event()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        while self.in_flight >= self.limit:
            await self._changed.wait()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._changed.set()
            self._changed = anyio.Event()

    def throttled(self) -> None:
        now = self._clock()
        if now - self._last_cut >= 1.0:
            self.limit = max(1, self.limit // 2)
            self._last_cut = now
        self._clean = 0

    def succeeded(self) -> None:
        if self.limit >= self.maximum:
            return
        self._clean += 1
        if self._clean >= self.limit:
            self.limit += 1
            self._clean = 0
            self._changed.set()
            self._changed = anyio.Event()


class CreditMeter:
    """Credits spent by this run; ``spend`` refuses a call that would go over the budget.

    ``budget`` is what is left of the configured daily budget once the last 24 hours' spending (all runs,
    from the ledger) is taken off; ``take`` hands the ledger what was spent since it last asked.
    """

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.spent = 0
        self._reported = 0

    def spend(self, credits: int) -> bool:
        if self.budget is not None and self.spent + credits > self.budget:
            return False
        self.spent += credits
        return True

    def refund(self, credits: int) -> None:
        self.spent -= credits  # a 429 is not charged by Zoho

    def take(self) -> int:
        delta, self._reported = self.spent - self._reported, self.spent
        return delta


class Limits:
    """Every limit a call passes through, in the order that never wastes a slot."""

    def __init__(self, *, concurrency: int, sub_concurrency: int, requests_per_second: float | None = None) -> None:
        self.general = AdaptiveLimit(concurrency)
        self._complex = anyio.Semaphore(min(sub_concurrency, concurrency))
        self._rate = AsyncLimiter(requests_per_second, 1.0) if requests_per_second else None
        self.complex_in_flight = 0
        self.max_complex_in_flight = 0

    @asynccontextmanager
    async def slot(self, *, complex_call: bool) -> AsyncIterator[None]:
        if complex_call:
            async with self._complex:
                self.complex_in_flight += 1
                self.max_complex_in_flight = max(self.max_complex_in_flight, self.complex_in_flight)
                try:
                    async with self._general_slot():
                        yield
                finally:
                    self.complex_in_flight -= 1
        else:
            async with self._general_slot():
                yield

    @asynccontextmanager
    async def _general_slot(self) -> AsyncIterator[None]:
        async with self.general.slot():
            if self._rate is not None:
                await self._rate.acquire()
            yield
