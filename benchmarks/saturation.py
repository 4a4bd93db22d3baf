"""Saturation: how close a run gets to the limit Zoho allows (C × 100 records / latency).

The sandbox runs in its own process with a concurrency limit and a fixed latency, seeded with the
records; syncengine runs in another process on a CSV of N changes, exactly as a user runs it. The
figures come from the engine's own ``syncengine.run_finished`` log event and the sandbox's counters.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["SaturationResult", "run_saturation"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SaturationResult:
    changes: int
    concurrency: int
    latency_ms: float
    elapsed_s: float
    records_per_s: float
    limit_per_s: float
    ratio_to_limit: float
    max_in_flight: int
    throttled: int
    succeeded: int
    lost: int
    peak_rss_mb: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stats(base: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{base}/__sandbox/stats", timeout=5) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def run_saturation(workdir: Path, *, changes: int, concurrency: int, latency_ms: float) -> SaturationResult:
    workdir.mkdir(parents=True, exist_ok=True)
    seed = workdir / f"seed-{changes}.jsonl"
    source = workdir / f"contacts-{changes}.csv"
    if not seed.exists():
        with seed.open("wb") as handle:
            for i in range(changes):
                handle.write(
                    orjson.dumps(
                        {"module": "Contacts", "record": {"External_Contact_ID": f"C{i:07d}", "Last_Name": "Before"}}
                    )
                    + b"\n"
                )
    if not source.exists():
        with source.open("w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["erp_id", "last_name", "title"])
            for i in range(changes):
                out.writerow([f"C{i:07d}", f"After{i}", "Buyer"])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    ledger = workdir / f"ledger-{changes}-{concurrency}-{int(latency_ms)}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    config = workdir / "saturation.toml"
    config.write_text(
        f'[crm]\napi_domain = "{base}"\naccounts_url = "{base}"\nconcurrency = {concurrency}\n'
        f'sub_concurrency = {min(concurrency, 10)}\n\n[ledger]\npath = "{ledger}"\n\n'
        '[[streams]]\nname = "contacts"\noperation = "update"\nmodule = "Contacts"\n'
        f'source = {{ kind = "csv", path = "{source}" }}\n'
        'match = { column = "erp_id", field = "External_Contact_ID" }\n'
        'fields = { Last_Name = "last_name", Title = "title" }\n'
    )
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncengine",
            "sandbox",
            "--port",
            str(port),
            "--data",
            str(seed),
            "--concurrency",
            str(concurrency),
            "--sub-concurrency",
            str(min(concurrency, 10)),
            "--latency-ms",
            f"{latency_ms},{latency_ms}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"{base}/__sandbox/stats", timeout=120)
        env = {
            **os.environ,
            "ZOHO_CLIENT_ID": "sandbox-client-id",
            "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
            "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
        }
        engine = subprocess.run(
            [sys.executable, "-m", "syncengine", "--json-logs", "run", str(config)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        finished = next(
            (
                json.loads(line)
                for line in engine.stderr.splitlines()
                if line.startswith("{") and '"syncengine.run_finished"' in line
            ),
            None,
        )
        if finished is None:
            raise RuntimeError(f"engine failed (exit {engine.returncode}):\n{engine.stderr[-3000:]}")
        stats = _stats(base)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    elapsed = float(finished["elapsed_s"])
    succeeded = int(finished["succeeded"])
    limit = concurrency * 100 / (latency_ms / 1000)
    rate = changes / elapsed
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return SaturationResult(
        changes=changes,
        concurrency=concurrency,
        latency_ms=latency_ms,
        elapsed_s=round(elapsed, 2),
        records_per_s=round(rate),
        limit_per_s=round(limit),
        ratio_to_limit=round(rate / limit, 3),
        max_in_flight=int(stats["max_in_flight"]),  # type: ignore[call-overload]
        throttled=sum(int(v) for v in stats["throttled_429"].values()),  # type: ignore[attr-defined]
        succeeded=succeeded,
        lost=changes - succeeded,
        peak_rss_mb=round(peak, 1),
    )
