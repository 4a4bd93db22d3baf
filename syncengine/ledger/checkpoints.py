"""Per stream checkpoints, fed by the readers (``seen``) and the ledger writer (each committed batch).

The checkpoint of a stream (the highest seq with every seq at or below it terminal) is written in the same
ledger transaction as the outcomes that advance it, so a resumed run can skip the rows below it without
reading their outcomes back; a database stream's stored (cursor, key) position moves with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from syncengine.ledger.watermark import Watermark
from syncengine.model import JSON, Outcome

__all__ = ["Checkpoints"]


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
