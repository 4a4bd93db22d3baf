"""The chaos suite: the fault suite's run, in a real ``syncengine`` process that is SIGKILLed at random points
and resumed each time with ``syncengine run CONFIG --resume``, until a resumed run completes. The kills land
once during start-up, then at random points of progress: in the run as a whole and inside each delink stream
(delinks are the one operation that is not idempotent: a delink sent again finds the relation gone).

The sandbox runs in this process, so it outlives every kill, and it records its history of applied writes.
Every source row carries a marker the CRM keeps (``tests/scenario.py``: ``Last_Name`` ``L<row>`` or
``U<row>`` for contacts, ``Company`` ``Co <row>`` for leads, the role id for Deal-Contact links; an unlink
is the one row that removes its relation), so each applied write names the row it came from; a write that
merged several rows of a key carries its newest one. At the end:

1. **No key goes backwards**: per record and per relation, no write applies an older row (in the stream's
   source order) after a newer one, in any process, not even for a moment. Every change was applied, and
   no write is one that no source row asked for.
2. **Changes applied more than once are bounded by the calls in flight at each kill.** Which changes a write
   applied comes from the engine's dispatch journal (the record of the same process with the same newest row;
   the journal is the run's call journal beside the ledger). A change applied again by a later process than the
   one that applied it before counts against the kills: at most 100 × the sum over kills of the calls in flight
   at the kill, and at most the changes those calls carried. *In flight* is taken from the journal, not from
   the sandbox: the killed process's journaled calls that carry a change without an outcome in the ledger, read
   once the process is dead (each change counted under the last call that carried it). That is what a resume
   re-sends, and it includes calls the sandbox had already answered but whose outcomes were not yet committed,
   which the sandbox's ``in_flight`` counter (sampled right before each kill, plus the calls it received after
   the kill, still in transit) does not see; both are reported. A change applied again by the same process is a
   retry after a connection dropped after the CRM applied the call: at most 100 × ``drops_after``.
3. The CRM is exactly in the expected state, the ledger holds one SUCCESS outcome per change in one run
   (the resumes continue it), and no change is reported twice: every outcome committed before a kill is
   still the same row, with the same ``finished_at``, at the end (a resumed run re-sends only what had no
   terminal outcome).

``benchmarks/chaos_kills.py`` runs the same with more kills, other seeds and sizes.
"""

from __future__ import annotations

import bisect
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncengine.ledger.journal import journal_path, read_journal
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import SECRETS, write_config
from tests.scenario import Audit, Scenario, Sizes, audit_history, build_scenario, publish_figures, trace_history

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("SYNCENGINE_CHAOS_SEED", "7340021"))  # another seed: another scenario and faults
CONCURRENCY = 10
KILLS = 5
TIME_LIMIT = 150.0  # seconds for every round together
RECORDS_PER_CALL = 100
# Where the kills after the start-up one land, in turn: the run as a whole, or inside a delink stream.
KILL_STREAMS = ("deal_unlinks_ext", "*", "deal_unlinks_ids", "*")

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


@dataclass(slots=True)
class Kill:
    """What was in flight when a process was killed."""

    round: int
    why: str
    rows: int  # outcome rows in the ledger once the process was dead
    sandbox_in_flight: int  # the sandbox's calls admitted and not answered, sampled right before the SIGKILL
    late_calls: int  # calls the sandbox received after the SIGKILL (sent before it, still in transit)
    open_calls: int  # the process's journaled calls carrying a change that has no outcome
    open_changes: int  # the changes those calls carried


