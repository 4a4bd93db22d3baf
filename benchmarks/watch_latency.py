"""`syncengine watch` as a real process: how fast a SIGTERM ends it, how fast it recovers from a CRM outage.

    .venv/bin/python -m benchmarks.watch_latency [--restarts 20] [--outages 3] [--latency-ms 100,300]

- **stop**: a SQLite table with changes waiting; `watch` is started, SIGTERM is sent while calls are in
  flight (the sandbox adds latency), and the time to exit is measured, ``--restarts`` times: in turn with
  the CRM answering, during an outage (every call answered 500) and with a flaky CRM (30% of calls 500).
  Between restarts more rows change, so every start has work to do.
- **outage**: one `watch` follows the table; the CRM goes down for ``--outage-s`` seconds (every call
  answered 500, then: the sandbox not listening at all) while rows are committed to the table; each row's lag
  is measured from the moment the CRM answers again to the moment the sandbox applies its write.

Also reported: writes the sandbox applied more than once (a restart must never re-send a row it already
applied). Prints p50/p95/p100 of each figure. The sandbox runs in this process (its state and its history of
applied writes, each with the time it was applied, are read directly); the watch is a separate process, as a
user runs it.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
from anyio.abc import Process

from benchmarks.common import CREDENTIALS, free_port
from syncengine.sandbox import Sandbox, SandboxOptions

CONTACTS = 2_000
WATCH = (sys.executable, "-m", "syncengine", "--json-logs", "watch")


class Applied:
    """When the sandbox first applied each (key, Last_Name) write, and how often: read from its history
    (``record_history``), whose entries carry the time each write was applied."""

    def __init__(self, sb: Sandbox) -> None:
        self._state = sb.state
        self._seen = len(sb.state.history)  # count from now on, as a fresh observer would
        self._at: dict[tuple[str, str], float] = {}
        self._count: Counter[tuple[str, str]] = Counter()

    def _read(self) -> None:
        entries = self._state.history_since(self._seen)
        self._seen += len(entries)
        for entry in entries:
            # An entry names the record by its id; the watch addresses it by its external ID.
            record = self._state.get_record(str(entry["module"]), str(entry["id"]))
            if record is None or "External_Contact_ID" not in record:
                continue
            fields, at = entry["fields"], entry["at"]
            assert isinstance(fields, dict) and isinstance(at, float), entry
            key = (str(record["External_Contact_ID"]), str(fields.get("Last_Name")))
            self._at.setdefault(key, at)
            self._count[key] += 1

    @property
    def at(self) -> dict[tuple[str, str], float]:
        """The Unix time each write was first applied (``time.time()``, the history's clock)."""
        self._read()
        return self._at

    @property
    def count(self) -> Counter[tuple[str, str]]:
        self._read()
        return self._count

    def has(self, writes: Sequence[tuple[str, str]]) -> bool:
        at = self.at
        return all(w in at for w in writes)

    def twice(self) -> int:
        return sum(1 for n in self.count.values() if n > 1)


class Erp:
    """The source table: contacts(id, erp_id, last_name, updated_at), updated_at an increasing integer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, erp_id TEXT, last_name TEXT, updated_at INTEGER)"
        )
        self.clock = 0

    def change(self, ids: Sequence[int], tag: str) -> list[tuple[str, str]]:
        """Set last_name of ``ids`` to ``{tag}-{id}`` in one commit; returns the writes expected in the CRM."""
        rows = []
        for i in ids:
            self.clock += 1
            rows.append((i, f"C{i}", f"{tag}-{i}", self.clock))
        self.db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " last_name = excluded.last_name, updated_at = excluded.updated_at",
            rows,
        )
        return [(f"C{i}", name) for i, _, name, _ in rows]


def write_config(work: Path, url: str, erp: Path, concurrency: int) -> Path:
    path = work / "watch.toml"
    path.write_text(
        f'[crm]\napi_domain = "{url}"\naccounts_url = "{url}"\nconcurrency = {concurrency}\n\n'
        f'[ledger]\npath = "{work / "ledger.db"}"\n\n[[streams]]\nname = "contacts"\noperation = "update"\n'
        'module = "Contacts"\nbatch_size = 10\nlinger_ms = 20\n'
        f'source = {{ kind = "sqlite", path = "{erp}", table = "contacts", key = "id", cursor = "updated_at" }}\n'
        'match = { column = "erp_id", field = "External_Contact_ID" }\nfields = { Last_Name = "last_name" }\n',
        encoding="utf-8",
    )
    return path


async def start_watch(config: Path, log: Path, interval: float) -> Process:
    handle = log.open("ab")
    return await anyio.open_process(
        [*WATCH, str(config), "--interval", str(interval), "--metrics-port", "0"],
        env={**os.environ, **CREDENTIALS},
        stdout=handle,
        stderr=handle,
    )


async def wait_for(check: Callable[[], bool], limit: float, what: str) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.005)
    del what


def busy(sb: Sandbox, calls: int) -> bool:
    """The sandbox has had ``calls`` calls and has some in flight now."""
    return sum(sb.stats.calls.values()) >= calls and sb.stats.in_flight > 0


STOP_CONDITIONS = ("calls in flight", "during an outage", "flaky CRM")


async def stop_figures(
    sb: Sandbox, erp: Erp, config: Path, work: Path, restarts: int, interval: float
) -> dict[str, list[float]]:
    """Seconds from SIGTERM to exit, one per restart, each stopped with calls in flight: with the CRM
    answering, during an outage (every call answered 500 for a second already), and with 30% of calls 500."""
    times: dict[str, list[float]] = {name: [] for name in STOP_CONDITIONS}
    for n in range(restarts):
        condition = STOP_CONDITIONS[n % len(STOP_CONDITIONS)]
        erp.change(range(n * 100 % CONTACTS, n * 100 % CONTACTS + 400), f"r{n}")
        calls = sum(sb.stats.calls.values()) + 3
        process = await start_watch(config, work / "stop.log", interval)
        await wait_for(functools.partial(busy, sb, calls), 60, "calls")
        if condition == "during an outage":
            sb.set_faults(error_rate=1.0)
            await anyio.sleep(1.0)
            await wait_for(lambda: sb.stats.in_flight > 0, 60, "calls")
        elif condition == "flaky CRM":
            sb.set_faults(error_rate=0.3)
            await anyio.sleep(0.5)
            await wait_for(lambda: sb.stats.in_flight > 0, 60, "calls")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(120):
            code = await process.wait()
        times[condition].append(time.monotonic() - started)
        sb.set_faults(error_rate=0.0)
        print(f"  restart {n + 1:2d} ({condition}): exit {code} after {times[condition][-1]:.3f} s", flush=True)
    return times


async def outage_figures(
    sb: Sandbox, erp: Erp, applied: Applied, config: Path, work: Path, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Per kind of outage: each row's lag from the CRM answering again to its write applied."""
    lags: dict[str, list[float]] = {"errors": [], "down": []}
    process = await start_watch(config, work / "outage.log", args.interval)
    try:
        warm = erp.change(range(10), "warm")
        await wait_for(lambda: all(w in applied.at for w in warm), 60, "warm-up")
        for k in range(args.outages):
            for kind in lags:
                await anyio.sleep(1.0)
                if kind == "errors":
                    sb.set_faults(error_rate=1.0)
                else:
                    await sb.stop()
                expected: list[tuple[str, str]] = []
                step = args.outage_s / args.rows
                for i in range(args.rows):
                    expected += erp.change([(k * 97 + i * 13) % CONTACTS], f"o{k}{kind}{i}")
                    await anyio.sleep(step)
                if kind == "errors":
                    sb.set_faults(error_rate=0.0)
                else:
                    await sb.start()
                up = time.time()  # the clock of the history's "at"
                await wait_for(functools.partial(applied.has, expected), 120, "recovery")
                got = [applied.at[e] - up for e in expected]
                lags[kind] += got
                print(f"  outage {k + 1} ({kind}): lag p50 {pct(got, 50):.3f} s, max {max(got):.3f} s", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(120):
            await process.wait()
    return lags


def pct(values: Sequence[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    if p == 100:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def report(name: str, values: Sequence[float]) -> None:
    print(
        f"{name:<40} n={len(values):<4} p50 {pct(values, 50):7.3f} s   p95 {pct(values, 95):7.3f} s   "
        f"p100 {pct(values, 100):7.3f} s"
    )


async def main(args: argparse.Namespace) -> None:
    low, high = (float(x) for x in args.latency_ms.split(","))
    with tempfile.TemporaryDirectory(prefix="watch-latency-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        options = SandboxOptions(latency_ms=(low, high), port=free_port(), refresh_limit=0, record_history=True)
        async with Sandbox(options) as sb:
            sb.state.load(
                {"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "X"} for i in range(CONTACTS)]}}
            )
            applied = Applied(sb)
            erp = Erp(work / "erp.db")
            config = write_config(work, sb.url, erp.path, args.concurrency)
            print(f"stop: {args.restarts} restarts, latency {low:g}-{high:g} ms, concurrency {args.concurrency}")
            stops = await stop_figures(sb, erp, config, work, args.restarts, args.interval)
            print(f"outage: {args.outages} x 2 outages of {args.outage_s:g} s, {args.rows} rows committed in each")
            lags = await outage_figures(sb, erp, applied, config, work, args)
        print()
        for condition, values in stops.items():
            if values:
                report(f"SIGTERM to exit ({condition})", values)
        report("SIGTERM to exit (all)", [t for values in stops.values() for t in values])
        for kind, values in lags.items():
            report(f"lag after outage ({kind})", values)
        report("lag after outage (all)", lags["errors"] + lags["down"])
        print(f"writes applied more than once: {applied.twice()} of {len(applied.count)}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watch_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--outages", type=int, default=3, help="outages of each kind")
    parser.add_argument("--outage-s", type=float, default=4.0)
    parser.add_argument("--rows", type=int, default=20, help="rows committed during each outage")
    parser.add_argument("--latency-ms", default="100,300")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", help="work in this directory and keep it (logs, ledger)")
    parser.add_argument("--interval", type=float, default=0.5, help="the watch's --interval")
    anyio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
