"""What every reader yields, the Reader protocol, and the machinery the file readers share.

A file reader parses in a worker thread, about a thousand rows at a time, so the event loop stays free
and memory stays flat however large the file is. The parsing itself is a plain generator
(:meth:`ChunkedFileReader._parse`) that each kind of source writes; this module only moves its output
across threads and owns the open file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self, runtime_checkable

import anyio.to_thread

from syncengine.errors import SourceError
from syncengine.model import JSON

__all__ = ["CHUNK_ROWS", "IDLE", "BadRow", "ChunkedFileReader", "Idle", "Reader", "Row", "SourceRow"]

CHUNK_ROWS = 1_000  # rows parsed per trip to the worker thread: big enough to amortise the trip


class Idle(Enum):
    """A followed source yields ``IDLE`` before it waits for more rows: what is held goes out then."""

    IDLE = "idle"


IDLE = Idle.IDLE


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRow:
    """One row as read. A key missing from ``values`` is absent (not sent); ``None`` is an explicit null."""

    seq: int  # 1-based data-row number (CSV: header not counted; JSONL: line number)
    values: dict[str, JSON]
    raw: str | None = None  # the readers leave it out: ``values`` already holds the whole row


@dataclass(frozen=True, slots=True, kw_only=True)
class BadRow:
    """A row that could not be read; it still gets an outcome, so it never vanishes."""

    seq: int
    raw: str  # the row's text (undecodable bytes shown as U+FFFD)
    reason: str


Row = SourceRow | BadRow


@runtime_checkable
class Reader(Protocol):
    """An async iterator of rows in source order that owns an open source; close it with ``aclose``."""

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> Row: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ChunkedFileReader(ABC):
    """A file read lazily: opened on first use, parsed in chunks in a worker thread, closed by ``aclose``.

    Rows with ``seq <= start_after`` are skipped inside the parser, cheaply (no values are built), so a
    resumed run starts where the last one left off.
    """

    def __init__(self, path: Path, *, start_after: int = 0) -> None:
        self.path = path
        self.start_after = start_after
        self._file: BinaryIO | None = None
        self._rows: Generator[Row, None, None] | None = None
        self._buffer: deque[Row] = deque()
        self._done = False

    @abstractmethod
    def _parse(self, file: BinaryIO) -> Generator[Row, None, None]:
        """Yield the file's rows in order, skipping those with ``seq <= self.start_after``."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Row:
        if not self._buffer:
            if self._done:
                raise StopAsyncIteration
            await anyio.to_thread.run_sync(self._fill)
            if not self._buffer:
                self._done = True
                await self.aclose()
                raise StopAsyncIteration
        return self._buffer.popleft()

    def _fill(self) -> None:
        """Runs in a worker thread: open the file if needed, then parse the next chunk into the buffer.

        The thread fills the buffer itself, so a chunk parsed while the awaiting task was being
        cancelled is still there for whoever reads on: no row vanishes.
        """
        if self._rows is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by aclose
            except OSError as exc:
                raise SourceError(str(self.path), f"cannot open: {exc.strerror or exc}") from exc
            self._rows = self._parse(self._file)
        try:
            self._buffer.extend(islice(self._rows, CHUNK_ROWS))
        except OSError as exc:
            raise SourceError(str(self.path), f"cannot read: {exc.strerror or exc}") from exc

    async def aclose(self) -> None:
        self._done = True
        self._buffer.clear()
        rows, file = self._rows, self._file
        self._rows = self._file = None
        if rows is not None:
            rows.close()  # a generator: runs its cleanup now rather than at garbage collection
        if file is not None:
            file.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
