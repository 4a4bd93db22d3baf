"""SQL sources: a table or a query, read in keyset-paginated pages, one page in memory at a time.

What is read is an :class:`SqlSpec`: a ``table`` or a ``query`` (wrapped as a subquery, so any SELECT
works), the unique ``key`` column (the primary key: the tie-breaker), and optionally an incremental
``cursor`` column (``updated_at``). Rows come in ``(cursor, key)`` order, or ``key`` order without a
cursor, each page fetched with ::

    SELECT * FROM (<query>) AS q WHERE (q.cursor, q.key) > (:last_cursor, :last_key)
    ORDER BY q.cursor, q.key LIMIT :page_size

so a page boundary that falls among rows sharing one cursor value never skips or repeats a row: the
key breaks the tie. Each page is its own statement (its own snapshot), so rows committed while a long
read goes on are picked up when the read reaches them.

**Positions.** Every row is an :class:`SqlRow`: a :class:`SourceRow` whose ``seq`` counts 1, 2, 3… in
read order within one read, plus its ``position``, the ``(cursor, key)`` pair as JSON values
(``(None, key)`` without a cursor). Positions only increase within a read. The pipeline keeps a
:class:`~syncengine.ledger.watermark.Watermark` over seqs as usual, and stores as the stream's resume
point the position of the row at the watermark; the next read passes it back as ``since`` and starts
strictly after it.

**NULL cursors** sort lowest: rows whose cursor is NULL are read first (in key order), then the rest in
``(cursor, key)`` order, whatever the column's type. A resume point inside the NULL rows is
``(None, key)``. An incremental read past them never sees a row whose cursor is NULL, so a column
followed incrementally should be NOT NULL. Rows whose key is NULL are never read: a key is a primary key.

**Lag.** With ``lag_seconds`` and a ``since`` whose cursor is set, the rows whose cursor lies within lag
of it (``cursor >= since.cursor - lag``, up to and including ``since``) are read again first, with
``replay=True``, to catch transactions that committed late with an older cursor value. Such a row was
very likely synced already (skip-unchanged handles it); its position is at or before ``since``, so it
must not be stored as a resume point (it would move it back). Lag needs a cursor that is a date, a
timestamp (or ISO-8601 text of one) or a number of seconds; a text timestamp keeps its own shape
(separator, fraction digits, ``Z``), so text comparison stays right.

**Values** are JSON: text, integers, booleans, NULL as is; ``Decimal`` → ``str`` (exact: ``"12.50"``; a
field mapped as ``float`` converts it); a non-finite float → ``"NaN"``/``"Infinity"``/``"-Infinity"``
(JSON has none, and ``null`` would clear a field); ``datetime``/``date``/``time`` → ISO 8601
(``isoformat()``); ``UUID`` → ``str``; ``bytes`` → base64 text; an interval → seconds (float); JSON
columns → their JSON value; arrays → lists; anything else → ``str``. The key and the cursor must not
be binary (their base64 text would not compare as the column does).

Names in ``table``, ``key`` and ``cursor`` are quoted as written (so case-sensitive); ``table`` may be
qualified (``sales.contacts``). A ``key`` that is not unique is caught when two rows of one page share
a position (``SourceError``); it cannot always be caught across a page boundary, so name a real key.
"""

from __future__ import annotations

import base64
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from types import TracebackType
from typing import Final, Self, TypeAlias
from uuid import UUID

from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers.base import SourceRow

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "KeysetReader",
    "Position",
    "SqlRow",
    "SqlSpec",
    "minus_lag",
    "quote_name",
    "rows_as_dicts",
    "to_json",
]

DEFAULT_PAGE_SIZE: Final = 1_000

Position: TypeAlias = tuple[JSON, JSON]
"""Where a row sits in read order: ``(cursor value, key value)`` as JSON; ``(None, key)`` without a cursor."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SqlRow(SourceRow):
    """A row from an SQL source: a :class:`SourceRow` that also knows its place in the table."""

    position: Position
    replay: bool = False  # re-read inside the lag window, at or before ``since``: never store its position


@dataclass(frozen=True, slots=True, kw_only=True)
class SqlSpec:
    """What to read from a database, and how to page through it. Exactly one of ``table`` and ``query``."""

    key: str  # the unique tie-breaker column (the primary key)
    table: str | None = None  # a table or view, optionally schema-qualified
    query: str | None = None  # a SELECT; wrapped as ``SELECT * FROM (<query>) AS q``
    cursor: str | None = None  # the incremental column, e.g. updated_at
    lag_seconds: float = 0.0  # re-read this much before ``since`` (needs a cursor)
    page_size: int = DEFAULT_PAGE_SIZE

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError("an SqlSpec needs exactly one of table and query")
        for name, value in (("table", self.table), ("query", self.query), ("key", self.key)):
            if value is not None and not value.strip():
                raise ValueError(f"an SqlSpec's {name} must not be empty")
        if self.cursor is not None and (not self.cursor.strip() or self.cursor == self.key):
            raise ValueError("an SqlSpec's cursor must be a column other than the key")
        if self.page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {self.page_size}")
        if not math.isfinite(self.lag_seconds) or self.lag_seconds < 0:
            raise ValueError(f"lag_seconds must be a number >= 0, got {self.lag_seconds}")
        if self.lag_seconds and self.cursor is None:
            raise ValueError("lag_seconds needs a cursor column")

    @property
    def subject(self) -> str:
        """What is read, for messages: ``table 'contacts'`` or ``the query``."""
        return f"table {self.table!r}" if self.table is not None else "the query"

    @property
    def relation(self) -> str:
        """The SELECT that the pages are cut from, without a trailing semicolon."""
        if self.table is not None:
            return "SELECT * FROM " + ".".join(quote_name(part) for part in self.table.split("."))
        assert self.query is not None
        return self.query.strip().rstrip(";").rstrip()


def quote_name(name: str) -> str:
    """An SQL identifier, double-quoted as written (both SQLite and PostgreSQL read it so)."""
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------------
# Values


_NON_FINITE: Final = {math.inf: "Infinity", -math.inf: "-Infinity"}


def to_json(value: object) -> JSON:
    """A database value as JSON (the conversions are listed in the module docstring)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return str(value)


