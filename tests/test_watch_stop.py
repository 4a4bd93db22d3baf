"""`watch` stops at once on request and recovers at once from an outage: no wait outlives a stop, one call
probes a CRM that is down, and a restart never sends again what the last watch applied."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncengine.config import Config, SqlSourceConfig
from syncengine.pipeline import RunControl, RunOptions, RunResult, run_sync
from syncengine.readers import Reader, open_reader
from syncengine.readers.sql import Position, SqlRow
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sources import follow_table
from syncengine.workers import RetryPolicy
from tests.conftest import SECRETS, write_config
from tests.test_signals import CREDENTIALS

CONTACTS = 300
WATCH = (sys.executable, "-m", "syncengine", "--json-logs", "watch")
SLOW_BACKOFF = RetryPolicy(wait_initial=20.0)  # every backoff up to 30 s: only probes can be quick


class Erp:
    """contacts(id, erp_id, last_name, updated_at) in SQLite; updated_at is an increasing integer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, erp_id TEXT, last_name TEXT, updated_at INT)")
        self.clock = 0

    def change(self, ids: Sequence[int], tag: str) -> set[tuple[str, str]]:
        """Set each row's last_name to ``{tag}{id}``; returns the (key, Last_Name) writes the CRM must see."""
        rows = []
        for i in ids:
            self.clock += 1
            rows.append((i, f"C{i}", f"{tag}{i}", self.clock))
        self.db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " last_name = excluded.last_name, updated_at = excluded.updated_at",
            rows,
        )
        return {(f"C{i}", f"{tag}{i}") for i in ids}


def stream(erp: Path) -> dict[str, Any]:
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "batch_size": 10,
        "linger_ms": 20,
        "source": {"kind": "sqlite", "path": str(erp), "table": "contacts", "key": "id", "cursor": "updated_at"},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
    }


class Applied:
    """Every (key, Last_Name) write the sandbox applied since this was made, counted: read from its history."""

    def __init__(self, sb: Sandbox) -> None:
        self._state = sb.state
        self._seen = len(sb.state.history)  # count from now on, as a fresh observer would
        self._count: Counter[tuple[str, str]] = Counter()

    @property
    def count(self) -> Counter[tuple[str, str]]:
        entries = self._state.history_since(self._seen)
        self._seen += len(entries)
        for entry in entries:
            # An entry names the record by its id; the engine addresses it by its external ID.
            record = self._state.get_record(str(entry["module"]), str(entry["id"])) or {}
            fields = entry["fields"]
            name = fields.get("Last_Name") if isinstance(fields, dict) else None
            self._count[(str(record.get("External_Contact_ID")), str(name))] += 1
        return self._count

    def has(self, writes: set[tuple[str, str]]) -> bool:
        count = self.count
        return all(w in count for w in writes)


@pytest.fixture
async def sandbox() -> Any:
    async with Sandbox(SandboxOptions(latency_ms=(30.0, 60.0), refresh_limit=0, record_history=True)) as sb:
        sb.state.load(
            {"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "X"} for i in range(CONTACTS)]}}
        )
        yield sb


async def wait_until(check: Callable[[], bool], limit: float = 20.0) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.01)


class Watch:
    """A watch in this event loop, stopped as SIGTERM stops it."""

    def __init__(self, config: Config, policy: RetryPolicy) -> None:
        self.config, self.policy, self.control = config, policy, RunControl()
        self.result: RunResult | None = None

    async def run(self, *, full: bool = False) -> None:
        options = RunOptions(policy=self.policy, watch=0.1, full=full)
        self.result = await run_sync(self.config, SECRETS, options=options, control=self.control)

    async def run_full(self) -> None:
        """``watch --full``: skip-unchanged off, so only the stored position and the rows done decide."""
        await self.run(full=True)


def setup(tmp_path: Path, sb: Sandbox) -> tuple[Erp, Config]:
    erp = Erp(tmp_path / "erp.db")
    return erp, write_config(tmp_path / "sync.toml", sb.url, [stream(erp.path)], concurrency=4)


