"""Run summaries from the ledger's rows: counted live, or from the snapshot ``finish_run`` wrote."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any, Final

import orjson

from syncengine.ledger.values import ErrorCount, RunState, RunSummary, StreamCounts
from syncengine.model import Status

__all__ = ["count_run", "snapshot", "summary_from"]

_TOP_ERRORS: Final = 10
_ERROR_STATUSES: Final = (Status.REJECTED.value, Status.FAILED.value, Status.INVALID.value)


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def count_run(
    conn: sqlite3.Connection,
    row: tuple[Any, ...],
    *,
    read: Mapping[str, int],
    state: RunState,
    finished_at: float | None,
) -> RunSummary:
    run_id = row[0]
    rows: dict[str, dict[Status, int]] = {}
    for stream, status, n in conn.execute(
        "SELECT stream, status, count(*) FROM outcomes WHERE run_id = ? GROUP BY stream, status",
        (run_id,),
    ):
        rows.setdefault(stream, {})[Status(status)] = n
    configured: list[str] = _loads(row[5])
    names = list(dict.fromkeys([*configured, *read, *sorted(rows)]))
    per_stream = [StreamCounts.tally(s, read=int(read.get(s, 0)), rows=rows.get(s, {})) for s in names]
    # min(seq) makes SQLite take the bare ``message`` from the first row of each code: a stable sample.
    errors = [
        ErrorCount(status=Status(status), code=code, count=n, sample=message)
        for status, code, n, _, message in conn.execute(
            "SELECT status, code, count(*) AS n, min(seq), message FROM outcomes "
            f"WHERE run_id = ? AND status IN ({', '.join('?' * len(_ERROR_STATUSES))}) "
            "GROUP BY status, code ORDER BY n DESC, status, code LIMIT ?",
            (run_id, *_ERROR_STATUSES, _TOP_ERRORS),
        )
    ]
    return RunSummary.build(
        run_id=run_id,
        state=state,
        started_at=row[1],
        finished_at=finished_at,
        config_file=row[4],
        streams=configured,
        dry_run=bool(row[6]),
        retry_of=row[7],
        per_stream=per_stream,
        top_errors=errors,
    )


def snapshot(summary: RunSummary) -> str:
    return orjson.dumps(
        {
            "streams": [
                {
                    "stream": s.stream,
                    "read": s.read,
                    "succeeded": s.succeeded,
                    "rejected": s.rejected,
                    "failed": s.failed,
                    "invalid": s.invalid,
                    "skipped": s.skipped,
                    "pending": s.pending,
                }
                for s in summary.per_stream
            ],
            "errors": [[e.status.value, e.code, e.count, e.sample] for e in summary.top_errors],
        }
    ).decode()


def summary_from(row: tuple[Any, ...], snapshot: dict[str, Any]) -> RunSummary:
    return RunSummary.build(
        run_id=row[0],
        state=RunState(row[3]),
        started_at=row[1],
        finished_at=row[2],
        config_file=row[4],
        streams=_loads(row[5]),
        dry_run=bool(row[6]),
        retry_of=row[7],
        per_stream=[StreamCounts(**s) for s in snapshot["streams"]],
        top_errors=[ErrorCount(status=Status(st), code=c, count=n, sample=m) for st, c, n, m in snapshot["errors"]],
    )
