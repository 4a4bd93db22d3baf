"""The chaos suite: the fault suite's run, in a real ``syncengine`` process that is SIGKILLed at random points
and resumed each time with ``syncengine run CONFIG --resume``, until a resumed run completes. The kills land
once during start-up, then at random points of progress: in the run as a whole and inside each delink stream
(delinks are the one operation that is not idempotent: a delink sent again finds the relation gone).

The sandbox runs in this process, so it outlives every kill. At the end the CRM must be exactly in the
expected state, the ledger must hold one SUCCESS outcome per change in one run (the resumes continue it),
and no change may be reported twice: every outcome committed before a kill is still the same row, with
the same ``finished_at``, at the end (a resumed run re-sends only what had no terminal outcome).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import SECRETS, write_config
from tests.scenario import build_scenario, publish_figures

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("SYNCENGINE_CHAOS_SEED", "7340021"))  # another seed: another scenario and faults
CONCURRENCY = 10
MAX_ROUNDS = 10
TIME_LIMIT = 150.0  # seconds for every round together

Row = tuple[str, str | None, float | None, int]  # status, code, finished_at, attempts


@dataclass(slots=True)
class Round:
    """One engine process: what triggered its kill (if it was killed), how it ended, the rows it added."""

    number: int
    killed: bool
    why: str  # what triggered the kill
    exit_code: int | None
    rows_before: int
    rows_after: int
    seconds: float


def _read_ledger(path: Path) -> dict[tuple[str, int], Row]:
    """Every outcome row, read with plain sqlite3 (the engine may be writing: WAL lets us read)."""
    if not path.exists():
        return {}
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        try:
            rows = conn.execute("SELECT stream, seq, status, code, finished_at, attempts FROM outcomes").fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return {}
    return {(stream, seq): (status, code, finished, attempts) for stream, seq, status, code, finished, attempts in rows}


def _count_rows(path: Path) -> dict[str, int]:
    """Outcome rows per stream, and in all under ``"*"``."""
    if not path.exists():
        return {"*": 0}
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        try:
            counts = {str(s): int(n) for s, n in conn.execute("SELECT stream, COUNT(*) FROM outcomes GROUP BY stream")}
        except sqlite3.OperationalError:
            counts = {}
    return {"*": sum(counts.values()), **counts}


def _runs(path: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        return [(int(i), str(s)) for i, s in conn.execute("SELECT id, state FROM runs ORDER BY id")]


def _engine_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_")}
    env.update(
        ZOHO_CLIENT_ID=SECRETS.client_id or "",
        ZOHO_CLIENT_SECRET=SECRETS.client_secret or "",
        ZOHO_REFRESH_TOKEN=SECRETS.refresh_token or "",
    )
    return env


async def _poll_until(condition: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    """Poll ``condition`` every 20 ms until it holds or ``deadline`` (anyio time) passes."""
    while not await condition():
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(0.02)
    return True


@pytest.mark.slow
async def test_chaos_suite_kills_and_resumes_without_loss_or_duplicates(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL the engine at random points and resume each time: exact end state, one outcome per change, none twice."""
    scenario = build_scenario(tmp_path / "data", seed=SEED)
    total = scenario.total
    assert total >= 20_000
    rng = random.Random(SEED)
    # Where to kill: once at a random instant of start-up, then at random points of progress (outcome rows
    # committed), in all and inside each delink stream (the one operation that is not idempotent: a delink
    # sent again finds the relation gone). Each point is a fraction of what the stream has left when the
    # round starts; a stream already done gives way to the run as a whole.
    startup_kill = rng.uniform(0.2, 0.8)
    plan = [(stream, rng.uniform(0.1, 0.7)) for stream in ("deal_unlinks_ext", "*", "deal_unlinks_ids", "*")]
    sizes = {"*": total, **scenario.changes}
    options = SandboxOptions(
        seed=SEED,
        concurrency=CONCURRENCY,
        error_rate=0.02,
        drop_rate=0.01,
        throttle_rate=0.01,
        lock_rate=0.02,
        latency_ms=(1.0, 20.0),
        token_ttl=5.0,
        refresh_limit=0,
    )
    ledger_path = tmp_path / "ledger.db"
    rounds: list[Round] = []
    snapshots: list[dict[tuple[str, int], Row]] = []
    async with Sandbox(options) as sb:
        sb.state.load(scenario.seed)
        config = write_config(tmp_path / "sync.toml", sb.url, scenario.streams, concurrency=CONCURRENCY)
        assert config.ledger.path == ledger_path
        command = [sys.executable, "-m", "syncengine", "--json-logs", "run", str(config.file), "--resume"]
        deadline = anyio.current_time() + TIME_LIMIT
        for number in range(MAX_ROUNDS):
            counts = await anyio.to_thread.run_sync(_count_rows, ledger_path)
            rows_before = counts["*"]
            target: tuple[str, int] | None = None
            if 1 <= number <= len(plan):
                stream, fraction = plan[number - 1]
                if counts.get(stream, 0) >= sizes[stream]:
                    stream = "*"
                done = counts.get(stream, 0)
                target = (stream, done + max(1, int(fraction * (sizes[stream] - done))))
            started = time.monotonic()
            killed, why = False, ""
            with (tmp_path / f"round-{number}.log").open("wb") as log:
                async with await anyio.open_process(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_engine_env()
                ) as proc:

                    async def ended() -> bool:
                        return proc.returncode is not None

                    async def reached(target: tuple[str, int] | None = target) -> bool:
                        if proc.returncode is not None or target is None:
                            return True
                        counts = await anyio.to_thread.run_sync(_count_rows, ledger_path)
                        return counts.get(target[0], 0) >= target[1]

                    if number == 0:
                        await _poll_until(ended, anyio.current_time() + startup_kill)
                        why = f"{startup_kill:.2f} s after start"
                    elif target is not None:
                        await _poll_until(reached, deadline)
                        await anyio.sleep(rng.uniform(0.0, 0.1))  # the kill lands at a random instant
                        why = f"{target[0]} reached {target[1]} rows"
                    if why and proc.returncode is None:
                        proc.kill()  # SIGKILL: no cleanup, no final flush, no run state written
                        killed = True
                    with anyio.move_on_after(max(1.0, deadline - anyio.current_time())):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                        pytest.fail(f"round {number} did not finish within the time limit; see {log.name}")
                    code = proc.returncode
            if killed:
                assert code == -signal.SIGKILL, f"round {number}: expected death by SIGKILL, got {code}"
                snapshots.append(await anyio.to_thread.run_sync(_read_ledger, ledger_path))
            rows_after = (await anyio.to_thread.run_sync(_count_rows, ledger_path))["*"]
            seconds = round(time.monotonic() - started, 2)
            rounds.append(Round(number, killed, why, code, rows_before, rows_after, seconds))
            if not killed:
                break
        stats = sb.stats.snapshot()
        diffs = scenario.compare(sb.state)
        duplicate_inserts = scenario.duplicate_inserts(sb.state)

    final = await anyio.to_thread.run_sync(_read_ledger, ledger_path)
    runs = await anyio.to_thread.run_sync(_runs, ledger_path)
    expected_keys = {(name, seq) for name, n in scenario.changes.items() for seq in range(1, n + 1)}
    lost = len(expected_keys - final.keys())
    # A change reported twice: a row committed before a kill that a later process wrote again (its
    # finished_at or status moved), a row that is not a change of the scenario, or a record inserted twice.
    rewritten = [
        (key, before, final.get(key)) for snap in snapshots for key, before in snap.items() if final.get(key) != before
    ]
    rewritten_keys = {key for key, _, _ in rewritten}
    duplicated = len(rewritten_keys) + len(final.keys() - expected_keys) + duplicate_inserts
    not_success = Counter((key[0], row[0], row[1]) for key, row in final.items() if row[0] != "SUCCESS")
    kills = sum(r.killed for r in rounds)
    throttled = stats["throttled_429"]
    assert isinstance(throttled, dict)
    figures: dict[str, object] = {
        "changes": total,
        "rounds": len(rounds),
        "kills": kills,
        "kill_points": [f"{r.rows_after} rows ({r.why})" for r in rounds if r.killed],
        "final_exit_code": rounds[-1].exit_code,
        "runs_in_ledger": len(runs),
        "outcome_rows": len(final),
        "succeeded": sum(1 for row in final.values() if row[0] == "SUCCESS"),
        "not_success": dict(Counter(f"{s}/{st}/{c}" for (s, st, c) in not_success.elements())),
        "calls_sandbox": stats["calls_total"],
        "errors_500": stats["errors_500"],
        "drops_before": stats["drops_before"],
        "drops_after": stats["drops_after"],
        "throttled_429": stats["throttled_429_total"],
        "throttled_429_concurrency": throttled["concurrency"],
        "locks": stats["locks_injected"],
        "refreshes": stats["refreshes"],
        "max_concurrent_refreshes": stats["max_concurrent_refreshes"],
        "max_in_flight_sandbox": stats["max_in_flight"],
        "concurrency_configured": CONCURRENCY,
        "key_overlaps": stats["key_overlaps"],
        "lost": lost,
        "duplicated": duplicated,
        "seconds_per_round": [r.seconds for r in rounds],
    }
    publish_figures("chaos-suite", figures, tmp_path, record_property)

    # Every check, so one failure does not hide another.
    problems: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    last = rounds[-1]
    check(kills >= 3, f"too few kills landed: {rounds}")
    check(
        not last.killed and last.exit_code == 0,
        f"the last round exited {last.exit_code} (0 expected); see {tmp_path}/round-{last.number}.log",
    )
    # One run, continued by every resume, completed.
    check(len(runs) == 1 and runs[0][1] == "completed", f"runs in the ledger: {runs} (one completed run expected)")
    # Every change accounted for once, all SUCCESS; nothing committed before a kill was sent or written again.
    check(lost == 0, f"{lost} changes have no outcome")
    check(duplicated == 0, f"{duplicated} changes reported twice, e.g. {rewritten[:5]}")
    check(len(final) == total, f"{len(final)} outcome rows for {total} changes")
    check(not not_success, f"changes not SUCCESS (stream, status, code): {not_success.most_common(10)}")
    # The CRM is exactly as expected.
    check(not diffs, "CRM state differs from the expected state:\n  " + "\n  ".join(diffs))
    # Limits held across every process.
    check(stats["max_concurrent_refreshes"] == 1, f"max_concurrent_refreshes {stats['max_concurrent_refreshes']}")
    check(
        1 <= int(stats["max_in_flight"]) <= CONCURRENCY,  # type: ignore[call-overload]
        f"max in flight {stats['max_in_flight']} > {CONCURRENCY}",
    )
    check(throttled["concurrency"] == 0, f"{throttled['concurrency']} calls over the concurrency limit")
    check(stats["key_overlaps"] == 0, f"{stats['key_overlaps']} key overlaps")
    assert not problems, "\n".join(problems)
