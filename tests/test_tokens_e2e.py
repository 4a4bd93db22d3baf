"""Tokens end to end against the strict sandbox (the real-Zoho profile), real processes, real sockets, real ledgers.

- 20 `syncengine run` processes and a `retry` share one token cache: the accounts server issues one token.
- Credentials the accounts server refuses end a run before any row is read: exit 2, no advice to resume.
- "Access Denied" (HTTP 400, localized, a lockout that restarts with each request) pauses a run, resumably,
  saying when to retry, and the next process does not knock; a watch waits it out and goes on.
- A data centre in the config: the calls go where the token's api_domain says; fresh tokens the API host
  refuses are named a data-centre mismatch.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import structlog

from syncengine.config import Config
from syncengine.crm.auth import LockoutPolicy
from syncengine.ledger import SqliteLedger
from syncengine.limits import Backoff
from syncengine.model import Status
from syncengine.pipeline import RunControl, RunEnd, RunOptions, RunResult, run_sync
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import FAST, SECRETS, run, write_config, write_csv
from tests.test_cli import CREDENTIALS, HEADER, NOWHERE, Ran, asyncengine, contacts_stream, seed


def strict(**changes: Any) -> SandboxOptions:
    """The strict profile, but for its refusal of the bulk update by external ID (issue 11 point 1, not these
    tests'): every token reading is on (Access Denied as HTTP 400, localized, a lockout; tokens bound to a host)."""
    return SandboxOptions(strict=True, refuse_bulk_external=False, **changes)


# The engine's lockout policy in these tests: it leaves the endpoint alone 0.5 s (the sandbox's lockouts last 0.3 s).
QUICK = LockoutPolicy(quiet=0.5, backoff=Backoff(initial=0.02, maximum=0.05, attempts=1000, total=20.0))


def rows(n: int, tag: str = "") -> list[list[str]]:
    return [[f"C{i}", f"Name{i}{tag}", f"c{i}@example.com"] for i in range(n)]


async def outcomes(config: Config, run_id: int) -> list[Status]:
    async with SqliteLedger(config.ledger.path) as ledger:
        return [row.status async for row in ledger.outcomes(run_id)]


# -- one token for twenty processes ------------------------------------------------------------------------------


async def test_twenty_runs_and_a_retry_refresh_the_token_once(tmp_path: Path) -> None:
    """20 `syncengine run` processes (10 at once, then 10 one after another) and a `retry`: one token issued."""
    async with Sandbox(strict()) as sb:
        sb.state.load(seed("C", 2))
        for i in range(20):
            (tmp_path / f"r{i}").mkdir()
            src = write_csv(tmp_path / f"r{i}" / "c.csv", HEADER, rows(2, f"-{i}"))
            write_config(tmp_path / f"r{i}" / "sync.toml", sb.url, [contacts_stream(src)])
        # Each run has its own config and ledger; the cache is the host's, named by the environment.
        env = {**CREDENTIALS, "SYNCENGINE_TOKEN_CACHE": str(tmp_path / "shared" / "tokens.json")}
        ran: dict[int, Ran] = {}

        async def one(i: int) -> None:
            ran[i] = await asyncengine("run", "sync.toml", cwd=tmp_path / f"r{i}", env=env)

        async with anyio.create_task_group() as tg:  # at once: the cache's lock makes one of them refresh
            for i in range(10):
                tg.start_soon(one, i)
        for i in range(10, 20):
            await one(i)
        retried = await asyncengine("retry", "1", "-c", "sync.toml", cwd=tmp_path / "r0", env=env)
        stats = sb.stats.snapshot()
    assert {i: r.code for i, r in ran.items()} == dict.fromkeys(range(20), 0), [r.out + r.err for r in ran.values()]
    assert retried.code == 0, retried.out + retried.err
    assert stats["refreshes"] == 1 and stats["token_requests"] == 1 and stats["refresh_denied"] == 0, stats
    assert sum("token refreshes 1" in r.text for r in ran.values()) == 1
    assert not (tmp_path / "r0" / "syncengine-tokens.json").exists()  # the environment's file, not the default
    assert (tmp_path / "shared" / "tokens.json").stat().st_mode & 0o777 == 0o600


# -- bad credentials: found before any row is read --------------------------------------------------------------


async def test_a_wrong_client_secret_ends_the_run_before_any_row_is_read(tmp_path: Path) -> None:
    """A wrong secret: one token request, no row read, no CRM call, exit 2, a clear message, no advice to resume."""
    async with Sandbox(strict()) as sb:
        src = write_csv(tmp_path / "c.csv", HEADER, rows(5000))
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)])
        wrong = {**CREDENTIALS, "ZOHO_CLIENT_SECRET": "WR0NG-secret-zz9"}
        ran = await asyncengine("run", "sync.toml", cwd=tmp_path, env=wrong)
        stats = sb.stats.snapshot()
    assert ran.code == 2, ran.out + ran.err
    assert "invalid_client" in ran.text and "ZOHO_CLIENT_SECRET" in ran.text and "WR0NG" not in ran.out + ran.err
    assert "resume" not in ran.text.lower()
    assert stats["token_requests"] == 1 and stats["calls_total"] == 0
    async with SqliteLedger(config.ledger.path) as ledger:
        summary = await ledger.summary(1)
    assert summary.read == 0 and summary.state == "failed" and await outcomes(config, 1) == []


