"""Issue 9's skip-unchanged check: a second run of an unchanged change-log export makes 0 calls and rolls no key back.

    .venv/bin/python -m benchmarks.rerun_unchanged [--rows 100000] [--seed 1] [--time-limit 600]

The export is a change log: ``--rows`` contact rows over ``rows / 3`` keys, each key with 1 to 5 rows (3 on
average) spread at random through the file, each row setting the contact's Title and, in Description, its
own row number (so every row of a key differs from the others). It runs once against an in-process sandbox
(latency 0, no faults), then again, unchanged, with the same ledger. Printed: the calls the second run made
(0 expected), its outcome counts by status and code, and how many keys the CRM does not hold at their last
row's values (0 expected), with examples. Exit code 0 when both figures are 0, else 1.
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import anyio

from syncengine.config import Config, Secrets, load_config
from syncengine.logs import configure_logging
from syncengine.pipeline import RunOptions, RunResult, run_sync
from syncengine.sandbox import Sandbox, SandboxOptions

__all__ = ["main"]

TITLES = ("Buyer", "Head of Purchasing", "Senior Buyer", "Purchasing Director", "Chief Operating Officer")
SECRETS = Secrets(
    client_id="sandbox-client-id",
    client_secret="sandbox-client-secret",
    refresh_token="sandbox-refresh-token",
    access_token=None,
)


@dataclass(frozen=True, slots=True)
class Last:
    """A key's last row: its number and the title it sets."""

    row: int
    title: str


def write_export(path: Path, rows: int, seed: int) -> tuple[int, dict[str, Last]]:
    """The change-log CSV; the number of keys and each key's last row."""
    rng = random.Random(seed)
    keys = max(1, rows // 3)
    counts = [1] * keys  # every key has a row; the rest go to random keys, at most 5 rows each
    extra = max(0, rows - keys)
    while extra:
        key = rng.randrange(keys)
        if counts[key] < 5:
            counts[key] += 1
            extra -= 1
    entries = [key for key, n in enumerate(counts) for _ in range(n)]
    rng.shuffle(entries)
    versions: Counter[int] = Counter()
    last: dict[str, Last] = {}
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["erp_id", "title", "row"])
        for row, key in enumerate(entries, start=1):
            name = f"C{key:07d}"
            title = TITLES[versions[key] % len(TITLES)]
            versions[key] += 1
            out.writerow([name, title, row])
            last[name] = Last(row, title)
    return len(last), last


def write_config(path: Path, url: str, source: Path) -> Config:
    path.write_text(
        f'[crm]\napi_domain = "{url}"\naccounts_url = "{url}"\nconcurrency = 10\n\n'
        f'[ledger]\npath = "{path.parent / "ledger.db"}"\n\n'
        '[[streams]]\nname = "contacts"\noperation = "update"\nmodule = "Contacts"\n'
        f'source = {{ kind = "csv", path = "{source}" }}\n'
        'match = { column = "erp_id", field = "External_Contact_ID" }\n'
        'fields = { Title = "title", Description = "row" }\n',
        encoding="utf-8",
    )
    return load_config(path)


def outcome_counts(ledger: Path, run_id: int) -> Counter[str]:
    with closing(sqlite3.connect(ledger)) as db:
        rows = db.execute(
            "SELECT status, code, COUNT(*) FROM outcomes WHERE run_id = ? GROUP BY status, code", (run_id,)
        ).fetchall()
    return Counter({f"{status}/{code or '-'}": int(n) for status, code, n in rows})


async def timed_run(config: Config, limit: float) -> tuple[RunResult, float]:
    started = time.monotonic()
    with anyio.fail_after(limit):
        result = await run_sync(config, SECRETS, options=RunOptions())
    return result, time.monotonic() - started


async def measure(rows: int, seed: int, limit: float, work: Path) -> bool:
    source = work / "contacts.csv"
    keys, last = write_export(source, rows, seed)
    print(f"export: {rows} rows, {keys} keys ({rows / keys:.2f} rows per key, 1 to 5, spread through the file)")
    deadline = time.monotonic() + limit
    async with Sandbox(SandboxOptions()) as sb:
        sb.state.load(
            {"records": {"Contacts": [{"External_Contact_ID": k, "Last_Name": "Before"} for k in sorted(last)]}}
        )
        config = write_config(work / "sync.toml", sb.url, source)
        first, seconds = await timed_run(config, deadline - time.monotonic())
        calls_first = int(str(sb.stats.snapshot()["calls_total"]))
        s = first.summary
        print(f"run 1: read {s.read}, succeeded {s.succeeded}, {calls_first} calls, {seconds:.1f} s")
        second, seconds = await timed_run(config, deadline - time.monotonic())
        calls_second = int(str(sb.stats.snapshot()["calls_total"])) - calls_first
        s = second.summary
        counts = outcome_counts(config.ledger.path, s.run_id)
        print(f"run 2 (unchanged export, same ledger): {calls_second} calls (0 expected), {seconds:.1f} s")
        print(f"  outcomes: {', '.join(f'{k} {n}' for k, n in counts.most_common())}")
        print(
            f"  summary: read {s.read} = succeeded {s.succeeded} + rejected {s.rejected} + failed {s.failed} "
            f"+ invalid {s.invalid} + skipped {s.skipped} + pending {s.pending} (adds up: {s.adds_up})"
        )
        wrong: list[str] = []
        for key, want in last.items():
            record = sb.state.find_by_field("Contacts", "External_Contact_ID", key) or {}
            if (record.get("Title"), record.get("Description")) != (want.title, str(want.row)):
                wrong.append(
                    f"{key}: holds row {record.get('Description')} ({record.get('Title')!r}), "
                    f"its last row is {want.row} ({want.title!r})"
                )
    print(f"keys not at their last row's values: {len(wrong)} of {keys} (0 expected)")
    for line in wrong[:5]:
        print(f"  e.g. {line}")
    ok = calls_second == 0 and not wrong and s.adds_up
    print("verdict:", "PASS" if ok else "FAIL")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerun_unchanged")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds for both runs together")
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)  # the figures below, not the engine's info events
    with tempfile.TemporaryDirectory() as tmp:
        ok = anyio.run(measure, args.rows, args.seed, args.time_limit, Path(tmp))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
