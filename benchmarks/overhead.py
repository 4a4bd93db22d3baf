"""Scenarios 2 and 3, engine overhead and memory: syncengine against a server that costs nothing.

The canned-answer server (``benchmarks.canned``) runs in its own process with no latency and no limit,
so the client's own CPU is what bounds every figure. In one run, against that one server process:

- the bare aiohttp loop over the same 1,000,000 changes' bodies, prebuilt (the reference), and built per
  call from the rows (what any Python client must at least do);
- ``syncengine run`` end to end (CSV source -> batches -> calls -> ledger, the ledger on, C = 10) on a
  100-change input (the fixed cost: start-up, ledger open, token), 100,000 and 1,000,000 changes: the
  records/s, CPU per record, and the peak RSS of the engine process alone (``os.wait4``);
- one more engine run of ``profile_changes`` under a sampling profiler (py-spy if installed, else
  pyinstrument), wrapped by ``benchmarks.gcwrap`` to time the garbage collector, which a sampling
  profiler cannot see.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    CREDENTIALS,
    PYTHON,
    EngineRun,
    Server,
    canned_server,
    contact_csv,
    engine_config,
    run_engine,
    run_json,
    run_measured,
)
from benchmarks.profiling import Profile, profiled_command, read_profile

__all__ = ["EngineSize", "OverheadResult", "run_overhead"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSize:
    changes: int
    elapsed_s: float
    per_s: float
    cpu_s: float
    peak_rss_mb: float
    server_cpu_s: float  # the canned server's CPU during the run: proof it was not the bottleneck
    succeeded: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OverheadResult:
    concurrency: int
    bare_changes: int
    bare_per_s: float
    bare_cpu_ms_per_call: float
    built_per_s: float  # the bare loop building each body per call
    built_cpu_ms_per_call: float
    runs: list[EngineSize]  # the fixed-cost run first, then the measured sizes
    engine_per_s: float  # the largest run
    ratio_to_bare: float
    ratio_to_built: float
    cpu_us_per_record: float  # marginal: (CPU(largest) - CPU(fixed-cost run)) / extra records
    fixed_cpu_s: float
    memory_ratio: float  # peak RSS of the largest run / of the next size down
    profile_changes: int
    profile: Profile | None
    gc: dict[str, object] | None


def _engine(server: Server, work: Path, changes: int, concurrency: int) -> tuple[EngineSize, EngineRun]:
    source = contact_csv(work / f"contacts-{changes}.csv", changes)
    config = engine_config(
        work / f"overhead-{changes}.toml",
        base=server.base,
        ledger=work / f"overhead-{changes}.db",
        source=source,
        concurrency=concurrency,
    )
    cpu0 = server.cpu_s()
    run = run_engine(config)
    size = EngineSize(
        changes=changes,
        elapsed_s=round(run.elapsed_s, 3),
        per_s=round(run.rate),
        cpu_s=round(run.process.cpu_s, 3),
        peak_rss_mb=round(run.process.peak_rss_mb, 1),
        server_cpu_s=round(server.cpu_s() - cpu0, 2),
        succeeded=run.succeeded,
    )
    for suffix in ("", "-wal", "-shm"):  # a 1M-row ledger is ~0.5 GB: do not keep it
        Path(f"{work}/overhead-{changes}.db{suffix}").unlink(missing_ok=True)
    return size, run


def _profile(
    server: Server, work: Path, changes: int, concurrency: int
) -> tuple[Profile | None, dict[str, object] | None]:
    source = contact_csv(work / f"contacts-{changes}.csv", changes)
    config = engine_config(
        work / "profile.toml", base=server.base, ledger=work / "profile.db", source=source, concurrency=concurrency
    )
    tool, argv = profiled_command(work / "profile.out", "benchmarks.gcwrap", ["--json-logs", "run", str(config)])
    run = run_measured(argv, env={**os.environ, **CREDENTIALS})
    gc_line = next((json.loads(x) for x in run.stderr.splitlines() if '"bench.probe"' in x), None)
    finished = next((json.loads(x) for x in run.stderr.splitlines() if '"syncengine.run_finished"' in x), None)
    if gc_line is not None and finished is not None:
        gc_line["elapsed_s"] = finished["elapsed_s"]
        gc_line["share_of_elapsed"] = round(float(gc_line["gc_s"]) / float(finished["elapsed_s"]), 3)
    try:
        profile = read_profile(tool, work / "profile.out")
    except (OSError, ValueError):
        profile = None
    return profile, gc_line


def run_overhead(
    work: Path,
    *,
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    concurrency: int = 10,
    profile_changes: int = 200_000,
    profile: bool = True,
) -> OverheadResult:
    work.mkdir(parents=True, exist_ok=True)
    largest = max(sizes)
    with canned_server() as server:
        bare, _ = run_json(
            [
                PYTHON,
                "-m",
                "benchmarks.bare",
                "--base",
                server.base,
                "--changes",
                str(largest),
                "--concurrency",
                str(concurrency),
            ]
        )
        built, _ = run_json(
            [
                PYTHON,
                "-m",
                "benchmarks.bare",
                "--base",
                server.base,
                "--changes",
                str(largest),
                "--concurrency",
                str(concurrency),
                "--build",
            ]
        )
        runs = [_engine(server, work, n, concurrency)[0] for n in (100, *sorted(sizes))]
        prof, gc_line = _profile(server, work, profile_changes, concurrency) if profile else (None, None)
    fixed, big = runs[0], runs[-1]
    by_size = sorted(runs[1:], key=lambda r: r.changes)
    memory_ratio = by_size[-1].peak_rss_mb / by_size[-2].peak_rss_mb if len(by_size) > 1 else 1.0
    return OverheadResult(
        concurrency=concurrency,
        bare_changes=largest,
        bare_per_s=round(float(bare["rate"])),
        bare_cpu_ms_per_call=float(bare["cpu_ms_per_call"]),
        built_per_s=round(float(built["rate"])),
        built_cpu_ms_per_call=float(built["cpu_ms_per_call"]),
        runs=runs,
        engine_per_s=big.per_s,
        ratio_to_bare=round(big.per_s / float(bare["rate"]), 3),
        ratio_to_built=round(big.per_s / float(built["rate"]), 3),
        cpu_us_per_record=round((big.cpu_s - fixed.cpu_s) * 1e6 / (big.changes - fixed.changes), 2),
        fixed_cpu_s=fixed.cpu_s,
        memory_ratio=round(memory_ratio, 3),
        profile_changes=profile_changes,
        profile=prof,
        gc=gc_line,
    )