# -- "Access Denied": a run pauses, resumably; the next process does not knock ---------------------------------


async def test_a_lockout_at_the_start_pauses_the_run_and_the_next_process_waits(tmp_path: Path) -> None:
    """The token endpoint locked: the run ends paused (exit 1, resumable) saying when to retry; the next run pauses
    at once, from the cache, without a request that would restart the lockout."""
    async with Sandbox(strict(refresh_limit=1)) as sb:
        sb.state.load(seed("C", 3))
        src = write_csv(tmp_path / "c.csv", HEADER, rows(3))
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)])
        first = await asyncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)  # the one token allowed
        elsewhere = {**CREDENTIALS, "SYNCENGINE_TOKEN_CACHE": str(tmp_path / "other-host.json")}  # another host
        locked = await asyncengine("run", "sync.toml", cwd=tmp_path, env=elsewhere)
        asked = sb.stats.token_requests
        again = await asyncengine("run", "sync.toml", cwd=tmp_path, env=elsewhere)
        assert sb.stats.token_requests == asked and sb.stats.refresh_denied == 1
    assert first.code == 0, first.out + first.err
    for paused in (locked, again):
        assert paused.code == 1, paused.out + paused.err
        assert "locked us out" in paused.text and re.search(r"retry after \d{4}-\d\d-\d\d \d\d:\d\d", paused.text)
        assert "credentials" not in paused.text.lower()
    async with SqliteLedger(config.ledger.path) as ledger:
        assert [(await ledger.summary(n)).state for n in (2, 3)] == ["paused", "paused"]
        assert await ledger.resumable_run(str(config.file)) == 3


async def test_a_lockout_mid_run_pauses_it_and_a_resume_finishes_it(tmp_path: Path) -> None:
    """A token expiring mid-run into "Access Denied": the run pauses with the rest pending; resumed after the
    quiet spell, every change ends SUCCESS, with one denial in all."""
    options = strict(refresh_limit=1, refresh_lockout=0.3, latency_ms=(5.0, 10.0))
    async with Sandbox(options) as sb:
        sb.state.load(seed("C", 200))
        src = write_csv(tmp_path / "c.csv", HEADER, rows(200))
        stream = contacts_stream(src, batch_size=10)
        config = write_config(tmp_path / "sync.toml", sb.url, [stream], concurrency=2, sub_concurrency=1)

        async def expire_after_some_calls() -> None:
            while sum(sb.stats.calls.values()) < 3:
                await anyio.sleep(0.005)
            sb.expire_tokens()

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire_after_some_calls)
            paused = await run(config, lockout=QUICK)
        assert paused.end is RunEnd.PAUSED and not paused.fatal and paused.summary.state == "paused"
        assert paused.stopped is not None and "locked us out" in paused.stopped
        assert 0 < paused.summary.pending < 200 and paused.summary.adds_up
        sb.set_faults(refresh_limit=0)
        await anyio.sleep(QUICK.quiet + 0.1)  # the lockout is time: the engine's quiet spell must pass
        resumed = await run(config, resume=paused.summary.run_id, lockout=QUICK)
        denied = sb.stats.refresh_denied
    assert resumed.end is RunEnd.COMPLETED and resumed.summary.succeeded == 200 and resumed.summary.pending == 0
    assert denied == 1


