"""`make bench` (python -m benchmarks): prints the results table and writes it under benchmarks/results/.

Today: the saturation scenario of the pipeline issue (100,000 changes, C = 10, 100 ms). The full
suite (bare-loop reference, engine overhead, memory, peers, credits) is the benchmarks issue.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from benchmarks.saturation import run_saturation

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_saturation(
            Path(tmp), changes=args.changes, concurrency=args.concurrency, latency_ms=args.latency_ms
        )
    row = dataclasses.asdict(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "saturation.json").write_text(json.dumps(row, indent=2) + "\n")
    header = "| " + " | ".join(row) + " |"
    line = "| " + " | ".join(str(v) for v in row.values()) + " |"
    table = "\n".join([header, "|" + "---|" * len(row), line])
    (RESULTS / "saturation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
