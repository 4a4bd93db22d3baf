"""Runs one :class:`~tests.sim.spec.Spec` against an in-process sandbox and checks every step against the model.

Runs and retries go through ``syncengine.pipeline.run_sync`` in this process; a ``kill`` step starts a real
``syncengine run`` process, SIGKILLs it once the sandbox has applied a few of its writes, then resumes the
run (``run --resume``: ``RunOptions(resume=...)``). A run that stops early on its own (credits deemed spent
after a 429 storm) is resumed too, as a user would, before it is checked.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson

from syncengine.config import Config
from syncengine.ledger import OutcomeRow, RunSummary, SqliteLedger
from syncengine.model import Status
from syncengine.pipeline import Redrive, RunOptions, RunResult, run_sync
from syncengine.sandbox import DEFAULT_SCHEMA, FieldSpec, FieldType, ModuleSpec, RelationSpec, Sandbox, SandboxOptions
from syncengine.sandbox.schema import Schema
from syncengine.workers import RetryPolicy
from tests.conftest import SECRETS, write_config
from tests.sim.checks import History, Violation, check_outcomes, check_summary
from tests.sim.model import Export, Key, Model, crm_holds
from tests.sim.spec import Row, Spec, Step

__all__ = ["SIM_SCHEMA", "Outcome", "run_spec"]

REPO = Path(__file__).resolve().parents[2]
POLICY = RetryPolicy(wait_initial=0.002, wait_max=0.02, outage_give_ups=1000)
FLAKY = replace(POLICY, attempts=2, record_attempts=2)
NO_FAULTS: dict[str, Any] = {
    "error_rate": 0.0, "drop_rate": 0.0, "throttle_rate": 0.0, "lock_rate": 0.0, "latency_ms": (0.0, 0.0),
    "token_ttl": 3600.0,
}  # fmt: skip
_SEQ = FieldSpec(api_name="Source_Seq", type=FieldType.INTEGER)
_SEQ2 = FieldSpec(api_name="Source_Seq2", type=FieldType.INTEGER)  # the phones stream's versions


def _sim_schema() -> Schema:
    """The default schema plus ``Source_Seq`` on Contacts, Leads, Deals and the Deal-Contact relation."""
    extra = {"Contacts": (_SEQ, _SEQ2), "Leads": (_SEQ,), "Deals": (_SEQ,)}
    modules = tuple(
        ModuleSpec(
            api_name=m.api_name, fields=(*m.fields, *extra[m.api_name]), duplicate_check_fields=m.duplicate_check_fields
        )
        if m.api_name in extra
        else m
        for m in DEFAULT_SCHEMA.modules
    )
    relations = tuple(
        RelationSpec(a_module=r.a_module, a_list=r.a_list, b_module=r.b_module, b_list=r.b_list,
                     fields=(*r.fields, _SEQ))
        if (r.a_module, r.b_module) == ("Contacts", "Deals")
        else r
        for r in DEFAULT_SCHEMA.relations
    )  # fmt: skip
    return Schema(modules=modules, relations=relations)


SIM_SCHEMA = _sim_schema()

_COLUMNS = {
    "contacts": ["erp_id", "last_name", "title", "dept", "version"],
    "links": ["deal", "contact", "role", "deleted", "version"],
    "unlinks": ["deal_id", "contact_id", "version"],
}
_SEQ_MAP = {"column": "version", "type": "integer"}


def _streams(spec: Spec, directory: Path, names: list[str]) -> list[dict[str, Any]]:
    common = {"batch_size": spec.batch_size, "linger_ms": spec.linger_ms}
    related = {"operation": "update_related", "module": "Deals", "related_list": "Contacts"}
    table: dict[str, dict[str, Any]] = {
        "contacts": {"operation": "update", "module": "Contacts",
                     "match": {"column": "erp_id", "field": "External_Contact_ID"},
                     "fields": {"Last_Name": "last_name", "Title": "title", "Department": "dept",
                                "Source_Seq": _SEQ_MAP}},
        "leads": {"operation": "update", "module": "Leads", "match": {"column": "crm_id"},
                  "fields": {"Company": "company", "Description": "description", "Source_Seq": _SEQ_MAP}},
        "links": {**related, "parent": {"column": "deal", "field": "External_Deal_ID"},
                  "match": {"column": "contact", "field": "External_Contact_ID"},
                  "fields": {"Contact_Role": "role", "Source_Seq": _SEQ_MAP},
                  "delete_when": {"column": "deleted", "values": ["true"]}},
        "unlinks": {**related, "operation": "delete_related", "parent": {"column": "deal_id"},
                    "match": {"column": "contact_id"}},
        "phones": {"operation": "update", "module": "Contacts",
                   "match": {"column": "erp", "field": "External_Contact_ID"},
                   "fields": {"Phone": "phone", "Source_Seq2": _SEQ_MAP}},
    }  # fmt: skip
    out = []
    for name in names:
        kind = "jsonl" if name in ("leads", "phones") else "csv"
        path = directory / f"{name}.{kind}"
        out.append({"name": name, "source": {"kind": kind, "path": str(path)}, **table[name], **common})
    return out


def _write_sources(directory: Path, exports: dict[str, list[Row]]) -> None:
    for name, rows in exports.items():
        clean = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        if name in ("leads", "phones"):
            (directory / f"{name}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in clean))
            continue
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(_COLUMNS[name])
            out.writerows([[r[c] for c in _COLUMNS[name]] for r in clean])


@dataclass(slots=True)
class Outcome:
    """What running a spec found."""

    violations: list[Violation] = field(default_factory=list)
    runs: int = 0
    kills: int = 0
    calls: int = 0
    faults: dict[str, int] = field(default_factory=dict)


async def _ledger(config: Config, run_id: int) -> tuple[list[OutcomeRow], RunSummary]:
    async with SqliteLedger(config.ledger.path) as ledger:
        rows = [r async for r in ledger.outcomes(run_id)]
        return rows, await ledger.summary(run_id)


async def _latest_run(config: Config) -> tuple[int | None, str | None]:
    if not config.ledger.path.exists():
        return None, None
    async with SqliteLedger(config.ledger.path) as ledger:
        run_id = await ledger.latest_run_id()
        return run_id, None if run_id is None else (await ledger.summary(run_id)).state


async def _run(config: Config, options: RunOptions, out: Outcome) -> RunResult:
    with anyio.fail_after(60):
        result = await run_sync(config, SECRETS, options=options)
    out.runs += 1
    out.calls += result.calls
    return result


async def _finish(config: Config, run_id: int, sb: Sandbox, out: Outcome) -> None:
    """Resume a run that stopped early by itself (e.g. a 429 storm read as spent credits), faults off."""
    for _ in range(3):
        _, state = await _latest_run(config)
        if state not in ("paused", "interrupted", "running"):
            return
        sb.set_faults(**NO_FAULTS)
        await _run(config, RunOptions(resume=run_id, policy=POLICY), out)


def _engine_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_")}
    # The engine process runs the code of this checkout, the same as the runs in this process.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(ZOHO_CLIENT_ID=SECRETS.client_id or "", ZOHO_CLIENT_SECRET=SECRETS.client_secret or "",
               ZOHO_REFRESH_TOKEN=SECRETS.refresh_token or "")  # fmt: skip
    return env


async def _engine_process(config: Config, sb: Sandbox, kill_after: int, resume: bool, out: Outcome) -> None:
    """One real ``syncengine run`` process (``--resume`` when asked), SIGKILLed after ``kill_after`` writes."""
    start = len(sb.state.history)
    command = [sys.executable, "-m", "syncengine", "--json-logs", "run", str(config.file)]
    command += ["--resume"] if resume else []
    log = config.file.parent / "kill.log"
    with log.open("ab") as handle:
        async with await anyio.open_process(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                                            env=_engine_env()) as proc:  # fmt: skip
            with anyio.move_on_after(60):
                while proc.returncode is None and len(sb.state.history) < start + kill_after:
                    await anyio.sleep(0.001)
            if proc.returncode is None:
                proc.kill()  # SIGKILL: no cleanup, no final flush
                out.kills += 1
            await proc.wait()


async def _kill_step(config: Config, step: Step, sb: Sandbox, out: Outcome, last_run: int | None) -> int:
    """Real ``syncengine run`` processes, each SIGKILLed after ``kill_after`` applied writes, then a resume."""
    sb.set_faults(latency_ms=(5.0, 30.0))
    for attempt in range(step.kills):
        await _engine_process(config, sb, step.kill_after, attempt > 0, out)
    sb.set_faults(**NO_FAULTS)
    run_id, state = await _latest_run(config)
    if run_id is not None and run_id != last_run and state == "running":
        await _run(config, RunOptions(resume=run_id, policy=POLICY), out)
        return run_id
    if run_id is not None and run_id != last_run:
        return run_id  # the process finished before the kill landed
    return (await _run(config, RunOptions(policy=POLICY), out)).summary.run_id


async def _chaos(sb: Sandbox, step: Step, rng: random.Random, done: anyio.Event) -> None:
    """Until ``done``: every 15-60 ms revoke every token (expire_tokens) and/or throw a 429 storm (storms)."""
    throttle = step.faults.get("throttle_rate", 0.0)
    try:
        while not done.is_set():
            with anyio.move_on_after(rng.uniform(0.015, 0.06)):
                await done.wait()
            if done.is_set():
                return
            sb.expire_tokens()  # every worker's next call gets 401 INVALID_TOKEN
            if not step.storms:
                continue
            sb.set_faults(throttle_rate=0.9)
            with anyio.move_on_after(rng.uniform(0.01, 0.04)):
                await done.wait()
            sb.set_faults(throttle_rate=throttle)
    finally:
        sb.set_faults(throttle_rate=throttle)


async def _plain_step(spec: Spec, number: int, step: Step, sb: Sandbox, config: Config, out: Outcome) -> int:
    options = RunOptions(full=step.full, policy=FLAKY if step.flaky else POLICY)
    if not (step.storms or step.expire_tokens):
        return (await _run(config, options, out)).summary.run_id
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_chaos, sb, step, random.Random(spec.seed + number), done)
        try:
            result = await _run(config, options, out)
        finally:
            done.set()
    return result.summary.run_id


def _arm(sb: Sandbox, spec: Spec, number: int, step: Step) -> None:
    sb.set_faults(**{**NO_FAULTS, **step.faults, "seed": spec.seed + number})
    if step.expire_tokens:
        sb.set_faults(token_ttl=0.3)


@dataclass(slots=True)
class _Run:
    """The scenario's progress: the model, the history walker, the last run step, the keys left uncertain."""

    model: Model
    history: History = field(default_factory=History)
    export: Export | None = None
    last_run: int | None = None
    last_failed: set[tuple[str, int]] = field(default_factory=set)
    uncertain: set[Key] = field(default_factory=set)


