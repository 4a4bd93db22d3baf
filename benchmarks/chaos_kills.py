"""Issue 9's chaos check: SIGKILL a real engine process again and again, resume it, and audit the CRM's history.

    .venv/bin/python -m benchmarks.chaos_kills [--runs 3] [--seed 7340021] [--kills 6] [--scale 1.0]
                                               [--time-limit 300] [--keep DIR]

Each run is ``tests/test_chaos.py``'s (``run_chaos``): the fault suite's scenario (``tests/scenario.py``,
every operation: updates by external ID and by record id, upserts that insert and update, related-record
links by external IDs and by ids, multi-delinks by ids, delinks by external IDs; about 22,500 changes at
``--scale 1``) against an in-process sandbox with faults (5xx, connections dropped before and after
applying, 429s, locks, tokens expiring) and a history of applied writes, in ``syncengine run CONFIG
--resume`` processes SIGKILLed ``--kills`` times (once at start-up, then at random points of progress) until
one completes. Run ``i`` uses seed ``--seed + i``: another scenario, other faults, other kill points.

Printed per run: the kills, the calls in flight at each kill (the killed process's journaled calls whose
changes had no outcome, and the sandbox's own counter sampled right before the SIGKILL), the changes applied
more than once (again after a kill, and again within one process: retries after a dropped connection),
inversions (a key given an older row after a newer one), lost and duplicated outcomes, and every check of
the test that failed. Exit code 0 when every check of every run passed, else 1. The time limit bounds each
run's rounds together.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio

from syncengine.logs import configure_logging
from tests.scenario import Sizes
from tests.test_chaos import ChaosRun, bounds, figures, problems, run_chaos

__all__ = ["main"]


def report(number: int, seed: int, run: ChaosRun, found: list[str]) -> None:
    fig, audit, b = figures(run), run.audit, bounds(run)
    print(f"\nrun {number}: seed {seed}, {fig['changes']} changes, {fig['rounds']} processes, {run.seconds} s")
    print(
        f"  {'kill':>4}  {'at outcome rows':>15}  {'in flight (journal)':>19}  {'changes they carried':>20}  "
        f"{'in flight (sandbox)':>19}  {'late calls':>10}  {'applied again after it':>22}"
    )
    for i, kill in enumerate(run.kills, start=1):
        print(
            f"  {i:>4}  {kill.rows:>15}  {kill.open_calls:>19}  {kill.open_changes:>20}  "
            f"{kill.sandbox_in_flight:>19}  {kill.late_calls:>10}  {audit.again_after.get(kill.round, 0):>22}"
        )
    print(
        f"  changes applied more than once: {audit.applied_again} (distinct changes: {audit.changes_applied_again})\n"
        f"    again after a kill: {audit.again_across}  <= 100 x calls in flight (journal) = "
        f"{b['bound_across_kills_journal']}, <= changes they carried = {b['bound_across_kills_changes']}; "
        f"100 x calls in flight (sandbox) = {b['bound_across_kills_sandbox']}\n"
        f"    again within a process: {audit.again_within}  <= 100 x {run.stats['drops_after']} drops after apply "
        f"= {b['bound_within_drops']}"
    )
    print(
        f"  inversions: {len(audit.inversions)}, history writes: {audit.writes}, unexplained writes: "
        f"{len(run.strange_writes)}, changes never applied: {len(audit.unapplied)}, lost: {fig['lost']}, "
        f"duplicated: {fig['duplicated']}, CRM differences: {len(run.diffs)}, most changes in one call: "
        f"{run.max_changes_per_call}"
    )
    print(
        f"  faults: {fig['errors_500']} 500s, {fig['drops_before']} drops before / {fig['drops_after']} after "
        f"apply, {fig['throttled_429']} 429s, {fig['locks']} locks, {fig['refreshes']} token refreshes; "
        f"{fig['calls_sandbox']} calls"
    )
    print("  checks: all passed" if not found else "  FAILED:\n    " + "\n    ".join(found))


async def measure(args: argparse.Namespace, root: Path) -> bool:
    sizes = Sizes().scaled(args.scale)
    ok = True
    totals = {"kills": 0, "again_across": 0, "again_within": 0, "inversions": 0, "bound": 0}
    started = time.monotonic()
    for number in range(args.runs):
        seed = args.seed + number
        directory = root / f"run-{number}"
        directory.mkdir(parents=True)
        run = await run_chaos(directory, seed=seed, sizes=sizes, kills=args.kills, time_limit=args.time_limit)
        found = problems(run, min_kills=min(4, args.kills))
        if run.scenario.total < 20_000:
            found.append(f"only {run.scenario.total} changes (20,000+ wanted: --scale 1 or more)")
        report(number, seed, run, found)
        ok = ok and not found
        totals["kills"] += len(run.kills)
        totals["again_across"] += run.audit.again_across
        totals["again_within"] += run.audit.again_within
        totals["inversions"] += len(run.audit.inversions)
        totals["bound"] += bounds(run)["bound_across_kills_journal"]
    print(
        f"\n{args.runs} runs, {time.monotonic() - started:.0f} s: {totals['kills']} kills, "
        f"{totals['inversions']} inversions, {totals['again_across']} changes applied again after a kill "
        f"(bound 100 x calls in flight: {totals['bound']}), {totals['again_within']} within a process; "
        + ("every check passed" if ok else "CHECKS FAILED")
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos_kills")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with its own seed")
    parser.add_argument("--seed", type=int, default=7340021, help="the first run's seed")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs per run (4 or more)")
    parser.add_argument("--scale", type=float, default=1.0, help="scenario size (1.0: about 22,500 changes)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for each run's rounds together")
    parser.add_argument("--keep", type=Path, default=None, help="keep sources, ledgers and logs here")
    args = parser.parse_args()
    if args.kills < 4:
        parser.error("--kills must be 4 or more")
    configure_logging(level=logging.WARNING)
    if args.keep is not None:
        shutil.rmtree(args.keep, ignore_errors=True)
        args.keep.mkdir(parents=True)
        ok = anyio.run(measure, args, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ok = anyio.run(measure, args, Path(tmp))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
