"""``make bench`` (``python -m benchmarks``): every scenario, one table, written under benchmarks/results/.

Each figure is measured in the same run as its reference (the bare aiohttp loop against the same server
process, the limit Zoho allows, SQLite's own rates), so the ratio holds on a noisy machine. See
benchmarks/README.md for what each scenario does and how to run one alone.

    python -m benchmarks                      # everything, about 8 minutes on 2 cores
    python -m benchmarks --only saturation    # one or more of: saturation overhead peers credits
    python -m benchmarks --quick              # sizes / 10, a smoke test; writes results/quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.credits import run_credits
from benchmarks.overhead import run_overhead
from benchmarks.peers import run_peers
from benchmarks.saturation import run_saturation

RESULTS = Path(__file__).parent / "results"
SCENARIOS = ("saturation", "overhead", "peers", "credits")

# (C, latency range in ms, changes): each case takes ~15-35 s per side (bare loop, then syncengine).
SATURATION_CASES = (
    (10, (80.0, 120.0), 150_000),
    (25, (80.0, 120.0), 150_000),
    (10, (250.0, 350.0), 100_000),
    (25, (250.0, 350.0), 100_000),
)
MEMORY_SIZES = (100_000, 1_000_000)
PROFILE_CHANGES = 200_000
SQLITE_ROWS = 200_000
PEER_CHANGES = 10_000


def _ns(values: dict[str, Any]) -> Any:
    """A result as read back from its JSON form, with attribute access."""
    return SimpleNamespace(**values)


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _verdict(ok: bool, figure: str) -> str:
    return f"met ({figure})" if ok else f"**missed** ({figure})"


def _ms(latency: tuple[float, float] | list[float]) -> str:
    low, high = latency
    return f"{(low + high) / 2:g} ± {(high - low) / 2:g} ms"


def _rows(results: dict[str, Any]) -> list[list[str]]:
    """The table: scenario | measured | reference (same run) | ratio | goal | verdict."""
    rows: list[list[str]] = []
    for s in results.get("saturation", []):
        r = _ns(s)
        at_300 = r.latency_ms[1] >= 300
        clean = r.throttled == 0 and r.max_in_flight <= r.concurrency and r.lost == 0
        ok = r.ratio_to_bare >= 0.97 and (r.ratio_to_limit >= 0.95 or not at_300) and clean
        goal = "≥ 0.97 of bare" + (", ≥ 0.95 of limit" if at_300 else "") + "; 0 × 429; in flight ≤ C"
        figure = f"{r.ratio_to_bare:.3f} of bare" + (f", {r.ratio_to_limit:.3f} of limit" if at_300 else "")
        rows.append(
            [
                f"1. saturation C={r.concurrency}, {_ms(r.latency_ms)}, {_n(r.changes)} changes",
                f"{_n(r.engine_per_s)} rec/s; {r.throttled} × 429; max in flight {r.max_in_flight} "
                f"({r.max_in_flight_complex} of 100-record calls), mean {r.engine_mean_in_flight}; "
                f"{r.engine_local_ms_per_call:.1f} ms/call beyond latency; {_n(r.credits_used)} credits; lost {r.lost}",
                f"bare loop {_n(r.bare_per_s)} rec/s ({r.bare_ratio_to_limit:.3f} of limit; mean in flight "
                f"{r.bare_mean_in_flight}; {r.bare_local_ms_per_call:.1f} ms/call beyond latency); "
                f"limit {_n(r.limit_per_s)} rec/s (C × 100 / latency: {_n(r.naive_limit_per_s)})",
                f"{r.ratio_to_bare:.3f} of bare; {r.ratio_to_limit:.3f} of limit",
                goal,
                _verdict(ok, figure),
            ]
        )
    if "overhead" in results:
        o = _ns(results["overhead"])
        big = o.runs[-1]
        rows.append(
            [
                f"2. engine overhead: canned server, no latency, C={o.concurrency}, {_n(big['changes'])} changes, "
                "ledger on",
                f"{_n(o.engine_per_s)} rec/s; {o.cpu_us_per_record:.1f} µs CPU per record "
                f"(+ {o.fixed_cpu_s:.2f} s fixed per run)",
                f"bare loop {_n(o.bare_per_s)} rec/s ({o.bare_cpu_ms_per_call:.3f} ms CPU/call); building bodies "
                f"per call {_n(o.built_per_s)} rec/s ({o.built_cpu_ms_per_call:.3f} ms CPU/call)",
                f"{o.ratio_to_bare:.3f} of bare; {o.ratio_to_built:.3f} of bare+build",
                "≥ 0.333 of bare",
                _verdict(o.ratio_to_bare >= 1 / 3, f"{o.ratio_to_bare:.3f}"),
            ]
        )
        sq = results.get("sqlite_ceiling")
        if sq:
            rows.append(
                [
                    f"2. reference: SQLite on this disk, {_n(sq['rows'])} outcome-shaped rows, "
                    f"{sq['batch']} per transaction",
                    f"append-only {_n(sq['append'])} rows/s; + a random 64-bit key index "
                    f"{_n(sq['append+random_key'])} rows/s ({_n(sq['random_key_late'])} once it holds "
                    f"{_n(sq['rows'])})",
                    "-",
                    "-",
                    "(ceiling for the ledger)",
                    "-",
                ]
            )
        sizes = sorted(o.runs[1:], key=lambda r: r["changes"])
        peak = max(r["peak_rss_mb"] for r in sizes)
        ok = o.memory_ratio <= 1.10 and peak < 150
        rows.append(
            [
                "3. memory: peak RSS of the engine process",
                "; ".join(f"{_n(r['changes'])} changes: {r['peak_rss_mb']:.1f} MB" for r in sizes),
                f"{_n(o.runs[0]['changes'])} changes: {o.runs[0]['peak_rss_mb']:.1f} MB",
                f"{o.memory_ratio:.3f} (largest / next)",
                "within 10%, < 150 MB",
                _verdict(ok, f"{o.memory_ratio:.3f}, {peak:.1f} MB"),
            ]
        )
    if "peers" in results:
        p = _ns(results["peers"])
        for name, peer in (("syncengine", p.syncengine), ("Zoho Python SDK", p.sdk), ("naive asyncio.gather", p.naive)):
            rows.append(
                [
                    f"4. peers: {name}, sandbox C={p.concurrency}, {_ms(p.latency_ms)}, {_n(p.changes)} changes",
                    f"{_n(peer['rate'])} rec/s; {peer['throttled']} × 429; lost {_n(peer['lost'])}",
                    f"limit {_n(p.limit_per_s)} rec/s",
                    f"{peer['rate'] / p.limit_per_s:.3f} of limit",
                    "0 × 429, 0 lost" if name == "syncengine" else "(comparison)",
                    _verdict(peer["throttled"] == 0 and peer["lost"] == 0, "0 × 429, 0 lost")
                    if name == "syncengine"
                    else "-",
                ]
            )
    for c in results.get("credits", []):
        r = _ns(c)
        rows.append(
            [
                f"5. credits: {r.operation}, {_n(r.changes)} changes",
                f"{r.calls_per_1000:g} calls / 1,000 changes; {r.credits} credits (sandbox); "
                f"{r.succeeded} succeeded; {r.throttled} × 429",
                f"engine counted {r.engine_calls} calls",
                f"{r.credits_per_1000:g} credits / 1,000",
                "10 calls / 1,000 (full batches)",
                _verdict(r.calls_per_1000 <= 10, f"{r.calls_per_1000:g}"),
            ]
        )
    return rows


def _table(rows: list[list[str]]) -> str:
    header = ["scenario", "measured", "reference (same run)", "ratio", "goal", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _probe_text(probe: dict[str, Any]) -> list[str]:
    out = [
        f"- garbage collector (timed by gc.callbacks, invisible to a sampler): {probe['gc_s']:.2f} s in "
        f"{sum(probe['collections'])} collections = {probe['gc_s'] / float(probe['elapsed_s']):.1%} of the run's "
        f"{probe['elapsed_s']} s (by generation: " + ", ".join(f"{x:.2f} s" for x in probe["gc_s_by_generation"]) + ")",
        f"- event loop busy {probe['loop_busy_s']:.2f} s of {probe['elapsed_s']} s; callbacks of 1 ms or more "
        "(nothing else runs meanwhile: no response read, no call sent), by task:",
    ]
    out += [
        f"  - {s['task']}: {s['count']:,} × ≥ 1 ms, {s['seconds']:.2f} s in all, longest {s['longest_ms']:.1f} ms"
        for s in probe["stalls"][:5]
    ]
    return out


def _profile_text(results: dict[str, Any]) -> str:
    out: list[str] = []
    saturation = results.get("saturation") or []
    probed = next((s for s in saturation if s.get("probe")), None)
    if probed is not None:
        out += [
            f"Probe, under latency (one more engine run of saturation C={probed['concurrency']}, "
            f"{_ms(probed['latency_ms'])}, {_n(probed['changes'])} changes, under benchmarks.gcwrap):",
            "",
            *_probe_text(probed["probe"]),
            "",
        ]
    overhead = results.get("overhead")
    if not overhead or not overhead.get("profile"):
        return "\n".join(out)
    prof = overhead["profile"]
    gc = overhead.get("gc") or {}
    out += [
        f"Profile of the engine ({prof['tool']}, every thread, {_n(overhead['profile_changes'])} changes against "
        f"the canned server; {prof['samples']:,} samples, {prof['waiting']:.0%} of samples were threads waiting "
        "and are left out):",
        "",
        "Top five costs (self time: where the CPU was when sampled):",
        "",
    ]
    out += [f"{i}. {share:.1%} {name}" for i, (name, share) in enumerate(prof["self_top"][:5], 1)]
    out += ["", "By pipeline stage (innermost engine frame of each sample):", ""]
    out += [f"- {share:.1%} {name}" for name, share in prof["stages"]]
    out += ["", "Threads: " + ", ".join(f"{name} {share:.0%}" for name, share in prof["threads"].items())]
    if gc:
        out += ["", "Probe of the same run:", "", *_probe_text(gc)]
    return "\n".join(out)


def _markdown(results: dict[str, Any], table: str, profile: str) -> str:
    meta = results["meta"]
    return "\n".join(
        [
            f"Measured {meta['date']} by `make bench` ({meta['python']}, {meta['cpus']} CPUs, "
            f"total {meta['total_s']:.0f} s{', --quick' if meta['quick'] else ''}).",
            "",
            table,
            "",
            profile,
            "",
            "Reproduce: `make bench` (all of it), or `.venv/bin/python -m benchmarks --only saturation` "
            "(or overhead, peers, credits); see benchmarks/README.md.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--quick", action="store_true", help="sizes / 10: a smoke test, written to results/quick.*")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled engine run")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    scale = 10 if args.quick else 1
    started = time.monotonic()
    results: dict[str, Any] = {}

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {name}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="syncengine-bench-") as tmp:
        work = Path(tmp)
        if "saturation" in only:
            results["saturation"] = []
            for index, (concurrency, latency, changes) in enumerate(SATURATION_CASES):
                step(f"saturation C={concurrency} {_ms(latency)} {changes // scale:,} changes")
                result = run_saturation(
                    work / "saturation",
                    changes=changes // scale,
                    concurrency=concurrency,
                    latency_ms=latency,
                    probe=index == 0,  # one more engine run, probed: GC and event-loop stalls under latency
                )
                results["saturation"].append(dataclasses.asdict(result))
        if "overhead" in only:
            step("engine overhead and memory (canned server), SQLite ceiling")
            from benchmarks.common import PYTHON, run_json

            results["sqlite_ceiling"], _ = run_json(
                [PYTHON, "-m", "benchmarks.sqlite_ceiling", "--rows", str(SQLITE_ROWS // scale), "--dir", tmp]
            )
            overhead = run_overhead(
                work / "overhead",
                sizes=tuple(n // scale for n in MEMORY_SIZES),
                profile_changes=PROFILE_CHANGES // scale,
                profile=not args.no_profile,
            )
            results["overhead"] = dataclasses.asdict(overhead)
        if "peers" in only:
            step(f"peers {PEER_CHANGES // scale:,} changes")
            results["peers"] = dataclasses.asdict(run_peers(work / "peers", changes=PEER_CHANGES // scale))
        if "credits" in only:
            step("credits")
            results["credits"] = [dataclasses.asdict(r) for r in run_credits(work / "credits")]
    total = time.monotonic() - started
    step("done")
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"Python {platform.python_version()}",
        "cpus": os.cpu_count(),
        "total_s": round(total, 1),
        "quick": args.quick,
        "scenarios": only,
    }
    table = _table(_rows(results))
    profile = _profile_text(results)
    print(table)
    if profile:
        print()
        print(profile)
    RESULTS.mkdir(exist_ok=True)
    stem = "quick" if args.quick else "latest"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(results, table, profile))
    print(f"\nwritten: {RESULTS / stem}.json, {RESULTS / stem}.md ({total:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