@dataclass(slots=True)
class ChaosRun:
    """Everything one chaos run measured."""

    scenario: Scenario
    directory: Path
    rounds: list[Round] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    snapshots: list[dict[tuple[str, int], Row]] = field(default_factory=list)
    final: dict[tuple[str, int], Row] = field(default_factory=dict)
    runs: list[tuple[int, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    diffs: list[str] = field(default_factory=list)
    duplicate_inserts: int = 0
    audit: Audit = field(default_factory=Audit)
    strange_writes: list[str] = field(default_factory=list)
    max_changes_per_call: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ ledger


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


Dispatch = tuple[int, str, list[tuple[str, list[int]]]]  # call number, stream, per record (key, seqs)


def _journal(path: Path, since: int = 0) -> list[Dispatch]:
    """The run's journaled calls numbered above ``since`` (the test makes one run, resumed: run 1)."""
    return [
        (call.id, call.stream, [(key, list(seqs)) for key, seqs in call.records])
        for call in read_journal(journal_path(path, 1))
        if call.id > since
    ]


def _open_calls(path: Path, since: int) -> tuple[int, int]:
    """The journaled calls above id ``since`` that carry a change without an outcome, and those changes
    (each change under the last call that carried it, as a resume takes it)."""
    done = set(_read_ledger(path))
    last_call: dict[tuple[str, int], int] = {}
    for i, stream, records in _journal(path, since):
        for _, seqs in records:
            for seq in seqs:
                if (stream, seq) not in done:
                    last_call[(stream, seq)] = i
    return len(set(last_call.values())), len(last_call)


def _max_dispatch_id(path: Path) -> int:
    journal = _journal(path)
    return journal[-1][0] if journal else 0


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


def _calls(sb: Sandbox) -> int:
    return sum(sb.stats.calls.values())


async def _settle(sb: Sandbox) -> None:
    """After a kill: let the sandbox finish the calls it had admitted or that were still in transit."""
    with anyio.move_on_after(5.0):
        while True:
            await anyio.sleep(0.05)
            if sb.stats.in_flight == 0:
                return


# ------------------------------------------------------------------------------------------------ the run


async def run_chaos(
    directory: Path,
    *,
    seed: int,
    sizes: Sizes | None = None,
    kills: int = KILLS,
    time_limit: float = TIME_LIMIT,
) -> ChaosRun:
    """Build the scenario of ``seed`` under ``directory``, run it in real engine processes killed ``kills``
    times (once at start-up, then at points of progress) and resumed, and audit the sandbox's history."""
    started_all = time.monotonic()
    scenario = build_scenario(directory / "data", seed=seed, sizes=sizes)
    out = ChaosRun(scenario=scenario, directory=directory)
    total = scenario.total
    rng = random.Random(seed)
    # Where to kill: once at a random instant of start-up, then at random points of progress (outcome rows
    # committed), in all and inside each delink stream (the one operation that is not idempotent: a delink
    # sent again finds the relation gone). Each point is a fraction of what the stream has left when the
    # round starts; a stream already done gives way to the run as a whole.
    startup_kill = rng.uniform(0.2, 0.8)
    plan = [(KILL_STREAMS[i % len(KILL_STREAMS)], rng.uniform(0.1, 0.7)) for i in range(kills - 1)]
    sizes_by_stream = {"*": total, **scenario.changes}
    options = SandboxOptions(
        seed=seed,
        concurrency=CONCURRENCY,
        error_rate=0.02,
        drop_rate=0.01,
        throttle_rate=0.01,
        lock_rate=0.02,
        latency_ms=(1.0, 20.0),
        token_ttl=5.0,
        refresh_limit=0,
        record_history=True,
    )
    ledger_path = directory / "ledger.db"
    history_marks: list[int] = []  # history entries before each process
    dispatch_marks: list[int] = []  # journal ids before each process
    async with Sandbox(options) as sb:
        sb.state.load(scenario.seed)
        config = write_config(directory / "sync.toml", sb.url, scenario.streams, concurrency=CONCURRENCY)
        assert config.ledger.path == ledger_path
        command = [sys.executable, "-m", "syncengine", "--json-logs", "run", str(config.file), "--resume"]
        deadline = anyio.current_time() + time_limit
        for number in range(kills + 5):
            counts = await anyio.to_thread.run_sync(_count_rows, ledger_path)
            rows_before = counts["*"]
            history_marks.append(len(sb.state.history))
            dispatch_marks.append(await anyio.to_thread.run_sync(_max_dispatch_id, ledger_path))
            target: tuple[str, int] | None = None
            if 1 <= number <= len(plan):
                stream, fraction = plan[number - 1]
                if counts.get(stream, 0) >= sizes_by_stream[stream]:
                    stream = "*"
                done = counts.get(stream, 0)
                target = (stream, done + max(1, int(fraction * (sizes_by_stream[stream] - done))))
            started = time.monotonic()
            killed, why = False, ""
            in_flight = calls_at_kill = 0
            with (directory / f"round-{number}.log").open("wb") as log:
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
                        # Sampled and killed with no await between: no sandbox handler runs in between.
                        in_flight, calls_at_kill = sb.stats.in_flight, _calls(sb)
                        proc.kill()  # SIGKILL: no cleanup, no final flush, no run state written
                        killed = True
                    with anyio.move_on_after(max(1.0, deadline - anyio.current_time())):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                        raise AssertionError(f"round {number} did not finish within the time limit; see {log.name}")
                    code = proc.returncode
            rows_after = (await anyio.to_thread.run_sync(_count_rows, ledger_path))["*"]
            if killed:
                assert code == -signal.SIGKILL, f"round {number}: expected death by SIGKILL, got {code}"
                await _settle(sb)
                out.snapshots.append(await anyio.to_thread.run_sync(_read_ledger, ledger_path))
                open_calls, open_changes = await anyio.to_thread.run_sync(_open_calls, ledger_path, dispatch_marks[-1])
                out.kills.append(
                    Kill(number, why, rows_after, in_flight, _calls(sb) - calls_at_kill, open_calls, open_changes)
                )
            seconds = round(time.monotonic() - started, 2)
            out.rounds.append(Round(number, killed, why, code, rows_before, rows_after, seconds))
            if not killed:
                break
        out.stats = dict(sb.stats.snapshot())
        out.diffs = scenario.compare(sb.state)
        out.duplicate_inserts = scenario.duplicate_inserts(sb.state)
        history = sb.state.history_since(0)

    out.final = await anyio.to_thread.run_sync(_read_ledger, ledger_path)
    out.runs = await anyio.to_thread.run_sync(_runs, ledger_path)
    journal = await anyio.to_thread.run_sync(_journal, ledger_path)

    def process_of_dispatch(dispatch_id: int) -> int:
        return bisect.bisect_left(dispatch_marks, dispatch_id) - 1

    def process_of_entry(n: int) -> int:
        return bisect.bisect_left(history_marks, n) - 1

    records = [(process_of_dispatch(i), stream, seqs) for i, stream, recs in journal for _, seqs in recs]
    out.max_changes_per_call = max((sum(len(s) for _, s in recs) for _, _, recs in journal), default=0)
    writes, out.strange_writes = trace_history(scenario, history)
    out.audit = audit_history(scenario, writes, records, process_of_entry)
    out.seconds = round(time.monotonic() - started_all, 1)
    return out


# ------------------------------------------------------------------------------------------------ checks


def duplicated(run: ChaosRun) -> tuple[int, list[object]]:
    """Changes reported twice: a row committed before a kill that a later process wrote again (its
    finished_at or status moved), a row that is not a change of the scenario, or a record inserted twice."""
    expected_keys = {(name, seq) for name, n in run.scenario.changes.items() for seq in range(1, n + 1)}
    rewritten = [
        (key, before, run.final.get(key))
        for snap in run.snapshots
        for key, before in snap.items()
        if run.final.get(key) != before
    ]
    count = len({key for key, _, _ in rewritten}) + len(run.final.keys() - expected_keys) + run.duplicate_inserts
    return count, list(rewritten[:5])


def bounds(run: ChaosRun) -> dict[str, int]:
    """What changes applied more than once may come to, from the kills and the faults."""
    return {
        "bound_across_kills_journal": RECORDS_PER_CALL * sum(k.open_calls for k in run.kills),
        "bound_across_kills_changes": sum(k.open_changes for k in run.kills),
        "bound_across_kills_sandbox": RECORDS_PER_CALL * sum(k.sandbox_in_flight + k.late_calls for k in run.kills),
        "bound_within_drops": RECORDS_PER_CALL * int(run.stats["drops_after"]),
    }


def figures(run: ChaosRun) -> dict[str, object]:
    scenario, stats, final = run.scenario, run.stats, run.final
    expected_keys = {(name, seq) for name, n in scenario.changes.items() for seq in range(1, n + 1)}
    not_success = Counter(f"{key[0]}/{row[0]}/{row[1]}" for key, row in final.items() if row[0] != "SUCCESS")
    throttled = stats["throttled_429"]
    return {
        "changes": scenario.total,
        "rounds": len(run.rounds),
        "kills": len(run.kills),
        "kill_points": [f"{k.rows} rows ({k.why})" for k in run.kills],
        "in_flight_at_kills_journal": [k.open_calls for k in run.kills],
        "in_flight_changes_at_kills_journal": [k.open_changes for k in run.kills],
        "in_flight_at_kills_sandbox": [k.sandbox_in_flight for k in run.kills],
        "late_calls_after_kills": [k.late_calls for k in run.kills],
        "applied_again_after_each_kill": [run.audit.again_after.get(k.round, 0) for k in run.kills],
        **run.audit.figures(),
        **bounds(run),
        "max_changes_per_call": run.max_changes_per_call,
        "unexplained_writes": len(run.strange_writes),
        "final_exit_code": run.rounds[-1].exit_code,
        "runs_in_ledger": len(run.runs),
        "outcome_rows": len(final),
        "succeeded": sum(1 for row in final.values() if row[0] == "SUCCESS"),
        "not_success": dict(not_success),
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
        "lost": len(expected_keys - final.keys()),
        "duplicated": duplicated(run)[0],
        "seconds_per_round": [r.seconds for r in run.rounds],
        "seconds": run.seconds,
    }


def problems(run: ChaosRun, *, min_kills: int = 4) -> list[str]:
    """Every check, so one failure does not hide another."""
    found: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    stats, final, audit, total = run.stats, run.final, run.audit, run.scenario.total
    last = run.rounds[-1]
    check(len(run.kills) >= min_kills, f"too few kills landed: {run.rounds}")
    check(
        not last.killed and last.exit_code == 0,
        f"the last round exited {last.exit_code} (0 expected); see {run.directory}/round-{last.number}.log",
    )
    # One run, continued by every resume, completed.
    check(len(run.runs) == 1 and run.runs[0][1] == "completed", f"runs in the ledger: {run.runs} (one completed run)")
    # Every change accounted for once, all SUCCESS; nothing committed before a kill was sent or written again.
    expected_keys = {(name, seq) for name, n in run.scenario.changes.items() for seq in range(1, n + 1)}
    lost = len(expected_keys - final.keys())
    dup, examples = duplicated(run)
    check(lost == 0, f"{lost} changes have no outcome")
    check(dup == 0, f"{dup} changes reported twice, e.g. {examples}")
    check(len(final) == total, f"{len(final)} outcome rows for {total} changes")
    not_success = Counter((key[0], row[0], row[1]) for key, row in final.items() if row[0] != "SUCCESS")
    check(not not_success, f"changes not SUCCESS (stream, status, code): {not_success.most_common(10)}")
    # The CRM is exactly as expected.
    check(not run.diffs, "CRM state differs from the expected state:\n  " + "\n  ".join(run.diffs))
    # The history: no key went backwards, every write is a source row's, every change was applied.
    check(
        not audit.inversions,
        f"{len(audit.inversions)} writes of an older row after a newer one: {audit.inversions[:10]}",
    )
    check(not run.strange_writes, f"{len(run.strange_writes)} writes no source row asked for: {run.strange_writes[:5]}")
    check(not audit.unapplied, f"{len(audit.unapplied)} changes never applied: {audit.unapplied[:10]}")
    check(not audit.journal_problems, f"the dispatch journal: {audit.journal_problems[:5]}")
    # Changes applied more than once: bounded by what was in flight at each kill, and by the drops.
    b = bounds(run)
    check(
        audit.again_across <= b["bound_across_kills_journal"],
        f"{audit.again_across} changes applied again across kills > 100 x calls in flight at the kills "
        f"({b['bound_across_kills_journal']}): {run.kills}",
    )
    check(
        audit.again_across <= b["bound_across_kills_changes"],
        f"{audit.again_across} changes applied again across kills > the {b['bound_across_kills_changes']} "
        f"changes that the calls in flight at the kills carried: {run.kills}",
    )
    for kill in run.kills:  # and kill by kill: what the killed process applied that a later one applied again
        again = audit.again_after.get(kill.round, 0)
        check(
            again <= min(RECORDS_PER_CALL * kill.open_calls, kill.open_changes),
            f"the kill of round {kill.round}: {again} of its changes applied again > min(100 x {kill.open_calls} "
            f"calls in flight, the {kill.open_changes} changes they carried): {kill}",
        )
    check(
        audit.again_within <= b["bound_within_drops"],
        f"{audit.again_within} changes applied again by one process > 100 x {stats['drops_after']} drops after apply",
    )
    # Limits held across every process.
    check(stats["max_concurrent_refreshes"] == 1, f"max_concurrent_refreshes {stats['max_concurrent_refreshes']}")
    check(
        1 <= int(stats["max_in_flight"]) <= CONCURRENCY,
        f"max in flight {stats['max_in_flight']} > {CONCURRENCY}",
    )
    throttled = stats["throttled_429"]
    check(throttled["concurrency"] == 0, f"{throttled['concurrency']} calls over the concurrency limit")
    check(stats["key_overlaps"] == 0, f"{stats['key_overlaps']} key overlaps")
    return found


@pytest.mark.slow
async def test_chaos_suite_kills_and_resumes_without_loss_duplicates_or_a_key_going_backwards(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL the engine at random points and resume each time: exact end state, one outcome per change,
    none twice, no key ever given an older row after a newer one, and changes applied more than once
    bounded by the calls in flight at the kills."""
    run = await run_chaos(tmp_path, seed=SEED)
    assert run.scenario.total >= 20_000
    publish_figures("chaos-suite", figures(run), tmp_path, record_property)
    found = problems(run)
    assert not found, "\n".join(found)


def test_the_history_audit_sees_an_inversion_a_repeat_and_a_change_never_applied(tmp_path: Path) -> None:
    """The oracle itself: on a made-up history, an older row after a newer one is an inversion, a write
    applied again counts each change its journaled record merged, within a process or across processes."""
    scenario = build_scenario(tmp_path, seed=3, sizes=Sizes().scaled(0.05))
    rows = scenario.keys["contacts_by_ext"]
    key = next(k for k in rows if rows.count(k) >= 2)
    first, second = [seq for seq, k in enumerate(rows, start=1) if k == key][:2]

    def entry(n: int, seq: int) -> dict[str, Any]:
        fields = {"Last_Name": f"L{seq}", "Title": "CEO"}
        return {"n": n, "op": "update", "module": "Contacts", "id": key, "fields": fields}

    stranger = {"n": 6, "op": "update", "module": "Contacts", "id": key, "fields": {"Last_Name": "Someone"}}
    history = [entry(1, first), entry(2, second), entry(3, second), entry(4, second), entry(5, first), stranger]
    writes, strange = trace_history(scenario, history)
    assert [w.seq for w in writes] == [first, second, second, second, first]
    assert len(strange) == 1 and "n=6" in strange[0]
    # Process 0 sent the first row alone and the second alone (twice: a retry); process 1 sent both merged.
    journal = [
        (0, "contacts_by_ext", [first]),
        (0, "contacts_by_ext", [second]),
        (1, "contacts_by_ext", [first, second]),
    ]
    audit = audit_history(scenario, writes, journal, lambda n: 0 if n <= 3 else 1)
    assert audit.inversions == [f"contacts_by_ext {key}: row {first} applied (history n=5) after row {second}"]
    # first: applied by n=1 (process 0), n=4 (process 1, merged), n=5 (process 1): again 1 across, 1 within;
    # second: n=2, n=3 (process 0), n=4 (process 1): again 1 within, 1 across.
    assert (audit.applied_again, audit.again_across, audit.again_within) == (4, 2, 2)
    assert audit.changes_applied_again == 2 and audit.again_after == {0: 2}
    assert audit.by_history == 1  # n=5: no record of process 1 ends with the first row; taken from the history
    assert len(audit.unapplied) == scenario.total - 2
