"""Nightly re-runs: unchanged rows cost nothing, deletes from the source, the delete guardrail, daily credits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from syncengine.sandbox import Sandbox
from tests.conftest import run, write_config, write_csv


def contacts_stream(src: Path) -> dict[str, Any]:
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(src)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
    }


def seed(sb: Sandbox, n: int, deals: int = 0) -> None:
    sb.state.load(
        {
            "records": {
                "Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "Old"} for i in range(n)],
                "Deals": [{"External_Deal_ID": f"D{i}", "Deal_Name": f"Deal {i}"} for i in range(deals)],
            }
        }
    )


async def test_second_run_of_an_unchanged_export_makes_zero_calls(tmp_path: Path, sandbox: Sandbox) -> None:
    """The same 100,000-row export run twice: the second run skips every row as UNCHANGED, with no call."""
    n = 100_000
    seed(sandbox, n)
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], ([f"C{i}", f"N{i}"] for i in range(n)))
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    first = await run(config)
    assert first.summary.succeeded == n and first.calls <= n // 100 + 10  # a few partial batches at most
    second = await run(config)
    s = second.summary
    assert (s.read, s.skipped, s.succeeded, second.calls) == (n, n, 0, 0) and s.adds_up


async def test_changed_rows_are_sent_and_full_sends_everything(tmp_path: Path, sandbox: Sandbox) -> None:
    """Only the rows that changed since their last success are sent; --full sends them all again."""
    seed(sandbox, 300)
    rows = [[f"C{i}", f"N{i}"] for i in range(300)]
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], rows)
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    await run(config)
    rows[7][1] = "Changed"
    write_csv(src, ["erp_id", "last_name"], rows)
    second = await run(config)
    assert (second.summary.succeeded, second.summary.skipped, second.calls) == (1, 299, 1)
    assert (sandbox.state.find_by_field("Contacts", "External_Contact_ID", "C7") or {})["Last_Name"] == "Changed"
    third = await run(config, full=True)
    assert third.summary.succeeded == 300 and third.calls == 3


async def test_a_failed_change_is_not_skipped_next_time(tmp_path: Path, sandbox: Sandbox) -> None:
    """Only SUCCESS is remembered: a rejected row is sent again on the next run."""
    seed(sandbox, 2)
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [["C0", "A"], ["C404", "B"]])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    first = await run(config)
    second = await run(config)
    assert (first.summary.succeeded, first.summary.rejected) == (1, 1)
    assert (second.summary.skipped, second.summary.rejected) == (1, 1)


def links_stream(src: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "links",
        "operation": "update_related",
        "module": "Deals",
        "related_list": "Contacts",
        "parent": {"column": "deal", "field": "External_Deal_ID"},
        "match": {"column": "contact", "field": "External_Contact_ID"},
        "source": {"kind": "csv", "path": str(src)},
        "fields": {"Contact_Role": "role"},
        "delete_when": {"column": "deleted", "values": ["true", "1"]},
        **extra,
    }


async def test_a_deleted_flag_delinks_the_relation(tmp_path: Path, sandbox: Sandbox) -> None:
    """Rows flagged deleted become delinks of the same relation; the others link."""
    seed(sandbox, 4, deals=1)
    header = ["deal", "contact", "role", "deleted"]
    role = "111111000000026002"
    src = write_csv(tmp_path / "l.csv", header, [["D0", f"C{i}", role, "false"] for i in range(4)])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [links_stream(src)])
    assert (await run(config)).summary.succeeded == 4
    write_csv(src, header, [["D0", f"C{i}", role, "true" if i % 2 else "false"] for i in range(4)])
    second = await run(config)
    assert (second.summary.succeeded, second.summary.skipped) == (2, 2)
    deal = str(sandbox.state.find_id("Deals", "External_Deal_ID", "D0"))
    linked = sandbox.state.related("Deals", deal, "Contacts")
    ids = {f"C{i}": str(sandbox.state.find_id("Contacts", "External_Contact_ID", f"C{i}")) for i in range(4)}
    assert set(linked) == {ids["C0"], ids["C2"]}


async def test_max_deletes_guardrail_stops_the_stream(tmp_path: Path, sandbox: Sandbox) -> None:
    """A source that suddenly asks for more deletes than allowed stops its stream with a clear message."""
    seed(sandbox, 50, deals=1)
    header = ["deal", "contact", "role", "deleted"]
    src = write_csv(tmp_path / "l.csv", header, [["D0", f"C{i}", "", "true"] for i in range(50)])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [links_stream(src, max_deletes=10)])
    result = await run(config)
    s = result.summary
    assert s.adds_up and s.state == "halted"
    assert any("MAX_DELETES_EXCEEDED" in h for h in result.halted)
    async with SqliteLedger(config.ledger.path) as ledger:
        rows = [r async for r in ledger.outcomes(s.run_id)]
    sent = [r for r in rows if r.status is Status.REJECTED or r.status is Status.SUCCESS]
    assert len(sent) <= 10  # never more deletes sent than allowed
    assert any(r.code == "MAX_DELETES_EXCEEDED" for r in rows)


async def test_daily_credit_budget_holds_across_runs(tmp_path: Path, sandbox: Sandbox) -> None:
    """A daily budget counts what earlier runs spent in the last 24 hours."""
    seed(sandbox, 1000)
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [[f"C{i}", "X"] for i in range(500)])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)], credit_budget=70)
    first = await run(config)
    spent = sandbox.stats.snapshot()["credits_used"]
    # 5 calls x 10 credits, or a little more when a linger split a batch on a busy machine
    assert first.summary.succeeded == 500 and isinstance(spent, int) and 50 <= spent <= 60
    src2 = write_csv(tmp_path / "d.csv", ["erp_id", "last_name"], [[f"C{i}", "Y"] for i in range(500, 1000)])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src2)], credit_budget=70)
    second = await run(config)
    # What was left buys full calls of 100 records at 10 credits each, and the budget is never exceeded.
    assert second.summary.succeeded == (70 - spent) // 10 * 100 and second.summary.state == "paused"
    assert sandbox.stats.snapshot()["credits_used"] == spent + (70 - spent) // 10 * 10


async def test_plan_counts_calls_and_credits_and_respects_skip_unchanged(tmp_path: Path, sandbox: Sandbox) -> None:
    """--plan (a dry run) counts the calls and credits a run would need, after skipping unchanged rows."""
    seed(sandbox, 250)
    rows = [[f"C{i}", f"N{i}"] for i in range(250)]
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], rows)
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)], credit_budget=1000)
    plan = await run(config, secrets=None, dry_run_path=tmp_path / "plan.jsonl")
    assert (plan.planned_calls, plan.planned_credits, plan.credits_left, plan.calls) == (3, 25, 1000, 0)
    await run(config)
    rows[0][1] = "Changed"
    write_csv(src, ["erp_id", "last_name"], rows)
    replan = await run(config, secrets=None, dry_run_path=tmp_path / "plan.jsonl")
    assert (replan.planned_calls, replan.planned_credits, replan.credits_left) == (1, 1, 1000 - 25)
