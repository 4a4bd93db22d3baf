"""Scenario 4, peers: syncengine beside the official SDK and a naive asyncio script, same sandbox, same run.

One sandbox process like a Standard-edition org (C = 10, sub-concurrency 10, 100 ± 20 ms per call),
seeded with the contacts and reset between peers so each starts from the same state. Each peer runs in
its own process over the same CSV of changes:

- syncengine (``syncengine run``);
- the official Zoho Python SDK, zohocrmsdk7-0 (``benchmarks.peer_sdk``): one bulk update of 100 at a time;
- a naive asyncio script (``benchmarks.peer_naive``): every batch at once with ``asyncio.gather``.

Records/s counts records that ended SUCCESS; lost = changes read that did not. 429s are the sandbox's own
count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, contact_csv, contact_seed, engine_config, run_engine, run_json, sandbox_server

__all__ = ["PeersResult", "run_peers"]

CONCURRENCY = 10
LATENCY_MS = (80.0, 120.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeersResult:
    changes: int
    concurrency: int
    latency_ms: tuple[float, float]
    limit_per_s: float
    syncengine: dict[str, Any]
    sdk: dict[str, Any]
    naive: dict[str, Any]


def _figures(rate: float, throttled: int, lost: int, elapsed: float, calls: int, cpu_s: float) -> dict[str, Any]:
    return {
        "rate": round(rate),
        "throttled": throttled,
        "lost": lost,
        "elapsed_s": round(elapsed, 2),
        "calls": calls,
        "cpu_s": round(cpu_s, 2),
    }


def run_peers(work: Path, *, changes: int) -> PeersResult:
    work.mkdir(parents=True, exist_ok=True)
    seed = contact_seed(work / f"seed-{changes}.jsonl", changes)
    source = contact_csv(work / f"contacts-{changes}.csv", changes)
    mean = (LATENCY_MS[0] + LATENCY_MS[1]) / 2 / 1000
    with sandbox_server(data=seed, concurrency=CONCURRENCY, sub_concurrency=10, latency_ms=LATENCY_MS) as server:
        config = engine_config(
            work / "peers.toml", base=server.base, ledger=work / "peers.db", source=source, concurrency=CONCURRENCY
        )
        engine = run_engine(config)
        stats = server.stats()
        mine = _figures(
            engine.succeeded / engine.elapsed_s,
            int(stats["throttled_429_total"]),
            engine.read - engine.succeeded,
            engine.elapsed_s,
            int(stats["calls_total"]),
            engine.process.cpu_s,
        )

        peers: dict[str, dict[str, Any]] = {}
        for name, argv in (
            (
                "sdk",
                [
                    PYTHON,
                    "-m",
                    "benchmarks.peer_sdk",
                    "--base",
                    server.base,
                    "--source",
                    str(source),
                    "--work",
                    str(work / "sdk"),
                ],
            ),
            ("naive", [PYTHON, "-m", "benchmarks.peer_naive", "--base", server.base, "--source", str(source)]),
        ):
            server.reset()
            result, process = run_json(argv)
            stats = server.stats()
            peers[name] = _figures(
                float(result["rate"]),
                int(stats["throttled_429_total"]),
                int(result["lost"]),
                float(result["elapsed_s"]),
                int(stats["calls_total"]),
                process.cpu_s,
            )
    return PeersResult(
        changes=changes,
        concurrency=CONCURRENCY,
        latency_ms=LATENCY_MS,
        limit_per_s=round(CONCURRENCY * 100 / mean),
        syncengine=mine,
        sdk=peers["sdk"],
        naive=peers["naive"],
    )
