"""Reports: the error export carries the source row so it can be fixed and fed back; summaries add up."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from syncengine.errors import LedgerError
from syncengine.ledger import OUTCOME_COLUMNS, SqliteLedger, render_runs, render_summary, write_report
from syncengine.model import Status

from .builders import outcome

ERRORS = {Status.REJECTED, Status.FAILED, Status.INVALID}
LONG = "the value given for the field Email is not a valid email address: " + "x" * 200


async def sample(path: Path) -> tuple[SqliteLedger, int]:
    """A finished run over two streams whose source rows have different columns."""
    ledger = await SqliteLedger.open(path)
    run_id = await ledger.start_run(config_file="nightly.toml", streams=["contacts", "deals"])
    await ledger.append(
        run_id,
        [
            outcome(1, source_row={"erp_id": "C1", "email": "c1@example.com", "name": "Ann"}, crm_id="900"),
            outcome(
                2,
                Status.REJECTED,
                code="INVALID_DATA",
                message=LONG,
                source_row={"erp_id": "C2", "email": "not-an-email", "name": 'Bob, Jr. "B"'},
            ),
            outcome(
                3,
                Status.INVALID,
                code="MAPPING_ERROR",
                message="missing erp_id",
                source_row={"erp_id": "", "email": "c3@example.com", "phone": "+44 1"},
            ),
            outcome(
                4,
                Status.FAILED,
                code="TIMEOUT",
                message="timed out",
                key="D4",
                stream="deals",
                source_row={"deal_id": "D4", "amount": 12.5, "tags": ["x"], "closed": True, "note": None},
            ),
        ],
    )
    await ledger.finish_run(run_id, state="completed", read={"contacts": 4, "deals": 1})
    return ledger, run_id


async def test_csv_error_export_reads_back_with_the_original_source_columns(tmp_path: Path) -> None:
    """Outcome columns first, then the union of source columns in first-seen order; values as they were read."""
    ledger, run_id = await sample(tmp_path / "ledger.db")
    out = io.StringIO(newline="")
    async with ledger:
        written = await write_report(ledger, run_id, out, fmt="csv", statuses=ERRORS)
    out.seek(0)
    reader = csv.DictReader(out)
    rows = list(reader)
    assert written == 3
    assert reader.fieldnames == [
        *OUTCOME_COLUMNS,
        "erp_id",
        "email",
        "name",
        "phone",
        "deal_id",
        "amount",
        "tags",
        "closed",
        "note",
    ]
    assert [(r["_status"], r["_code"], r["_stream"], r["_seq"], r["_key"]) for r in rows] == [
        ("REJECTED", "INVALID_DATA", "contacts", "2", "C000002"),
        ("INVALID", "MAPPING_ERROR", "contacts", "3", "C000003"),
        ("FAILED", "TIMEOUT", "deals", "4", "D4"),
    ]
    assert rows[0]["_message"] == LONG  # the export carries the whole message
    assert {k: rows[0][k] for k in ("erp_id", "email", "name")} == {
        "erp_id": "C2",
        "email": "not-an-email",
        "name": 'Bob, Jr. "B"',
    }
    assert {k: rows[1][k] for k in ("erp_id", "email", "phone", "name")} == {
        "erp_id": "",
        "email": "c3@example.com",
        "phone": "+44 1",
        "name": "",
    }
    assert {k: rows[2][k] for k in ("deal_id", "amount", "tags", "closed", "note")} == {
        "deal_id": "D4",
        "amount": "12.5",
        "tags": '["x"]',
        "closed": "true",
        "note": "",
    }


async def test_jsonl_export_keeps_source_values_and_types(tmp_path: Path) -> None:
    """Each JSONL line is the outcome's _ fields followed by the source row exactly as read."""
    ledger, run_id = await sample(tmp_path / "ledger.db")
    out = io.StringIO()
    async with ledger:
        written = await write_report(ledger, run_id, out, fmt="jsonl", stream="deals")
    [line] = out.getvalue().splitlines()
    record = orjson.loads(line)
    assert written == 1
    assert list(record)[: len(OUTCOME_COLUMNS)] == list(OUTCOME_COLUMNS)
    assert {k: v for k, v in record.items() if not k.startswith("_")} == {
        "deal_id": "D4",
        "amount": 12.5,
        "tags": ["x"],
        "closed": True,
        "note": None,
    }
    assert (record["_status"], record["_code"], record["_seq"], record["_crm_id"]) == ("FAILED", "TIMEOUT", 4, None)


