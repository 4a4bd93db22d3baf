"""Scenario 1, saturation: how close a run gets to the limit Zoho allows, against the bare loop.

The sandbox runs in its own process with Zoho's limits (concurrency C, sub-concurrency 10 for writes of
more than 10 records) and a latency with jitter; it is seeded with the contacts. In the same run, against
the same sandbox process (reset in between, so both start from the same state):

- the bare aiohttp loop (``benchmarks.bare``) makes the same calls with as many tasks as Zoho lets
  100-record writes be in flight: min(C, 10);
- ``syncengine run`` (its own process, exactly as a user runs it) syncs the CSV of the same changes.

The limit is what Zoho allows for 100-record writes: min(C, sub-concurrency 10) × 100 records / mean
latency. (C × 100 / latency, the naive formula, is also recorded: for C = 25 it is not reachable with
100-record calls, because Zoho admits at most 10 of them at once.) Figures for syncengine come from its
``syncengine.run_finished`` event, and the sandbox's counters (429s, calls in flight, credits).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CREDENTIALS,
    PYTHON,
    Server,
    contact_csv,
    contact_seed,
    engine_config,
    run_engine,
    run_json,
    run_measured,
    sandbox_server,
)

__all__ = ["SUB_CONCURRENCY", "SaturationResult", "run_saturation"]

SUB_CONCURRENCY = 10  # Zoho: writes carrying more than 10 records, every edition


@dataclass(frozen=True, slots=True, kw_only=True)
class SaturationResult:
    changes: int
    concurrency: int
    latency_ms: tuple[float, float]
    limit_per_s: float  # min(C, 10) × 100 / mean latency
    naive_limit_per_s: float  # C × 100 / mean latency
    bare_per_s: float
    bare_ratio_to_limit: float
    bare_throttled: int
    engine_per_s: float
    engine_elapsed_s: float
    ratio_to_bare: float
    ratio_to_limit: float
    throttled: int  # 429s the sandbox sent the engine
    max_in_flight: int  # the sandbox's own count
    max_in_flight_complex: int
    succeeded: int
    lost: int
    calls: int
    credits_used: int
    engine_cpu_s: float
    engine_peak_rss_mb: float
    # Mean calls in flight while calls were in flight, sampled from the sandbox every 20 ms: the share of
    # the slots each client kept busy (throughput = in flight × 100 / latency).
    bare_mean_in_flight: float
    engine_mean_in_flight: float
    # Time per call cycle beyond the mean latency: elapsed × slots / calls − latency (ms).
    bare_local_ms_per_call: float
    engine_local_ms_per_call: float
    probe: dict[str, Any] | None  # GC and event-loop stalls of one more engine run (benchmarks.gcwrap)


@contextmanager
def _in_flight(server: Server, every: float = 0.02) -> Iterator[list[int]]:
    """Sample the sandbox's calls in flight until the block ends."""
    samples: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every):
            with suppress(OSError):
                samples.append(int(server.stats()["in_flight"]))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def _mean_busy(samples: list[int]) -> float:
    busy = [s for s in samples if s > 0]  # leave out the start and the end, when nothing is sent yet
    return round(sum(busy) / len(busy), 2) if busy else 0.0


def run_saturation(
    work: Path, *, changes: int, concurrency: int, latency_ms: tuple[float, float], probe: bool = False
) -> SaturationResult:
    work.mkdir(parents=True, exist_ok=True)
    seed = contact_seed(work / f"seed-{changes}.jsonl", changes)
    source = contact_csv(work / f"contacts-{changes}.csv", changes)
    mean_latency = (latency_ms[0] + latency_ms[1]) / 2 / 1000
    limit = min(concurrency, SUB_CONCURRENCY) * 100 / mean_latency
    with sandbox_server(
        data=seed, concurrency=concurrency, sub_concurrency=SUB_CONCURRENCY, latency_ms=latency_ms
    ) as server:
        with _in_flight(server) as bare_samples:
            bare, _ = run_json(
                [
                    PYTHON,
                    "-m",
                    "benchmarks.bare",
                    "--base",
                    server.base,
                    "--changes",
                    str(changes),
                    "--concurrency",
                    str(min(concurrency, SUB_CONCURRENCY)),
                ]
            )
        server.reset()
        tag = f"{changes}-{concurrency}-{int(latency_ms[1])}"
        config = engine_config(
            work / f"saturation-{tag}.toml",
            base=server.base,
            ledger=work / f"saturation-{tag}.db",
            source=source,
            concurrency=concurrency,
            sub_concurrency=SUB_CONCURRENCY,
        )
        with _in_flight(server) as engine_samples:
            engine = run_engine(config)
        stats = server.stats()
        probed = _probe(server, config) if probe else None
    rate = engine.rate
    slots = min(concurrency, SUB_CONCURRENCY)
    calls = int(stats["calls_total"])
    bare_elapsed = float(bare["elapsed_s"])
    return SaturationResult(
        changes=changes,
        concurrency=concurrency,
        latency_ms=latency_ms,
        limit_per_s=round(limit),
        naive_limit_per_s=round(concurrency * 100 / mean_latency),
        bare_per_s=round(float(bare["rate"])),
        bare_ratio_to_limit=round(float(bare["rate"]) / limit, 3),
        bare_throttled=int(bare["throttled"]),
        engine_per_s=round(rate),
        engine_elapsed_s=round(engine.elapsed_s, 2),
        ratio_to_bare=round(rate / float(bare["rate"]), 3),
        ratio_to_limit=round(rate / limit, 3),
        throttled=int(stats["throttled_429_total"]),
        max_in_flight=int(stats["max_in_flight"]),
        max_in_flight_complex=int(stats["max_in_flight_complex"]),
        succeeded=engine.succeeded,
        lost=changes - engine.succeeded,
        calls=int(stats["calls_total"]),
        credits_used=int(stats["credits_used"]),
        engine_cpu_s=round(engine.process.cpu_s, 2),
        engine_peak_rss_mb=round(engine.process.peak_rss_mb, 1),
        bare_mean_in_flight=_mean_busy(bare_samples),
        engine_mean_in_flight=_mean_busy(engine_samples),
        bare_local_ms_per_call=round(bare_elapsed * slots / int(bare["calls"]) * 1000 - mean_latency * 1000, 2),
        engine_local_ms_per_call=round(engine.elapsed_s * slots / calls * 1000 - mean_latency * 1000, 2),
        probe=probed,
    )


def _probe(server: Server, config: Path) -> dict[str, Any] | None:
    """One more engine run, under benchmarks.gcwrap: the GC's time and the event loop's stalls."""
    server.reset()
    ledger = Path(str(config).replace(".toml", ".db"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    run = run_measured(
        [PYTHON, "-m", "benchmarks.gcwrap", "--json-logs", "run", str(config)], env={**os.environ, **CREDENTIALS}
    )
    lines = run.stderr.splitlines()
    probe = next((json.loads(x) for x in lines if '"bench.probe"' in x), None)
    finished = next((json.loads(x) for x in lines if '"syncengine.run_finished"' in x), None)
    if probe is not None and finished is not None:
        probe["elapsed_s"] = finished["elapsed_s"]
        probe["rate"] = finished.get("rate")
    return probe
