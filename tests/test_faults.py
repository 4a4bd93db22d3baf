"""The fault suite: about 22,500 changes across every operation against a CRM that fails in every transient way.

The sandbox answers 5% of calls with 500, drops 2% of connections (half of them after applying the call),
locks 3% of records, takes 1-50 ms per call, issues access tokens that live 3 seconds, revokes every token
now and then, and throws 429 storms (90% of calls refused for 0.3-0.5 s, about once a second).
The run must still end with the CRM exactly in the expected state, one SUCCESS outcome per change, never
more than one token refresh in flight, and never more calls in flight than configured. It runs against both
sandbox profiles: the default one and ``strict`` (the real-Zoho readings: bulk updates by external value
refused for a missing id, so the engine switches to COQL lookups; related answers shuffled; HTML error pages
for the 5% of calls that fail; mixed answers as 200; unknown fields refused).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from syncengine.sandbox import DEFAULT_SCHEMA, Sandbox, SandboxOptions, SandboxState
from syncengine.workers import RetryPolicy
from tests.conftest import run, stat, write_config
from tests.scenario import ROLES, Sizes, build_scenario, publish_figures

SEED = int(os.environ.get("SYNCENGINE_FAULT_SEED", "20240611"))  # another seed: another scenario and faults
CONCURRENCY = 10
# Waits short enough for a test, long enough that a 429 storm never outlasts throttle_attempts.
POLICY = RetryPolicy(wait_initial=0.02, wait_max=0.5, outage_give_ups=1000)


class Storms:
    """The fault schedule that needs a clock: 429 storms and token revocations, until ``stop``."""

    def __init__(self, sb: Sandbox, rng: random.Random) -> None:
        self._sb, self._rng = sb, rng
        self._done = anyio.Event()
        self.storms = 0
        self.revocations = 0

    def stop(self) -> None:
        self._done.set()

    async def run(self) -> None:
        try:
            for _ in range(1000):  # bounded; ``stop`` ends it long before
                with anyio.move_on_after(self._rng.uniform(0.7, 1.5)):
                    await self._done.wait()
                if self._done.is_set():
                    return
                self._sb.expire_tokens()  # every worker's next call gets 401 INVALID_TOKEN at once
                self.revocations += 1
                self._sb.set_faults(throttle_rate=0.9)
                self.storms += 1
                with anyio.move_on_after(self._rng.uniform(0.3, 0.5)):
                    await self._done.wait()
                self._sb.set_faults(throttle_rate=0.0)
        finally:
            self._sb.set_faults(throttle_rate=0.0)


async def ledger_rows(path: Path, run_id: int) -> list[Any]:
    async with SqliteLedger(path) as ledger:
        return [row async for row in ledger.outcomes(run_id)]


def test_scenario_oracle_sees_every_kind_of_difference(tmp_path: Path) -> None:
    """The expected-state check is not vacuous: it passes on the expected state and names each kind of drift."""
    scenario = build_scenario(tmp_path, seed=3, sizes=Sizes().scaled(0.05))

    def state_of(doc: dict[str, Any]) -> SandboxState:
        state = SandboxState(DEFAULT_SCHEMA)
        state.load(doc)
        return state

    assert scenario.compare(state_of(scenario.seed))  # the seed alone is not the end state
    assert scenario.compare(state_of(scenario.expected_doc())) == []
    (did, cid), fields = next(iter(scenario.expected.links.items()))
    lead_id = next(iter(scenario.expected.records["Leads"]))
    email = next(iter(scenario.expected.inserted))
    other_role = next(r for r in ROLES if {"id": r} != fields.get("Contact_Role"))
    absent = next(
        (d, c)
        for d in scenario.expected.records["Deals"]
        for c in scenario.expected.records["Contacts"]
        if (d, c) not in scenario.expected.links
    )
    rl = DEFAULT_SCHEMA.related_list("Deals", "Contacts")
    assert rl is not None
    drifts: dict[str, Callable[[SandboxState], object]] = {
        "a field": lambda st: st.update("Leads", lead_id, {"Company": "drifted"}),
        "a cleared field": lambda st: st.update("Leads", lead_id, {"Company": None}),
        "a missing link": lambda st: st.unlink("Deals", did, "Contacts", cid),
        "a link's role": lambda st: st.link("Deals", did, rl, cid, {"Contact_Role": {"id": other_role}}),
        "an extra link": lambda st: st.link("Deals", absent[0], rl, absent[1], {}),
        "an insert applied twice": lambda st: st.insert("Contacts", scenario.expected.inserted[email]),
    }
    for name, drift in drifts.items():
        state = state_of(scenario.expected_doc())
        drift(state)
        assert scenario.compare(state), f"{name} went unnoticed"
    state = state_of(scenario.expected_doc())
    drifts["an insert applied twice"](state)
    assert scenario.duplicate_inserts(state) == 1


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_fault_suite_ends_in_the_expected_state(
    tmp_path: Path, record_property: Callable[[str, object], None], strict: bool
) -> None:
    """22,500 changes through 500s, drops, 429 storms, locks, latency and 3 s tokens: exact end state, all SUCCESS."""
    scenario = build_scenario(tmp_path / "data", seed=SEED)
    assert scenario.total >= 20_000
    options = SandboxOptions(
        seed=SEED,
        concurrency=CONCURRENCY,  # one call more than configured would be answered 429 "concurrency"
        error_rate=0.05,
        drop_rate=0.02,
        lock_rate=0.03,
        latency_ms=(1.0, 50.0),
        token_ttl=3.0,
        refresh_limit=0,  # tokens that live 3 s need more than Zoho's 10 refreshes per 10 minutes
        strict=strict,
    )
    async with Sandbox(options) as sb:
        sb.state.load(scenario.seed)
        config = write_config(tmp_path / "sync.toml", sb.url, scenario.streams, concurrency=CONCURRENCY)
        storms = Storms(sb, random.Random(SEED))
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(storms.run)
            try:
                with anyio.fail_after(240):
                    result = await run(config, policy=POLICY)
            finally:
                storms.stop()
        elapsed = time.monotonic() - started
        stats = sb.stats.snapshot()
        diffs = scenario.compare(sb.state)
        duplicate_inserts = scenario.duplicate_inserts(sb.state)

    s = result.summary
    rows = await ledger_rows(config.ledger.path, s.run_id)
    per_change = Counter((r.stream, r.seq) for r in rows)
    expected_keys = {(name, seq) for name, n in scenario.changes.items() for seq in range(1, n + 1)}
    lost = len(expected_keys - per_change.keys())
    duplicated = sum(n - 1 for n in per_change.values()) + len(per_change.keys() - expected_keys) + duplicate_inserts
    not_success = Counter((r.stream, r.status.value, r.code) for r in rows if r.status is not Status.SUCCESS)
    throttled = stats["throttled_429"]
    assert isinstance(throttled, dict)
    figures: dict[str, object] = {
        "changes": scenario.total,
        "succeeded": s.succeeded,
        "calls_engine": result.calls,
        "calls_sandbox": stats["calls_total"],
        "errors_500": stats["errors_500"],
        "drops_before": stats["drops_before"],
        "drops_after": stats["drops_after"],
        "throttled_429": stats["throttled_429_total"],
        "throttled_429_concurrency": throttled["concurrency"],
        "storms": storms.storms,
        "locks": stats["locks_injected"],
        "token_revocations": storms.revocations,
        "tokens_expired_401": stats["tokens_expired_401"],
        "refreshes": stats["refreshes"],
        "max_concurrent_refreshes": stats["max_concurrent_refreshes"],
        "max_in_flight_sandbox": stats["max_in_flight"],
        "max_in_flight_engine": result.max_in_flight,
        "concurrency_configured": CONCURRENCY,
        "key_overlaps": stats["key_overlaps"],
        "kills": 0,
        "lost": lost,
        "duplicated": duplicated,
        "elapsed_s": round(elapsed, 1),
        "strict": strict,
        "external_strategies": {e.stream: e.strategy for e in result.external},
        "credits": result.credits,
    }
    publish_figures("fault-suite-strict" if strict else "fault-suite", figures, tmp_path, record_property)

    # Every change is accounted for, once, and every one succeeded: the faults were all transient.
    assert s.adds_up and s.read == scenario.total, s
    assert (s.state, s.succeeded, s.pending) == ("completed", scenario.total, 0), (s, not_success.most_common(10))
    assert not not_success, not_success.most_common(10)
    assert (lost, duplicated) == (0, 0)
    assert len(rows) == scenario.total
    # The CRM is exactly as expected: every record's fields, every link present or absent with its fields.
    assert diffs == [], "\n".join(diffs)
    # Limits respected, not discovered.
    assert stats["max_concurrent_refreshes"] == 1
    assert 1 <= result.max_in_flight <= CONCURRENCY
    assert 1 <= stat(stats, "max_in_flight") <= CONCURRENCY
    assert throttled["concurrency"] == 0
    assert stats["key_overlaps"] == 0
    # ... and the faults did happen.
    errors = "html_errors" if strict else "errors_500"  # strict answers the failing calls with HTML pages
    for name in (errors, "drops_before", "drops_after", "locks_injected", "tokens_expired_401"):
        assert stats[name], f"no {name} injected: {stats}"
    assert throttled["random"] and storms.storms >= 1
    assert stat(stats, "refreshes") >= 1 + elapsed // 3
    # Under strict the bulk form is refused for a missing id, and the updates by external value went by id.
    assert {e.strategy for e in result.external} == {"resolve" if strict else "bulk"}, result.external
