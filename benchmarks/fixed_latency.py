"""The pipeline issue's check: N changes, sandbox latency fixed at L ms, concurrency C, both as real processes.

    .venv/bin/python -m benchmarks.fixed_latency [--changes 100000] [--latency-ms 100] [--concurrency 10]

Prints the engine's ``syncengine.run_finished`` figures, the ratio to the limit (C x 100 / latency) and
what the sandbox saw (max calls in flight, 429s).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fixed_latency")
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seed, source = work / "seed.jsonl", work / "contacts.csv"
        with seed.open("wb") as handle:
            for i in range(args.changes):
                record = {"External_Contact_ID": f"C{i:07d}", "Last_Name": "Before"}
                handle.write(orjson.dumps({"module": "Contacts", "record": record}) + b"\n")
        with source.open("w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["erp_id", "last_name", "title"])
            out.writerows([f"C{i:07d}", f"After{i}", "Buyer"] for i in range(args.changes))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        (work / "run.toml").write_text(
            f'[crm]\napi_domain = "{base}"\naccounts_url = "{base}"\nconcurrency = {args.concurrency}\n\n'
            f'[ledger]\npath = "{work / "ledger.db"}"\n\n[[streams]]\nname = "contacts"\noperation = "update"\n'
            f'module = "Contacts"\nsource = {{ kind = "csv", path = "{source}" }}\n'
            'match = { column = "erp_id", field = "External_Contact_ID" }\n'
            'fields = { Last_Name = "last_name", Title = "title" }\n'
        )
        latency = f"{args.latency_ms},{args.latency_ms}"
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
                str(args.concurrency),
                "--latency-ms",
                latency,
                "--refresh-limit",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/__sandbox/stats", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            env = {
                **os.environ,
                "ZOHO_CLIENT_ID": "sandbox-client-id",
                "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
                "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
            }
            engine = subprocess.run(
                [sys.executable, "-m", "syncengine", "--json-logs", "run", str(work / "run.toml")],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            finished = next(
                json.loads(line) for line in engine.stderr.splitlines() if "syncengine.run_finished" in line
            )
            with urllib.request.urlopen(f"{base}/__sandbox/stats", timeout=5) as response:
                stats = json.loads(response.read())
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    limit = args.concurrency * 100 / (args.latency_ms / 1000)
    rate = args.changes / finished["elapsed_s"]
    lost = args.changes - finished["succeeded"]
    print(
        f"{args.changes:,} changes in {finished['elapsed_s']:.2f} s = {rate:,.0f} records/s = "
        f"{rate / limit:.3f} of the limit ({limit:,.0f}/s); succeeded {finished['succeeded']:,}, lost {lost}; "
        f"calls {finished['calls']:,}; max in flight: engine {finished['max_in_flight']}, "
        f"sandbox {stats['max_in_flight']}; 429s {stats['throttled_429_total']}"
    )


if __name__ == "__main__":
    main()
