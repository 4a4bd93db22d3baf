"""An outcome says what really happened (DESIGN §2, promise 7; §3, ambiguous retries; issue 9, point 3).

A delink answered "relation not found" is ``SUCCESS`` (with a note saying it is ambiguous) only when an
earlier try of that very change may have reached the CRM and nothing shows it was not applied; otherwise
it is the CRM's real answer, ``REJECTED``. Each case is checked against the sandbox's history of applied
writes, so "was it applied?" is a fact of the test, not a guess.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio

from syncengine.config import Config
from syncengine.ledger.values import OutcomeRow
from syncengine.model import JSON, Status
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import run, write_config, write_csv
from tests.test_no_rollback import (
    REFRESH_CREDENTIALS,
    engine_env,
    kill_engine_when,
    ledger_query,
    ledger_rows,
    run_engine,
)


def seed_deal(sb: Sandbox, contacts: int, linked: set[int]) -> tuple[str, list[str]]:
    """Deal D0 and contacts C0..C(n-1), the ``linked`` ones related to the deal; the deal's and contacts' ids."""
    sb.state.load(
        {
            "records": {
                "Deals": [{"External_Deal_ID": "D0", "Deal_Name": "Deal 0"}],
                "Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": f"Contact {i}"} for i in range(contacts)],
            }
        }
    )
    deal = str(sb.state.find_id("Deals", "External_Deal_ID", "D0"))
    ids = [str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{i}")) for i in range(contacts)]
    relations: list[JSON] = [
        {"module": "Deals", "id": deal, "related_list": "Contacts", "related_id": ids[i], "fields": {}} for i in linked
    ]
    sb.state.load({"relations": relations})
    return deal, ids


def delink_config(tmp_path: Path, sb: Sandbox, deal: str, ids: list[str]) -> Config:
    """One delink stream by record ids (``DELETE /Deals/{deal}/Contacts?ids=...``), every id in one call."""
    src = write_csv(tmp_path / "unlinks.csv", ["deal", "contact"], [[deal, i] for i in ids])
    stream = {
        "name": "unlinks",
        "operation": "delete_related",
        "module": "Deals",
        "related_list": "Contacts",
        "parent": {"column": "deal"},
        "match": {"column": "contact"},
        "source": {"kind": "csv", "path": str(src)},
    }
    return write_config(tmp_path / "sync.toml", sb.url, [stream])


def unlinked(sb: Sandbox) -> list[str]:
    """The contacts the CRM unlinked, in apply order."""
    return [str(e["related_id"]) for e in sb.state.history if e["op"] == "unlink"]


Verdict = tuple[str, str | None, bool]  # status, code, whether the note says the outcome is ambiguous


def verdicts(rows: list[OutcomeRow]) -> dict[int, Verdict]:
    """Per source row: status, code, and whether the note says the outcome is ambiguous."""
    return {r.seq: (r.status.value, r.code, "ambiguous" in (r.note or "").lower()) for r in rows}


SUCCESS: Verdict = (Status.SUCCESS.value, "SUCCESS", False)
AMBIGUOUS_SUCCESS: Verdict = (Status.SUCCESS.value, "SUCCESS", True)
REJECTED: Verdict = (Status.REJECTED.value, "INVALID_DATA", False)


def seed_for(calls: list[str], drop_rate: float) -> int:
    """A sandbox seed whose first calls are dropped as asked: "before" or "after" it applies them, or "none"
    (not dropped).

    Mirrors the sandbox's documented draws (server.py): per admitted call throttle, error, drop, drop phase,
    then the latency only when latency is on; no lock draws without ``lock_rate``.
    """
    for seed in range(100_000):
        rng = random.Random(seed)
        fates = []
        for _ in calls:
            _throttle, _error, u_drop, u_phase = rng.random(), rng.random(), rng.random(), rng.random()
            fates.append("none" if u_drop >= drop_rate else "before" if u_phase < 0.5 else "after")
        if fates == calls:
            return seed
    raise AssertionError(f"no seed gives {calls}")


# ------------------------------------------------------------------------------------------------ (a)


async def test_a_resumed_delink_that_was_never_sent_is_rejected_not_ambiguous(tmp_path: Path) -> None:
    """Killed before it sent a single call, then resumed: a delink of a relation that never existed is REJECTED."""
    linked = {0, 1, 2, 3, 4}
    # The token endpoint answers after 2 s: the killed process can send no CRM call before it dies.
    async with Sandbox(SandboxOptions(record_history=True, latency_ms=(2000.0, 2000.0))) as sb:
        deal, ids = seed_deal(sb, 10, linked)
        config = delink_config(tmp_path, sb, deal, ids)
        env = engine_env(**REFRESH_CREDENTIALS)
        ledger = config.ledger.path

        async def started_no_call() -> bool:
            runs = await anyio.to_thread.run_sync(ledger_query, ledger, "SELECT id FROM runs")
            return bool(runs) and sb.stats.token_requests >= 1

        await kill_engine_when(config, started_no_call, env=env, log=tmp_path / "killed.log")
        assert sb.stats.snapshot()["calls_total"] == 0, "the killed process must not have sent any CRM call"
        sb.set_faults(latency_ms=(0.0, 0.0))
        code = await run_engine(config, "--resume", env=env, log=tmp_path / "resumed.log")
        removed = unlinked(sb)

    rows = await ledger_rows(ledger)
    got = verdicts(rows)
    want = {i + 1: SUCCESS if i in linked else REJECTED for i in range(10)}
    assert sorted(removed) == sorted(ids[i] for i in linked), "setup: the resume must remove exactly the linked ones"
    assert code in (0, 1) and len(rows) == 10, f"resume exited {code} with {len(rows)} outcomes"
    wrong = {seq: f"{got.get(seq)}, expected {expected}" for seq, expected in want.items() if got.get(seq) != expected}
    assert not wrong, f"per source row (rows 6-10 were never linked, and no call was sent before the kill): {wrong}"


# ------------------------------------------------------------------------------------------------ (b), (c)


async def test_a_delink_retried_after_a_drop_before_apply_is_rejected_when_never_linked(tmp_path: Path) -> None:
    """A 99-id delink dropped before it was applied, then retried: the retry removes 98, the 99th never existed:
    REJECTED."""
    never = 49
    seed = seed_for(["before"] + ["none"] * 6, drop_rate=0.5)  # then no drop for 6 calls
    async with Sandbox(SandboxOptions(record_history=True, seed=seed, drop_rate=0.5)) as sb:
        deal, ids = seed_deal(sb, 99, set(range(99)) - {never})
        config = delink_config(tmp_path, sb, deal, ids)
        result = await run(config)
        stats = sb.stats.snapshot()
        removed = unlinked(sb)
    assert (stats["drops_before"], stats["drops_after"]) == (1, 0) and 2 <= int(str(stats["calls_total"])) <= 7, stats
    assert sorted(removed) == sorted(ids[i] for i in range(99) if i != never)  # all by the retry
    got = verdicts(await ledger_rows(config.ledger.path))
    assert result.summary.adds_up and len(got) == 99
    assert all(got[i + 1] == SUCCESS for i in range(99) if i != never), got
    assert got[never + 1] == REJECTED, (
        f"row {never + 1} (never linked; the retry removed the other 98, so the first try removed nothing): "
        f"{got[never + 1]}"
    )


async def test_a_delink_retried_after_a_drop_after_apply_is_success_with_the_ambiguity_note(tmp_path: Path) -> None:
    """A 99-id delink dropped after it was applied: the retry finds every relation gone: SUCCESS, noted ambiguous."""
    seed = seed_for(["after"] + ["none"] * 6, drop_rate=0.5)  # then no drop for 6 calls
    async with Sandbox(SandboxOptions(record_history=True, seed=seed, drop_rate=0.5)) as sb:
        deal, ids = seed_deal(sb, 99, set(range(99)))
        config = delink_config(tmp_path, sb, deal, ids)
        result = await run(config)
        stats = sb.stats.snapshot()
        removed = unlinked(sb)
    assert (stats["drops_before"], stats["drops_after"]) == (0, 1) and 2 <= int(str(stats["calls_total"])) <= 7, stats
    assert sorted(removed) == sorted(ids)  # all by the first try
    got = verdicts(await ledger_rows(config.ledger.path))
    assert result.summary.adds_up and len(got) == 99
    assert all(v == AMBIGUOUS_SUCCESS for v in got.values()), got