async def test_code_filter_selects_rows(tmp_path: Path) -> None:
    """codes= narrows the export to those codes."""
    ledger, run_id = await sample(tmp_path / "ledger.db")
    out = io.StringIO()
    async with ledger:
        written = await write_report(ledger, run_id, out, fmt="jsonl", codes=["TIMEOUT", "MAPPING_ERROR"])
    assert written == 2
    assert [orjson.loads(line)["_code"] for line in out.getvalue().splitlines()] == ["MAPPING_ERROR", "TIMEOUT"]


async def test_table_is_readable_and_truncates_long_messages(tmp_path: Path) -> None:
    """The table shows one line per outcome with its key, status and code, and a shortened message."""
    ledger, run_id = await sample(tmp_path / "ledger.db")
    out = io.StringIO()
    async with ledger:
        written = await write_report(ledger, run_id, out, fmt="table")
    text = out.getvalue()
    assert written == 4
    for expected in ("C000001", "SUCCESS", "900", "INVALID_DATA", "MAPPING_ERROR", "D4", "status", "message"):
        assert expected in text
    assert "the value given for the field Email" in text and "x" * 100 not in text and "…" in text


async def test_table_of_many_rows_streams_in_chunks(tmp_path: Path) -> None:
    """More rows than one rendered chunk still all appear, with the header once."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        await ledger.append(run_id, [outcome(i) for i in range(1234)])
        out = io.StringIO()
        written = await write_report(ledger, run_id, out, fmt="table")
    text = out.getvalue()
    assert written == 1234 and text.count("C001233") == 1 and text.count("message") == 1


async def test_report_of_an_unknown_run_or_format_is_refused(tmp_path: Path) -> None:
    """A run that does not exist is a LedgerError; a format we do not write is a ValueError."""
    ledger, run_id = await sample(tmp_path / "ledger.db")
    async with ledger:
        with pytest.raises(LedgerError, match="no run 77"):
            await write_report(ledger, 77, io.StringIO(), fmt="csv")
        with pytest.raises(ValueError, match="xml"):
            await write_report(ledger, run_id, io.StringIO(), fmt="xml")


async def test_summary_screen_adds_up_and_lists_top_errors(tmp_path: Path) -> None:
    """render_summary shows each stream, the total that adds up, and each error code with a sample message."""
    ledger, run_id = await sample(tmp_path / "ledger.db")
    async with ledger:
        summary = await ledger.summary(run_id)
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_summary(summary, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert summary.adds_up
    assert "Run 1 completed" in text and "contacts" in text and "deals" in text and "total" in text
    assert "read 5 = succeeded 1 + rejected 1 + failed 1 + invalid 1 + skipped 0 + pending 1: adds up" in text
    assert "INVALID_DATA" in text and "the value given for the field Email" in text and "missing erp_id" in text


async def test_runs_history_renders_each_run(tmp_path: Path) -> None:
    """render_runs lists every run with its state and counts; an empty history says so."""
    ledger, first = await sample(tmp_path / "ledger.db")
    async with ledger:
        second = await ledger.start_run(config_file="nightly.toml", streams=["contacts"], retry_of=first)
        runs = await ledger.runs()
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_runs(runs, console)
    render_runs([], console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "completed" in text and "running" in text and "contacts, deals" in text
    assert f"{second}" in text and "No runs recorded yet." in text