async def test_a_watch_waits_a_lockout_out_and_goes_on(tmp_path: Path) -> None:
    """A watch whose token is refused into "Access Denied" waits the lockout out, then sends what came meanwhile."""
    options = strict(refresh_limit=1, refresh_window=0.3, refresh_lockout=0.3)
    async with Sandbox(options) as sb:
        sb.state.load(seed("C", 20))
        src = write_csv(tmp_path / "c.csv", HEADER, rows(10))
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src, linger_ms=20)], concurrency=2)
        control = RunControl()
        result: list[RunResult] = []

        async def watch() -> None:
            opts = RunOptions(policy=FAST, watch=0.05, lockout=QUICK)
            result.append(await run_sync(config, SECRETS, options=opts, control=control))

        def name(i: int) -> str:
            return str((sb.state.find_by_field("Contacts", "External_Contact_ID", f"C{i}") or {}).get("Last_Name"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with anyio.fail_after(15):
                while name(9) != "Name9":
                    await anyio.sleep(0.02)
                sb.expire_tokens()  # the next call meets INVALID_TOKEN, its refresh "Access Denied"
                write_csv(tmp_path / "c.csv", HEADER, rows(20, "-b"))
                while name(19) != "Name19-b":
                    await anyio.sleep(0.02)
            control.stop()
    assert result[0].end is RunEnd.INTERRUPTED and result[0].watched
    assert sb.stats.refresh_denied == 1 and sb.stats.refreshes == 2
    assert all(name(i) == f"Name{i}-b" for i in range(20))


# -- data centres -------------------------------------------------------------------------------------------------


def port_of(sb: Sandbox) -> int:
    return int(sb.url.rsplit(":", 1)[1])


async def test_with_a_data_centre_the_calls_go_to_the_tokens_api_domain(tmp_path: Path) -> None:
    """crm.data_centre named: the token's api_domain (here localhost, the only host its tokens work on) is used,
    not the table's host (here nowhere), and the log says so."""
    async with Sandbox(strict()) as sb:
        sb.set_faults(api_domain=f"http://localhost:{port_of(sb)}")
        sb.state.load(seed("C", 3))
        src = write_csv(tmp_path / "c.csv", HEADER, rows(3))
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)])
        config = replace(config, crm=replace(config.crm, data_centre="us", api_domain=NOWHERE))
        with structlog.testing.capture_logs() as logs:
            result = await run(config)
        mismatches = sb.stats.dc_mismatch_401
    assert result.end is RunEnd.COMPLETED and result.summary.succeeded == 3, result.stopped
    assert mismatches == 0
    followed = [e for e in logs if e["event"] == "syncengine.api_domain_from_token"]
    assert len(followed) == 1 and followed[0]["api_domain"] == f"http://localhost:{port_of(sb)}"


async def test_fresh_tokens_refused_by_the_api_host_are_named_a_data_centre_mismatch(tmp_path: Path) -> None:
    """An explicit api_domain whose host refuses the tokens (issued for another): exit 2 and a message naming both
    hosts and a data-centre mismatch, not "token rejected after 3 refreshes"."""
    async with Sandbox(strict()) as sb:
        other = f"http://localhost:{port_of(sb)}"
        sb.set_faults(api_domain=other)
        sb.state.load(seed("C", 3))
        src = write_csv(tmp_path / "c.csv", HEADER, rows(3))
        write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)], concurrency=1)
        started = time.monotonic()
        ran = await asyncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
        mismatches = sb.stats.dc_mismatch_401
    assert ran.code == 2, ran.out + ran.err
    assert "data-centre mismatch" in ran.text and other in ran.text and sb.url in ran.text
    assert "after 3 token refreshes" not in ran.text
    assert mismatches >= 1 and time.monotonic() - started < 30
