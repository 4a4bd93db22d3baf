"""Reports from the ledger: per-record outcomes (table, CSV, JSONL), the run summary, the run history.

CSV and JSONL are the error export that can be fixed and fed back: each row carries the outcome columns,
prefixed with ``_``, then the source row's columns as they were read. A user fixes the source columns in a
spreadsheet and feeds the file back as a source; the readers ignore columns the mapping does not name, so
the ``_`` columns are simply not sent.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Collection, Sequence
from typing import Final, TextIO

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from syncengine.errors import LedgerError
from syncengine.ledger.sqlite import SqliteLedger
from syncengine.ledger.values import OutcomeRow, RunState, RunSummary
from syncengine.model import JSON, Status

__all__ = ["OUTCOME_COLUMNS", "REPORT_FORMATS", "render_runs", "render_summary", "write_report"]

REPORT_FORMATS: Final = ("table", "csv", "jsonl")

# The outcome's columns at the front of every exported row; the source row's columns follow.
OUTCOME_COLUMNS: Final = ("_status", "_code", "_message", "_stream", "_seq", "_key", "_crm_id")

_MESSAGE_WIDTH: Final = 50  # a table shows this much of a message; CSV and JSONL carry all of it
_TABLE_CHUNK: Final = 500  # rows per rendered table: a report of millions of rows never builds one table

_STATUS_STYLE: Final = {
    Status.SUCCESS: "green",
    Status.REJECTED: "red",
    Status.FAILED: "yellow",
    Status.INVALID: "magenta",
    Status.SKIPPED: "dim",
    Status.PENDING: "cyan",
}


async def write_report(
    ledger: SqliteLedger,
    run_id: int,
    out: TextIO,
    *,
    fmt: str = "table",
    statuses: Collection[Status] | None = None,
    codes: Collection[str] | None = None,
    stream: str | None = None,
) -> int:
    """Write the run's outcomes (filtered) to ``out`` as a table, CSV or JSONL; returns rows written.

    Rows stream from the ledger a page at a time. A CSV header needs every source column up front, so CSV
    reads the ledger twice (column names, then rows) rather than holding the rows in memory.
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(REPORT_FORMATS)}")
    if not await ledger.has_run(run_id):
        raise LedgerError(str(ledger.path), f"no run {run_id} in the ledger")
    rows = ledger.outcomes(run_id, statuses=statuses, codes=codes, stream=stream)
    written = 0
    if fmt == "csv":
        columns = await ledger.source_columns(run_id, statuses=statuses, codes=codes, stream=stream)
        source = [c for c in columns if c not in OUTCOME_COLUMNS]  # never two columns of one name
        writer = csv.writer(out)
        writer.writerow([*OUTCOME_COLUMNS, *source])
        async for row in rows:
            values = row.source_row or {}
            writer.writerow([*_prefix(row), *(_cell(values.get(c)) for c in source)])
            written += 1
    elif fmt == "jsonl":
        async for row in rows:
            record: dict[str, JSON] = dict(zip(OUTCOME_COLUMNS, _prefix(row), strict=True))
            for name, value in (row.source_row or {}).items():
                record.setdefault(name, value)
            out.write(orjson.dumps(record).decode())
            out.write("\n")
            written += 1
    else:
        console = Console(file=out, width=160, soft_wrap=False)
        chunk: list[OutcomeRow] = []
        async for row in rows:
            chunk.append(row)
            if len(chunk) == _TABLE_CHUNK:
                console.print(_outcome_table(chunk, header=written == 0))
                written += len(chunk)
                chunk = []
        if chunk or written == 0:
            console.print(_outcome_table(chunk, header=written == 0))
            written += len(chunk)
    return written


def _prefix(row: OutcomeRow) -> tuple[str, str | None, str | None, str, int, str, str | None]:
    return (row.status.value, row.code, row.message, row.stream, row.seq, row.key, row.crm_id)