def _limits(number: int, step: Step, spec: Spec, sb: Sandbox, overlaps: int) -> list[Violation]:
    """Promise 2 and 3 on the wire: no key in two calls at once, calls in flight and token refreshes bounded."""
    stats, found = sb.stats, []
    if step.kind != "kill" and stats.key_overlaps > overlaps:  # a killed process's calls may still be in flight
        found.append(f"{stats.key_overlaps - overlaps} calls touched a key another call in flight touched")
    if step.kind != "kill" and stats.max_in_flight > spec.concurrency:
        found.append(f"{stats.max_in_flight} calls in flight, concurrency {spec.concurrency}")
    if stats.max_concurrent_refreshes > 1:
        found.append(f"{stats.max_concurrent_refreshes} token refreshes at once")
    return [Violation("limits", number, message) for message in found]


async def _do_step(spec: Spec, number: int, step: Step, sb: Sandbox, config: Config, run: _Run, out: Outcome) -> None:
    start, overlaps = len(sb.state.history), sb.stats.key_overlaps
    sb.stats.max_in_flight = sb.stats.in_flight  # the most in flight during this step
    if step.kind == "retry":
        if run.last_run is None or not run.last_failed or run.export is None:
            return
        _arm(sb, spec, number, step)
        redrive = Redrive(run_id=run.last_run)
        result = await _run(config, RunOptions(redrive=redrive, policy=POLICY), out)
        run_id, export, expected = result.summary.run_id, run.export, set(run.last_failed)
    else:
        _write_sources(config.file.parent, step.exports)
        export = Export.of(spec, step.exports)
        expected = set(export.changes)
        _arm(sb, spec, number, step)
        if step.kind == "kill":
            run_id = await _kill_step(config, step, sb, out, run.last_run)
        else:
            run_id = await _plain_step(spec, number, step, sb, config, out)
        await _finish(config, run_id, sb, out)
        run.model.fold(export)
    sb.set_faults(**NO_FAULTS)
    rows, summary = await _ledger(config, run_id)
    applied, problems = run.history.step(number, export, sb.state.history[start:])
    # An earlier try may have reached the CRM unseen: under faults, or when a killed process sent it.
    faulty = bool(step.faults) or step.expire_tokens or step.storms or step.kind == "kill"
    current = partial(crm_holds, sb.state)
    bad, failed = check_outcomes(number, export, expected, rows, applied, run.history.held, current, faulty)
    problems += bad + check_summary(number, summary, len(expected)) + _limits(number, step, spec, sb, overlaps)
    keyed = {(r.stream, r.seq): export.changes[(r.stream, r.seq)] for r in rows if (r.stream, r.seq) in export.changes}
    run.uncertain = (run.uncertain - {c.key for c in keyed.values()}) | failed
    for key, diff in run.model.differences(sb.state, run.uncertain):
        seen = [f"#{r.seq} v{keyed[(r.stream, r.seq)].version} {r.status.value}" for r in rows
                if keyed.get((r.stream, r.seq)) is not None and keyed[(r.stream, r.seq)].key == key]  # fmt: skip
        problems.append(Violation("state", number, f"{diff}; this step's rows of it: {', '.join(seen) or 'none'}"))
    out.violations += problems
    if step.kind != "retry":
        run.export, run.last_run = export, run_id
    run.last_failed = {(r.stream, r.seq) for r in rows if r.status is Status.FAILED}


async def run_spec(spec: Spec, directory: Path) -> Outcome:
    """Run every step of ``spec`` against a fresh sandbox and ledger under ``directory``; return what was found."""
    out = Outcome()
    options = SandboxOptions(
        seed=spec.seed, record_history=True, schema=SIM_SCHEMA, refresh_limit=0, strict=spec.strict
    )
    names = sorted({name for step in spec.steps for name in step.exports})
    async with Sandbox(options) as sb:
        run = _Run(model=Model(spec))
        sb.state.load(run.model.seed_doc())
        config = write_config(directory / "sync.toml", sb.url, _streams(spec, directory, names),
                              concurrency=spec.concurrency)  # fmt: skip
        for number, step in enumerate(spec.steps):
            await _do_step(spec, number, step, sb, config, run, out)
        stats = sb.stats.snapshot()
    for name in ("errors_500", "drops_before", "drops_after", "locks_injected", "tokens_expired_401"):
        out.faults[name] = int(str(stats[name]))
    out.faults["throttled_429"] = int(str(stats["throttled_429_total"]))
    return out
