"""No key ever goes backwards (DESIGN §2, promise 2; issue 9, points 1 and 2).

Checked on the sandbox's history of applied writes (``SandboxOptions(record_history=True)``), not only on
its final state: every row of an export carries its position in a field the CRM stores (``Description``
for contacts and leads, the role id for contact-deal roles), so each applied write maps back to the row
it came from, and "an older row applied after a newer one" is a plain comparison of row numbers.

- A re-run with skip-unchanged of an export in which keys have several rows makes zero calls, and when the
  export changed between runs it never re-applies a row older than what the CRM already holds.
- A resume after a SIGKILL never re-sends a key's changes older-first when the killed process had sent
  them merged into one record.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncengine.config import Config
from syncengine.ledger import SqliteLedger
from syncengine.ledger.values import OutcomeRow
from syncengine.model import JSON, Status
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import SECRETS, run, write_config, write_csv, write_jsonl

REPO = Path(__file__).resolve().parents[1]
TITLES = ("Buyer", "Head of Purchasing", "Senior Buyer", "Purchasing Director", "Chief Operating Officer")
ROLE_PREFIX = "111111000"  # role ids: prefix + 6-digit row + 3-digit version = 18 digits, like Zoho's ids


# ------------------------------------------------------------------------------------------------ exports


@dataclass(frozen=True, slots=True)
class Row:
    """One source row: which stream and key it changes, its row number, and which value it writes."""

    stream: str  # "contacts", "leads" or "roles"
    key: str  # "C3", "L7", or "D1/C4" for a contact-deal role
    seq: int  # its row number in the first export (1-based, per stream); an appended row gets a new one
    version: int  # which value it writes (0, 1, 2, ... per key); an edit adds 100


def title(version: int) -> str:
    return TITLES[version % len(TITLES)] + (" (acting)" if version >= 100 else "")


def role_id(row: Row) -> str:
    return f"{ROLE_PREFIX}{row.seq:06d}{row.version:03d}"


def make_export(seed: int, *, contacts: int, leads: int, deals: int, per_deal: int) -> list[Row]:
    """Keys with 1 to 5 rows each (3 on average), their rows spread at random through each stream's file.

    Contact C0 has exactly two rows, as in the issue: row 40 sets its title to "Buyer", row 900 (or the
    file's last tenth) to "Head of Purchasing".
    """
    rng = random.Random(seed)
    keyspace = {
        "contacts": [f"C{i}" for i in range(1, contacts)],
        "leads": [f"L{i}" for i in range(leads)],
        "roles": [f"D{d}/C{c}" for d in range(deals) for c in range(d, d + per_deal)],
    }
    rows: list[Row] = []
    for stream, keys in keyspace.items():
        entries = [key for key in keys for _ in range(rng.randint(1, 5))]
        rng.shuffle(entries)
        if stream == "contacts":
            entries.insert(39, "C0")
            entries.insert(min(899, len(entries) * 9 // 10), "C0")
        versions: Counter[str] = Counter()
        for seq, key in enumerate(entries, start=1):
            rows.append(Row(stream, key, seq, versions[key]))
            versions[key] += 1
    return rows


def seed_crm(sb: Sandbox, *, contacts: int, leads: int, deals: int) -> None:
    sb.state.load(
        {
            "records": {
                "Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": f"Contact {i}"} for i in range(contacts)],
                "Leads": [{"External_Lead_ID": f"L{i}", "Last_Name": f"Lead {i}"} for i in range(leads)],
                "Deals": [{"External_Deal_ID": f"D{i}", "Deal_Name": f"Deal {i}"} for i in range(deals)],
            }
        }
    )


def write_export(folder: Path, rows: Sequence[Row]) -> dict[str, Path]:
    """One file per stream, rows in ``seq`` order: contacts and roles as CSV, leads as JSONL."""
    ordered = sorted(rows, key=lambda r: (r.stream, r.seq))
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "contacts": write_csv(
            folder / "contacts.csv",
            ["erp_id", "title", "seq"],
            ([r.key, title(r.version), str(r.seq)] for r in ordered if r.stream == "contacts"),
        ),
        "leads": write_jsonl(
            folder / "leads.jsonl",
            (
                {"ext": r.key, "company": f"Company v{r.version}", "seq": str(r.seq)}
                for r in ordered
                if r.stream == "leads"
            ),
        ),
        "roles": write_csv(
            folder / "roles.csv",
            ["deal", "contact", "role"],
            ([*r.key.split("/"), role_id(r)] for r in ordered if r.stream == "roles"),
        ),
    }


def contacts_stream(path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(path)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Title": "title", "Description": "seq"},
        **extra,
    }


def export_streams(files: Mapping[str, Path]) -> list[dict[str, Any]]:
    return [
        contacts_stream(files["contacts"]),
        {
            "name": "leads",
            "operation": "update",
            "module": "Leads",
            "source": {"kind": "jsonl", "path": str(files["leads"])},
            "match": {"column": "ext", "field": "External_Lead_ID"},
            "fields": {"Company": "company", "Description": "seq"},
        },
        {
            "name": "roles",
            "operation": "update_related",
            "module": "Deals",
            "related_list": "Contacts",
            "parent": {"column": "deal", "field": "External_Deal_ID"},
            "match": {"column": "contact", "field": "External_Contact_ID"},
            "source": {"kind": "csv", "path": str(files["roles"])},
            "fields": {"Contact_Role": "role"},
        },
    ]


# ------------------------------------------------------------------------------------------------ history

Write = tuple[str, str, int]  # (stream, key, seq): one applied write, traced back to its source row


class Tracer:
    """Maps the sandbox's history entries back to the source rows they came from."""

    def __init__(self, sb: Sandbox) -> None:
        self._sb = sb
        self._ext: dict[str, str] = {}
        for module, field in (
            ("Contacts", "External_Contact_ID"),
            ("Leads", "External_Lead_ID"),
            ("Deals", "External_Deal_ID"),
        ):
            for record in sb.state.iter_records(module):
                self._ext[str(record["id"])] = str(record[field])

    def mark(self) -> int:
        """How many entries the history holds now: ``writes(since=mark)`` is what came after."""
        return len(self._sb.state.history)

    def writes(self, since: int = 0) -> list[Write]:
        out: list[Write] = []
        for entry in self._sb.state.history_since(since):
            out.append(self.trace(entry))
        return out

    def trace(self, entry: Mapping[str, JSON]) -> Write:
        op, module, fields = entry["op"], entry["module"], entry["fields"]
        assert isinstance(fields, dict), entry
        if op == "update" and module in ("Contacts", "Leads") and isinstance(fields.get("Description"), str):
            stream = "contacts" if module == "Contacts" else "leads"
            return stream, self._ext[str(entry["id"])], int(str(fields["Description"]))
        role = fields.get("Contact_Role")
        if op == "link" and module == "Deals" and isinstance(role, dict) and isinstance(role.get("id"), str):
            rid = str(role["id"])
            key = f"{self._ext[str(entry['id'])]}/{self._ext[str(entry['related_id'])]}"
            return "roles", key, int(rid[len(ROLE_PREFIX) : len(ROLE_PREFIX) + 6])
        raise AssertionError(f"a write that no source row asked for: {entry}")


def inversions(writes: Iterable[Write], start: Mapping[tuple[str, str], int] | None = None) -> list[str]:
    """Every write of a row older than one already applied to the same key (``start``: held before)."""
    held: dict[tuple[str, str], int] = dict(start or {})
    problems: list[str] = []
    for stream, key, seq in writes:
        before = held.get((stream, key))
        if before is not None and seq < before:
            problems.append(f"{stream} {key}: row {seq} applied after row {before}")
        held[(stream, key)] = seq
    return problems


def last_rows(rows: Iterable[Row]) -> dict[tuple[str, str], Row]:
    out: dict[tuple[str, str], Row] = {}
    for row in sorted(rows, key=lambda r: r.seq):
        out[(row.stream, row.key)] = row
    return out


def state_problems(sb: Sandbox, rows: Iterable[Row]) -> list[str]:
    """Every key of the export that the CRM does not hold at its last row's values."""
    problems: list[str] = []
    state = sb.state
    for (stream, key), row in last_rows(rows).items():
        if stream == "roles":
            deal, contact = key.split("/")
            deal_id = state.find_id("Deals", "External_Deal_ID", deal)
            contact_id = state.find_id("Contacts", "External_Contact_ID", contact)
            held = state.related("Deals", str(deal_id), "Contacts").get(str(contact_id), {}).get("Contact_Role")
            want: dict[str, JSON] = {"Contact_Role": {"id": role_id(row)}}
            got: dict[str, JSON] = {"Contact_Role": held}
        else:
            module, field = (
                ("Contacts", "External_Contact_ID") if stream == "contacts" else ("Leads", "External_Lead_ID")
            )
            record = state.find_by_field(module, field, key) or {}
            value = title(row.version) if stream == "contacts" else f"Company v{row.version}"
            name = "Title" if stream == "contacts" else "Company"
            want = {name: value, "Description": str(row.seq)}
            got = {name: record.get(name), "Description": record.get("Description")}
        if got != want:
            problems.append(f"{stream} {key}: holds {got}, its last row (row {row.seq}) says {want}")
    return problems


def report(problems: Sequence[str], limit: int = 12) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problems:\n  {shown}{more}"


# ------------------------------------------------------------------------------------------------ point 1

SIZES = {"contacts": 400, "leads": 200, "deals": 10}
PER_DEAL = 20


def edit_middle(rows: list[Row]) -> tuple[list[Row], set[tuple[str, str]]]:
    """For one key of each stream with 3+ rows: its middle row writes another value."""
    out, touched = list(rows), set()
    for stream in ("contacts", "leads", "roles"):
        counts = Counter(r.key for r in rows if r.stream == stream)
        key = min(k for k, n in counts.items() if n >= 3)
        mine = [i for i, r in enumerate(out) if r.stream == stream and r.key == key]
        middle = mine[len(mine) // 2]
        out[middle] = replace(out[middle], version=out[middle].version + 100)
        touched.add((stream, key))
    return out, touched


def drop_last(rows: list[Row]) -> tuple[list[Row], set[tuple[str, str]]]:
    """For one key of each stream with 3+ rows: its last row is gone from the export."""
    out, touched = list(rows), set()
    for stream in ("contacts", "leads", "roles"):
        counts = Counter(r.key for r in rows if r.stream == stream)
        key = min(k for k, n in counts.items() if n >= 3)
        last = max(i for i, r in enumerate(out) if r.stream == stream and r.key == key)
        del out[last]
        touched.add((stream, key))
    return out, touched


def append_row(rows: list[Row]) -> tuple[list[Row], set[tuple[str, str]]]:
    """For one key of each stream with 2+ rows (C0 among the contacts): one more row, at the end of the file."""
    out, touched = list(rows), set()
    for stream in ("contacts", "leads", "roles"):
        mine = [r for r in rows if r.stream == stream]
        counts = Counter(r.key for r in mine)
        key = "C0" if stream == "contacts" else min(k for k, n in counts.items() if n >= 2)
        out.append(Row(stream, key, max(r.seq for r in mine) + 1, counts[key]))
        touched.add((stream, key))
    return out, touched


def unchanged(rows: list[Row]) -> tuple[list[Row], set[tuple[str, str]]]:
    return list(rows), set()


Edit = Callable[[list[Row]], tuple[list[Row], set[tuple[str, str]]]]


@pytest.mark.parametrize(
    ("edit", "full"),
    [
        (unchanged, False),
        (edit_middle, False),
        (drop_last, False),
        (append_row, False),
        (unchanged, True),
    ],
    ids=["unchanged", "middle-row-edited", "last-row-dropped", "row-appended", "full"],
)
async def test_a_rerun_with_skip_unchanged_never_rolls_a_key_back(tmp_path: Path, edit: Edit, full: bool) -> None:
    """Re-run with the same ledger: unchanged keys cost no call, no row older than what the CRM holds is re-sent,
    every key ends at its last row; --full sends every row again, in order."""
    rows = make_export(9, contacts=SIZES["contacts"], leads=SIZES["leads"], deals=SIZES["deals"], per_deal=PER_DEAL)
    assert max(Counter((r.stream, r.key) for r in rows).values()) >= 3
    async with Sandbox(SandboxOptions(record_history=True)) as sb:
        seed_crm(sb, **SIZES)
        tracer = Tracer(sb)
        files = write_export(tmp_path / "export", rows)
        config = write_config(tmp_path / "sync.toml", sb.url, export_streams(files))
        first = await run(config)
        assert first.summary.succeeded == len(rows) and first.summary.adds_up, first.summary
        run1 = tracer.writes()
        assert not inversions(run1), report(inversions(run1))
        assert not state_problems(sb, rows), report(state_problems(sb, rows))

        second_rows, touched = edit(rows)
        write_export(tmp_path / "export", second_rows)
        mark, calls_before = tracer.mark(), sb.stats.snapshot()["calls_total"]
        second = await run(config, full=full)
        calls = int(str(sb.stats.snapshot()["calls_total"])) - int(str(calls_before))
        run2 = tracer.writes(since=mark)

    s = second.summary
    problems: list[str] = []  # the headlines first, then examples
    details: list[str] = []
    if not s.adds_up or s.rejected or s.failed or s.invalid or s.pending:
        problems.append(f"second run summary: {s}")
    if full:
        details += inversions(run2)  # --full re-sends every row: in source order
        unsent = set(last_rows(second_rows)) - {(stream, key) for stream, key, _ in run2}
        problems += [f"{k}: not sent again with full=True" for k in sorted(unsent)]
        if s.succeeded != s.read:
            problems.append(f"full=True: {s.succeeded} of {s.read} changes sent")
    else:
        if not touched and (calls or run2 or s.skipped != s.read):
            problems.append(
                f"an unchanged export: {calls} calls, {len(run2)} writes, {s.skipped} of {s.read} skipped "
                "(0 calls, 0 writes, all skipped expected)"
            )
        # Keys whose rows did not change cost nothing: no write at all in the second run.
        untouched = [w for w in run2 if (w[0], w[1]) not in touched]
        if untouched:
            problems.append(f"{len({w[:2] for w in untouched})} unchanged keys written again in the second run")
        # A key whose rows only grew (or stayed) never goes below the row the CRM already holds; a key whose
        # earlier rows were edited or dropped is written in source order from its first changed row on.
        held = {(stream, key): seq for stream, key, seq in run1}
        grew = {k for k in touched if edit is append_row}
        back = inversions(run2, {k: v for k, v in held.items() if k in grew or k not in touched})
        if back:
            problems.append(f"{len(back)} writes of a row older than the one the CRM held (listed below)")
        details += back
    wrong = state_problems(sb, second_rows)
    if wrong:
        problems.append(f"{len(wrong)} of {len(last_rows(second_rows))} keys not at their last row's values")
    details[:0] = sorted(wrong, key=lambda p: (not p.startswith("contacts C0:"), p))[:6]
    problems += details
    assert not problems, report(problems)


# ------------------------------------------------------------------------------------------------ point 2


def engine_env(**variables: str) -> dict[str, str]:
    """The environment of a real engine process: ours without any ZOHO_ variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_")}
    return {**env, **variables}


REFRESH_CREDENTIALS = {
    "ZOHO_CLIENT_ID": SECRETS.client_id or "",
    "ZOHO_CLIENT_SECRET": SECRETS.client_secret or "",
    "ZOHO_REFRESH_TOKEN": SECRETS.refresh_token or "",
}


def ledger_query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the ledger, read-only (the engine may be writing it); [] before its schema exists."""
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return list(db.execute(sql).fetchall())
    except sqlite3.Error:
        return []


async def poll(condition: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Check ``condition`` every 10 ms until it holds (True) or ``within`` seconds pass (False)."""
    with anyio.move_on_after(within):
        while not await condition():
            await anyio.sleep(0.01)
        return True
    return False


def engine_command(config: Config, *args: str) -> list[str]:
    return [sys.executable, "-m", "syncengine", "--json-logs", "run", str(config.file), *args]


async def run_engine(config: Config, *args: str, env: Mapping[str, str], log: Path, within: float = 60.0) -> int:
    """``syncengine run CONFIG ARGS`` as a real process, to its end; its exit code."""
    with log.open("wb") as out:
        async with await anyio.open_process(
            engine_command(config, *args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(env)
        ) as proc:
            with anyio.fail_after(within):
                return await proc.wait()


async def kill_engine_when(
    config: Config,
    condition: Callable[[], Awaitable[bool]],
    *,
    env: Mapping[str, str],
    log: Path,
    within: float = 30.0,
) -> None:
    """Start ``syncengine run CONFIG`` and SIGKILL it the moment ``condition`` holds."""
    with log.open("wb") as out:
        async with await anyio.open_process(
            engine_command(config), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(env)
        ) as proc:

            async def reached() -> bool:
                return proc.returncode is not None or await condition()

            met = await poll(reached, within)
            ended = proc.returncode
            proc.kill()
            await proc.wait()
    assert met and ended is None, f"the engine ended ({ended}) or never got there; see {log}"


async def ledger_rows(path: Path) -> list[OutcomeRow]:
    async with SqliteLedger(path) as ledger:
        run_id = await ledger.latest_run_id()
        assert run_id is not None
        return [row async for row in ledger.outcomes(run_id)]


async def test_a_resume_never_applies_an_older_change_after_a_newer_one(tmp_path: Path) -> None:
    """Two changes of a key merged, applied, then SIGKILL before their outcomes are kept: the resume never
    sends the older one after the CRM applied the newer."""
    # Four records per call, one call at a time. Contact A's second row waits behind the first call (A is in
    # it), so the second call is E, F, Y and G, with Y's rows 8 and 9 merged into one record. The kill lands
    # once the first call's outcomes are committed and the sandbox has applied the second call (its answer
    # is held back by latency). A resume that batches afresh from row 5 puts A's second row, E, F and Y's
    # row 8 in one call, and row 9 after it: Y goes from row 9's title back to row 8's.
    keys = ["A", "B", "C", "D", "A", "E", "F", "Y", "Y", "G"]
    rows = [Row("contacts", key, seq, keys[: seq - 1].count(key)) for seq, key in enumerate(keys, start=1)]
    async with Sandbox(SandboxOptions(record_history=True, static_tokens=("static-token",))) as sb:
        sb.state.load(
            {"records": {"Contacts": [{"External_Contact_ID": k, "Last_Name": k} for k in sorted(set(keys))]}}
        )
        tracer = Tracer(sb)
        src = write_csv(
            tmp_path / "contacts.csv",
            ["erp_id", "title", "seq"],
            ([r.key, title(r.version), str(r.seq)] for r in rows),
        )
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src, batch_size=4)], concurrency=1)
        env = engine_env(ZOHO_ACCESS_TOKEN="static-token")
        ledger = config.ledger.path

        async def release_the_first_call() -> None:
            # The first call is held: from now on every call's answer takes 2 s (after it is applied).
            await sb.wait_in_flight(1)
            sb.set_faults(latency_ms=(2000.0, 2000.0))
            sb.resume()

        async def second_call_applied_first_kept() -> bool:
            kept = await anyio.to_thread.run_sync(ledger_query, ledger, "SELECT seq FROM outcomes")
            return ("contacts", "Y", 9) in tracer.writes() and sorted(s for (s,) in kept) == [1, 2, 3, 4]

        sb.pause()  # holds the first call until the latency for the ones after it is set
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_the_first_call)
            await kill_engine_when(config, second_call_applied_first_kept, env=env, log=tmp_path / "killed.log")
            tg.cancel_scope.cancel()
        sb.resume()
        kept = await anyio.to_thread.run_sync(ledger_query, ledger, "SELECT seq FROM outcomes")
        assert sorted(s for (s,) in kept) == [1, 2, 3, 4], "the kill must land before the merged call's outcomes"
        sb.set_faults(latency_ms=(0.0, 0.0))
        code = await run_engine(config, "--resume", env=env, log=tmp_path / "resumed.log")
        writes = tracer.writes()

    outcomes = await ledger_rows(ledger)
    problems = inversions(writes) + state_problems(sb, rows)
    if code != 0 or sorted(o.seq for o in outcomes) != list(range(1, 11)):
        problems.append(f"resume exited {code} with outcomes for rows {sorted(o.seq for o in outcomes)}")
    problems += [f"row {o.seq}: {o.status} {o.code}" for o in outcomes if o.status is not Status.SUCCESS]
    assert not problems, report(problems) + f"\nwrites (stream, key, row) in apply order: {writes}"