def _cell(value: JSON) -> str:
    """A source value as a CSV cell: strings as read, nested values as JSON, a missing or null value empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()


def _truncate(text: str | None, width: int = _MESSAGE_WIDTH) -> str:
    if not text:
        return ""
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= width else text[: width - 1] + "…"


def _outcome_table(rows: Sequence[OutcomeRow], *, header: bool) -> Table:
    # Fixed widths, so the chunks of one report line up as one table.
    table = Table(box=box.SIMPLE_HEAD if header else None, show_header=header, show_edge=False, pad_edge=False)
    table.add_column("stream", width=14, no_wrap=True, overflow="ellipsis")
    table.add_column("seq", width=9, justify="right", no_wrap=True)
    table.add_column("key", width=18, no_wrap=True, overflow="ellipsis")
    table.add_column("status", width=9, no_wrap=True)
    table.add_column("code", width=24, no_wrap=True, overflow="ellipsis")
    table.add_column("message", width=_MESSAGE_WIDTH, no_wrap=True, overflow="ellipsis")
    table.add_column("crm id", width=20, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(
            row.stream,
            str(row.seq),
            row.key,
            Text(row.status.value, style=_STATUS_STYLE[row.status]),
            row.code or "",
            _truncate(row.message),
            row.crm_id or "",
        )
    return table


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


_STATE_STYLE: Final = {
    RunState.RUNNING: "cyan",
    RunState.COMPLETED: "green",
    RunState.INTERRUPTED: "yellow",
    RunState.FAILED: "red",
    RunState.HALTED: "red",
    RunState.PAUSED: "yellow",
}

_COUNTS: Final = ("read", "succeeded", "rejected", "failed", "invalid", "skipped", "pending")


def render_summary(summary: RunSummary, console: Console) -> None:
    """The counts per stream and status, the total that adds up, and the top error codes with a sample."""
    title = Text.assemble(
        f"Run {summary.run_id} ",
        (summary.state.value, _STATE_STYLE[summary.state]),
        " (dry run)" if summary.dry_run else "",
        f" · {_duration(summary.duration)}" if summary.duration is not None else "",
        f" · retry of run {summary.retry_of}" if summary.retry_of is not None else "",
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("stream", overflow="fold")
    for name in _COUNTS:
        # Counts are never cut: the stream name folds instead when the terminal is narrow.
        width = max(len(name), len(f"{getattr(summary, name):,}"))
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    for s in summary.per_stream:
        table.add_row(s.stream, *(_count(name, getattr(s, name)) for name in _COUNTS))
    table.add_section()
    table.add_row(Text("total", style="bold"), *(_count(name, getattr(summary, name)) for name in _COUNTS))
    console.print(table)
    check = "adds up" if summary.adds_up else "DOES NOT ADD UP"
    console.print(
        f"read {summary.read:,} = succeeded {summary.succeeded:,} + rejected {summary.rejected:,} + failed "
        f"{summary.failed:,} + invalid {summary.invalid:,} + skipped {summary.skipped:,} + pending "
        f"{summary.pending:,}: {check}",
        style=None if summary.adds_up else "bold red",
        highlight=False,
    )
    if summary.top_errors:
        errors = Table(title="Top errors", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
        errors.add_column("status", no_wrap=True, min_width=8)
        errors.add_column(
            "code", no_wrap=True, min_width=len(max((e.code or "-" for e in summary.top_errors), key=len))
        )
        errors.add_column("count", justify="right", no_wrap=True)
        errors.add_column("sample message", ratio=1, overflow="fold")
        for e in summary.top_errors:
            errors.add_row(
                Text(e.status.value, style=_STATUS_STYLE[e.status]),
                e.code or "-",
                f"{e.count:,}",
                _truncate(e.sample, 80),
            )
        console.print(errors)


def _count(name: str, value: int) -> Text:
    style = {"rejected": "red", "failed": "yellow", "invalid": "magenta", "pending": "cyan"}.get(name, "")
    return Text(f"{value:,}", style=style if value else "dim")


def render_runs(runs: Sequence[RunSummary], console: Console) -> None:
    """The run history, newest first, with counts."""
    if not runs:
        console.print("No runs recorded yet.")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for name, justify in (
        ("run", "right"),
        ("started", "left"),
        ("took", "right"),
        ("state", "left"),
        ("streams", "left"),
        ("read", "right"),
        ("ok", "right"),
        ("errors", "right"),
        ("skipped", "right"),
        ("pending", "right"),
        ("retry of", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in runs:
        table.add_row(
            str(r.run_id),
            _when(r.started_at),
            _duration(r.duration),
            Text(r.state.value + (" (dry)" if r.dry_run else ""), style=_STATE_STYLE[r.state]),
            _truncate(", ".join(r.streams), 30),
            f"{r.read:,}",
            f"{r.succeeded:,}",
            Text(f"{r.errors:,}", style="red" if r.errors else "dim"),
            f"{r.skipped:,}",
            Text(f"{r.pending:,}", style="cyan" if r.pending else "dim"),
            str(r.retry_of) if r.retry_of is not None else "",
        )
    console.print(table)
