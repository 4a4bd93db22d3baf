"""The ledger's read side: a run's outcome rows in (stream, seq) order, a page at a time, and what they hold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, Final, TypeVar

import orjson

from syncengine.ledger.connection import SqliteConnection
from syncengine.ledger.values import OutcomeRow, SeqSet
from syncengine.model import Operation, Status

__all__ = ["OUTCOME_SQL_COLUMNS", "LedgerReads", "filters"]

_T = TypeVar("_T")
_Key = tuple[str, int]  # (stream, seq): the position of a row in a run, and of a page
_PAGE_SIZE: Final = 1000  # rows per read: keeps a report's memory flat and the connection free in between

OUTCOME_SQL_COLUMNS: Final = (
    "run_id, stream, seq, operation, module, related_list, key, parent, status, code, message, details, "
    "crm_id, http_status, attempts, started_at, finished_at, note, source_row"
)


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _outcome_row(r: tuple[Any, ...]) -> OutcomeRow:
    return OutcomeRow(
        run_id=r[0],
        stream=r[1],
        seq=r[2],
        operation=Operation(r[3]),
        module=r[4],
        related_list=r[5],
        key=r[6],
        parent=r[7],
        status=Status(r[8]),
        code=r[9],
        message=r[10],
        details=_loads(r[11]),
        crm_id=r[12],
        http_status=r[13],
        attempts=r[14],
        started_at=r[15],
        finished_at=r[16],
        note=r[17],
        source_row=_loads(r[18]),
    )


def filters(
    statuses: Collection[Status] | None, codes: Collection[str] | None, stream: str | None
) -> tuple[str, list[object]]:
    """The WHERE clause (after ``run_id = ?``) for a report's filters; an empty collection matches nothing."""
    sql, params = "", list[object]()
    if stream is not None:
        sql += " AND stream = ?"
        params.append(stream)
    if statuses is not None:
        values = sorted({Status(s).value for s in statuses})
        sql += f" AND status IN ({', '.join('?' * len(values))})"
        params += values
    if codes is not None:
        values = sorted(set(codes))
        sql += f" AND code IN ({', '.join('?' * len(values))})"
        params += values
    return sql, params


class LedgerReads(SqliteConnection):
    """Reads of outcome rows, paged by keyset on (stream, seq)."""

    async def outcomes(
        self,
        run_id: int,
        *,
        statuses: Collection[Status] | None = None,
        codes: Collection[str] | None = None,
        stream: str | None = None,
        page_size: int = _PAGE_SIZE,
    ) -> AsyncIterator[OutcomeRow]:
        """The run's outcome rows in (stream, seq) order, read a page at a time (never all at once)."""
        pages = self._pages(run_id, OUTCOME_SQL_COLUMNS, _outcome_row, statuses, codes, stream, page_size)
        async for page in pages:
            for row in page:
                yield row

    async def source_columns(
        self,
        run_id: int,
        *,
        statuses: Collection[Status] | None = None,
        codes: Collection[str] | None = None,
        stream: str | None = None,
    ) -> list[str]:
        """The union of the source rows' column names, in first-seen (stream, seq) order, for a CSV header."""
        seen: dict[str, None] = {}
        last: tuple[str, ...] = ()

        def keys(r: tuple[Any, ...]) -> tuple[str, ...]:
            return () if r[2] is None else tuple(orjson.loads(r[2]))

        pages = self._pages(run_id, "stream, seq, source_row", keys, statuses, codes, stream, _PAGE_SIZE)
        async for page in pages:
            for columns in page:
                if columns != last:  # rows of one source mostly share their columns: skip the dict work
                    seen.update(dict.fromkeys(columns))
                    last = columns
        return list(seen)

    async def terminal_seqs(self, run_id: int, stream: str) -> SeqSet:
        """The seqs of ``stream`` that have a terminal outcome in the run, as ranges (for resume).

        Only terminal outcomes are ever written, so this reads the primary-key index alone, in order, and
        a stream of millions of rows costs as many ranges as it has gaps.
        """

        def load() -> SeqSet:
            cursor = self._connection().execute(
                "SELECT seq FROM outcomes WHERE run_id = ? AND stream = ? ORDER BY seq", (run_id, stream)
            )
            return SeqSet(seq for (seq,) in cursor)

        return await self._run(f"cannot read the outcomes of run {run_id}", load)

    async def _pages(
        self,
        run_id: int,
        columns: str,
        decode: Callable[[tuple[Any, ...]], _T],
        statuses: Collection[Status] | None,
        codes: Collection[str] | None,
        stream: str | None,
        page_size: int,
    ) -> AsyncIterator[list[_T]]:
        """Keyset pagination on (stream, seq): each page is one short query, so nothing is held in between.

        ``columns`` must start with ``stream, seq`` (or be the full outcome columns, which have them at 1, 2).
        """
        where, params = filters(statuses, codes, stream)
        key_at = 1 if columns.startswith("run_id") else 0
        after: _Key | None = None
        while True:
            if after is None:
                sql, args = "", [run_id, *params]
            elif stream is not None:  # one stream: the range is on seq alone
                sql, args = " AND seq > ?", [run_id, *params, after[1]]
            else:
                sql, args = " AND (stream, seq) > (?, ?)", [run_id, *params, *after]
            query = f"SELECT {columns} FROM outcomes WHERE run_id = ?{where}{sql}"
            query += " ORDER BY stream, seq LIMIT ?"

            def fetch(query: str = query, args: list[object] = args) -> tuple[list[_T], _Key | None]:
                raw = self._connection().execute(query, (*args, page_size)).fetchall()
                last = (raw[-1][key_at], raw[-1][key_at + 1]) if raw else None
                return [decode(r) for r in raw], last

            page, last = await self._run(f"cannot read the outcomes of run {run_id}", fetch)
            if page:
                yield page
            if last is None or len(page) < page_size:
                return
            after = last