def minus_lag(value: JSON, lag: float, column: str) -> JSON:
    """``value - lag seconds`` for a cursor value: a number, or ISO-8601 text in the same shape.

    Rounded down (a wider window is safe: it only re-reads more). Raises ``ValueError`` when the value
    is neither.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value - math.ceil(lag)
    if isinstance(value, float):
        return value - lag
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 10:
            try:
                day = date.fromisoformat(text)
            except ValueError:
                pass
            else:
                return (day - timedelta(days=math.ceil(lag / 86_400))).isoformat()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return _iso_like(moment - timedelta(seconds=lag), text)
    raise ValueError(
        f"lag_seconds needs a cursor that is a date, a timestamp or a number; "
        f"column {column!r} holds {str(value)[:40]!r}"
    )


def _iso_like(moment: datetime, shape: str) -> str:
    """``moment`` written like ``shape``: same separator, fraction digits and ``Z``; truncated, never rounded up."""
    separator = shape[10] if len(shape) > 10 else "T"
    time_part = shape[11:]
    digits = 0
    if "." in time_part:
        fraction = time_part.split(".", 1)[1]
        digits = len(fraction) - len(fraction.lstrip("0123456789"))
    text = moment.isoformat(sep=separator, timespec="microseconds" if digits else "seconds")
    if digits:
        head, rest = text.split(".", 1)
        text = head + "." + rest[: min(digits, 6)] + rest[6:]
    if shape.endswith(("Z", "z")) and text.endswith("+00:00"):
        text = text[: -len("+00:00")] + shape[-1]
    return text


# --------------------------------------------------------------------------------------------------
# Keyset paging, shared by the SQLite and PostgreSQL readers


class _Phase(Enum):
    NULLS = "null"  # the rows whose cursor is NULL, in key order
    REPLAY = "replay"  # the lag window: cursor >= since.cursor - lag, up to and including since
    MAIN = "main"  # everything after: (cursor, key) order, or key order without a cursor
    DONE = "done"  # nothing left


class KeysetReader(ABC):
    """An async iterator of :class:`SqlRow`, fetched a page at a time; subclasses talk to the database.

    Each page becomes rows (seq, position) only once it has been fetched in full, so a fetch cut short
    by cancellation is simply done again by whoever reads on: nothing is skipped, nothing repeated.
    """

    def __init__(self, spec: SqlSpec, *, since: Position | None, source: str) -> None:
        self.spec = spec
        self.since = since
        self.source = source  # names the source in errors; never holds a secret
        self._buffer: deque[SqlRow] = deque()
        self._seq = 0
        self._opened = False
        self._closed = False
        self._after: Position | None = None  # the last position read in the current phase
        self._lower: JSON = None  # REPLAY's lower cursor bound
        self._phase = _Phase.MAIN
        if since is not None:
            if not (isinstance(since, tuple) and len(since) == 2):
                raise ValueError(f"since must be a (cursor, key) position, got {since!r}")
            if since[1] is None:
                raise ValueError("since must name a key")
            if spec.cursor is None and since[0] is not None:
                raise SourceError(
                    source,
                    f"the stored position has a cursor value, but {spec.subject} is read without a cursor "
                    "column: reading by key alone from it could skip rows",
                )

    # -- what a database must provide

    @abstractmethod
    async def _open(self) -> Sequence[str]:
        """Connect, and return the column names of ``spec.relation`` (without reading any row)."""

    @abstractmethod
    async def _fetch(self, sql: str, params: list[JSON]) -> list[dict[str, JSON]]:
        """Run one page's SELECT and return its rows as JSON values."""

    @abstractmethod
    def _placeholder(self, index: int, column: str) -> str:
        """The SQL for parameter ``index`` (1-based), compared with ``column``; bound to a JSON value."""

    @abstractmethod
    async def _close(self) -> None:
        """Release the connection, if ``_open`` got as far as making one; called once."""

    # -- the Reader protocol

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SqlRow:
        while not self._buffer:
            if self._closed or self._phase is _Phase.DONE:
                await self.aclose()
                raise StopAsyncIteration
            if not self._opened:
                self._check_columns(await self._open())
                self._opened = True
                self._start()
            await self._next_page()
        return self._buffer.popleft()

    async def aclose(self) -> None:
        self._buffer.clear()
        self._phase = _Phase.DONE
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- paging

    def _check_columns(self, columns: Sequence[str]) -> None:
        seen: set[str] = set()
        for name in columns:
            if name in seen:
                raise SourceError(
                    self.source, f"{self.spec.subject} returns two columns named {name!r}: give one an alias"
                )
            seen.add(name)
        roles: tuple[tuple[str, str | None], ...] = (("key", self.spec.key), ("cursor", self.spec.cursor))
        for role, wanted in roles:
            if wanted is not None and wanted not in seen:
                shown = ", ".join(columns) or "none"
                raise SourceError(
                    self.source, f"{role} column {wanted!r} is not in {self.spec.subject} (its columns: {shown})"
                )

    def _start(self) -> None:
        since, spec = self.since, self.spec
        if spec.cursor is None:
            self._phase, self._after = _Phase.MAIN, since
        elif since is None or since[0] is None:
            self._phase, self._after = _Phase.NULLS, since
        elif spec.lag_seconds:
            try:
                self._lower = minus_lag(since[0], spec.lag_seconds, spec.cursor)
            except ValueError as exc:
                raise SourceError(self.source, str(exc)) from None
            self._phase, self._after = _Phase.REPLAY, None
        else:
            self._phase, self._after = _Phase.MAIN, since

    async def _next_page(self) -> None:
        phase = self._phase
        sql, params = self._page_sql()
        rows = await self._fetch(sql, params)
        key, cursor = self.spec.key, self.spec.cursor
        last = self._after
        seq = self._seq
        page: list[SqlRow] = []
        for values in rows:
            position: Position = (None if cursor is None else values[cursor], values[key])
            if position == last:
                raise SourceError(
                    self.source,
                    f"key column {key!r} is not unique in {self.spec.subject}: two rows have the position "
                    f"{position!r}; name a unique column (the primary key) as key",
                )
            seq += 1
            page.append(SqlRow(seq=seq, values=values, position=position, replay=phase is _Phase.REPLAY))
            last = position
        # Only now, with the page complete, does the reader's state move on.
        self._buffer.extend(page)
        self._seq = seq
        self._after = last
        if len(rows) < self.spec.page_size:
            self._advance_phase()

    def _advance_phase(self) -> None:
        if self._phase is _Phase.NULLS:
            self._phase, self._after = _Phase.MAIN, None
        elif self._phase is _Phase.REPLAY:
            self._phase, self._after = _Phase.MAIN, self.since
        else:
            self._phase = _Phase.DONE

    def _page_sql(self) -> tuple[str, list[JSON]]:
        spec, after = self.spec, self._after
        params: list[JSON] = []

        def param(value: JSON, column: str) -> str:
            params.append(value)
            return self._placeholder(len(params), column)

        key = "q." + quote_name(spec.key)
        where = [f"{key} IS NOT NULL"]
        if spec.cursor is None:
            if after is not None:
                where.append(f"{key} > {param(after[1], spec.key)}")
            order = key
        else:
            cursor = "q." + quote_name(spec.cursor)
            if self._phase is _Phase.NULLS:
                where.append(f"{cursor} IS NULL")
                if after is not None:
                    where.append(f"{key} > {param(after[1], spec.key)}")
                order = key
            else:
                where.append(f"{cursor} IS NOT NULL")
                if self._phase is _Phase.REPLAY:
                    assert self.since is not None
                    where.append(f"{cursor} >= {param(self._lower, spec.cursor)}")
                    where.append(_row_compare(cursor, key, "<=", self.since, param, spec))
                if after is not None:
                    where.append(_row_compare(cursor, key, ">", after, param, spec))
                order = f"{cursor}, {key}"
        return (
            f"SELECT * FROM ({spec.relation}) AS q WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {spec.page_size}",
            params,
        )


def _row_compare(
    cursor: str, key: str, op: str, position: Position, param: Callable[[JSON, str], str], spec: SqlSpec
) -> str:
    assert spec.cursor is not None
    return f"({cursor}, {key}) {op} ({param(position[0], spec.cursor)}, {param(position[1], spec.key)})"


def rows_as_dicts(columns: Sequence[str], rows: Iterable[Iterable[object]]) -> list[dict[str, JSON]]:
    """Database rows (tuples of native values) as JSON dicts; plain values pass untouched (the hot path)."""
    plain = _PLAIN
    return [
        dict(zip(columns, [v if type(v) in plain else to_json(v) for v in row], strict=True))  # type: ignore[misc]
        for row in rows
    ]


_PLAIN: Final = frozenset({str, int, type(None)})  # already JSON: str, int and None pass as they are