def outcomes(ledger: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(ledger) as db:
        return list(db.execute("SELECT run_id, status, source_row FROM outcomes ORDER BY run_id, seq"))


async def test_a_stop_during_an_outage_ends_the_watch_without_sleeping_out_its_backoff(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """With backoffs of up to 30 s, a stop while the CRM is down ends the watch at once, the rest pending."""
    erp, config = setup(tmp_path, sandbox)
    sandbox.set_faults(error_rate=1.0)
    erp.change(range(100), "a")
    watch = Watch(config, SLOW_BACKOFF)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await wait_until(lambda: sandbox.stats.errors_500 >= 6)
        watch.control.stop()
        with anyio.fail_after(5):  # was 30 s (the stop timeout) before
            while watch.result is None:
                await anyio.sleep(0.01)
    result = watch.result
    assert result is not None and result.interrupted and result.summary.adds_up
    assert result.summary.succeeded == 0 and result.summary.pending == 100


async def test_a_crm_that_is_down_sees_one_probe_at_a_time_and_the_changes_go_out_when_it_answers(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """While the CRM answers nothing one call probes it; once it answers, the changes held meanwhile go out."""
    erp, config = setup(tmp_path, sandbox)
    applied = Applied(sandbox)
    watch = Watch(config, SLOW_BACKOFF)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        warm = erp.change(range(20), "warm")
        await wait_until(lambda: applied.has(warm))
        sandbox.set_faults(error_rate=1.0)
        during = erp.change(range(20, 120), "down")
        await wait_until(lambda: sandbox.stats.errors_500 >= 4)  # the calls in flight have met the outage
        await anyio.sleep(0.3)
        sandbox.stats.max_in_flight = sandbox.stats.in_flight
        errors = sandbox.stats.errors_500
        await anyio.sleep(1.5)
        assert sandbox.stats.max_in_flight <= 1  # one prober, the others wait for its answer
        assert 2 <= sandbox.stats.errors_500 - errors <= 10  # it probes (about every 0.25-0.5 s), it never hammers
        sandbox.set_faults(error_rate=0.0)
        await wait_until(lambda: applied.has(during), limit=10)  # was up to 30 s (backoff) before
        watch.control.stop()
    assert watch.result is not None and watch.result.summary.adds_up
    assert watch.result.summary.failed == 0 and max(applied.count.values()) == 1


async def test_a_stop_lets_calls_in_flight_finish_and_a_restart_sends_nothing_twice(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Calls in flight at a stop finish and keep their outcomes; the restart sends only what was left."""
    erp, config = setup(tmp_path, sandbox)
    applied = Applied(sandbox)
    writes = erp.change(range(200), "v")
    first = Watch(config, RetryPolicy())
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await wait_until(lambda: len(applied.count) >= 30)
        sandbox.pause()  # the next calls are held in the CRM: in flight when the stop comes
        await sandbox.wait_in_flight(2)
        held = sandbox.stats.in_flight
        first.control.stop()
        await anyio.sleep(0.2)
        sandbox.resume()
    assert first.result is not None and first.result.interrupted
    done = first.result.summary.succeeded
    assert done == len(applied.count) >= 30 + held  # the held calls finished, and have their outcomes
    second = Watch(config, RetryPolicy())
    async with anyio.create_task_group() as tg:
        tg.start_soon(second.run)
        await wait_until(lambda: applied.has(writes))
        second.control.stop()
    assert max(applied.count.values()) == 1  # nothing applied twice
    assert second.result is not None and second.result.summary.succeeded == 200 - done


async def test_a_restarted_full_watch_never_resends_rows_done_after_a_change_left_pending(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A stop leaves the position below calls still in backoff; the restart (even with --full) skips the
    rows finished after them, and sends each remaining row once."""
    erp, config = setup(tmp_path, sandbox)
    applied = Applied(sandbox)
    writes = erp.change(range(300), "v")
    sandbox.set_faults(error_rate=0.3, seed=7)
    first = Watch(config, RetryPolicy(wait_initial=5.0))  # a call that fails waits long: later ones overtake it
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await wait_until(lambda: len(applied.count) >= 150)
        first.control.stop()
    sandbox.set_faults(error_rate=0.0)
    assert first.result is not None and first.result.summary.pending > 0
    second = Watch(config, RetryPolicy())
    async with anyio.create_task_group() as tg:
        tg.start_soon(second.run_full)
        await wait_until(lambda: applied.has(writes))
        second.control.stop()
    assert max(applied.count.values()) == 1


def table(erp: Path) -> Callable[[Position | None], Reader]:
    source = SqlSourceConfig(kind="sqlite", key="id", path=erp, table="contacts", cursor="updated_at")

    def open_table(after: Position | None) -> Reader:
        return open_reader(source, since=after)

    return open_table


async def test_a_followed_table_drops_rows_the_last_watch_finished_until_it_has_caught_up(tmp_path: Path) -> None:
    """Rows ``done`` says the last watch finished are not read again; rows changed later are."""
    erp = Erp(tmp_path / "erp.db")
    erp.change(range(10), "a")
    finished = {3, 4, 6}  # done after row 2, which the stop left pending
    seen: list[tuple[int, str]] = []
    asked: list[int] = []

    def done(row: SqlRow) -> bool:
        asked.append(int(str(row.values["id"])))
        return int(str(row.values["id"])) in finished

    rows = follow_table(table(erp.path), since=None, interval=0.01, done=done)
    polls = 0
    async for item in rows:
        if isinstance(item, SqlRow):
            seen.append((int(str(item.values["id"])), str(item.values["last_name"])))
            continue
        polls += 1
        if polls == 1:
            erp.change([3, 11], "b")  # row 3 changed since: a new change, read again
        if polls == 3:
            break
    await rows.aclose()  # type: ignore[attr-defined]
    first = [i for i, _ in seen[:7]]
    assert first == [0, 1, 2, 5, 7, 8, 9]
    assert seen[7:] == [(3, "b3"), (11, "b11")]
    assert len(asked) == 10  # asked about the first read only: after it, everything is new


async def test_sigterm_during_an_outage_stops_a_watch_process_at_once(tmp_path: Path, sandbox: Sandbox) -> None:
    """A real `syncengine watch`, SIGTERM while the CRM answers 500 and calls are in flight: exit 0, promptly."""
    erp, config = setup(tmp_path, sandbox)
    applied = Applied(sandbox)
    erp.change(range(50), "a")
    log = tmp_path / "watch.log"
    with log.open("wb") as handle:
        process = await anyio.open_process(
            [*WATCH, str(config.file), "--interval", "0.2", "--metrics-port", "0"],
            cwd=tmp_path,
            env={**os.environ, **CREDENTIALS},
            stdout=handle,
            stderr=handle,
        )
        await wait_until(lambda: len(applied.count) >= 50, limit=60)
        sandbox.set_faults(error_rate=1.0)
        erp.change(range(50, 150), "b")
        await wait_until(lambda: sandbox.stats.errors_500 >= 8 and sandbox.stats.in_flight > 0, limit=60)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):  # was up to 30 s before (backoffs outlived the stop)
            code = await process.wait()
    assert code == 0, log.read_text()
    runs = {run for run, _, _ in outcomes(tmp_path / "ledger.db")}
    assert runs == {1} and sum(applied.count.values()) == 50


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
