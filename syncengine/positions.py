"""Where a run stands in its sources: fingerprints for a safe resume, checkpoints, and re-drive rows.

- A resumed run must read the same input, or source positions would point at other rows: each stream's
  source is fingerprinted when the run starts and checked when it resumes.
- The checkpoint of a stream (the highest seq with every seq at or below it terminal) is written in the
  same ledger transaction as the outcomes that advance it, so a resumed run can skip the rows below it
  without reading their outcomes back.
- A re-drive reads its rows from the ledger: the source row each failed change was made from.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path

from syncengine.config import SourceConfig
from syncengine.ledger import SqliteLedger, Watermark
from syncengine.model import JSON, Outcome, Status
from syncengine.readers import SourceRow

__all__ = ["Checkpoints", "fingerprint", "ledger_rows"]

_EDGE = 1 << 20  # bytes hashed at each end of a file


def fingerprint(source: SourceConfig) -> str:
    """Size and a hash of both ends of the file: cheap, and it changes when the export is rewritten."""
    path = Path(source.path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            digest.update(handle.read(_EDGE))
            if size > _EDGE:
                handle.seek(max(_EDGE, size - _EDGE))
                digest.update(handle.read(_EDGE))
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"
    return f"{source.kind}:{size}:{digest.hexdigest()[:32]}"


class Checkpoints:
    """Per stream watermarks, fed by the readers (``seen``) and the ledger writer (each committed batch)."""

    def __init__(self, starts: Mapping[str, int]) -> None:
        self._starts = dict(starts)
        self._marks: dict[str, Watermark] = {}
        self._written: dict[str, int] = {}
        # Database streams: seq -> (cursor, key) of rows read and not yet below the watermark.
        self._places: dict[str, dict[int, JSON]] = {}
        self._moved: dict[str, JSON] = {}

    def mark(self, stream: str) -> Watermark:
        mark = self._marks.get(stream)
        if mark is None:
            mark = self._marks[stream] = Watermark(self._starts.get(stream))
        return mark

    def seen(self, stream: str, seq: int, position: JSON = None) -> None:
        self.mark(stream).seen(seq)
        if position is not None:
            self._places.setdefault(stream, {})[seq] = position

    def __call__(self, batch: Sequence[Outcome]) -> dict[str, int]:
        """The batch is about to be committed: the checkpoints it moves, to commit with it."""
        touched: set[str] = set()
        for outcome in batch:
            self.mark(outcome.change.stream).done(outcome.change.seq)
            touched.add(outcome.change.stream)
        moved: dict[str, int] = {}
        for stream in touched:
            value = self._marks[stream].value
            if value is not None and value != self._written.get(stream):
                moved[stream] = self._written[stream] = value
                self._advance_position(stream, value)
        return moved

    def _advance_position(self, stream: str, watermark: int) -> None:
        # The stored position is that of the highest row at or below the watermark: every row up to it
        # is terminal. Rows re-read in the lag window carry no position and never move it back.
        places = self._places.get(stream)
        while places:
            seq = next(iter(places))
            if seq > watermark:
                break
            self._moved[stream] = places.pop(seq)

    def positions(self) -> dict[str, JSON]:
        """Database positions moved since the last call: committed with the batch that moved them."""
        moved, self._moved = self._moved, {}
        return moved


async def ledger_rows(
    ledger: SqliteLedger, run_id: int, stream: str, *, statuses: Collection[Status], codes: Collection[str] | None
) -> AsyncIterator[SourceRow]:
    """The source rows of a run's outcomes with these statuses (and codes), in seq order: a re-drive's input."""
    async for row in ledger.outcomes(run_id, statuses=statuses, codes=codes, stream=stream):
        values = dict(row.source_row) if isinstance(row.source_row, Mapping) else {}
        yield SourceRow(seq=row.seq, values=values)
