"""The contiguous terminal watermark of one stream: how far a checkpoint may safely advance (promise 4)."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["Watermark"]


class Watermark:
    """The highest seq ``S`` such that every seq ``<= S`` seen so far has a terminal outcome.

    Feed it ``seen(seq)`` as rows are read (ascending: a stream's seqs only increase) and ``done(seq)`` as
    outcomes are committed, in any order. Seqs that were never seen (a skipped header line, a blank line) do
    not hold it back.

    It keeps only the seqs seen and not yet done: the gaps, bounded by what the pipeline has in flight, not
    by the length of the stream. Each call is O(1) amortised: the outstanding seqs live in an insertion-
    ordered (hence ascending) ``OrderedDict``, whose first key and deletion are O(1), and each one remembers
    the seq seen just before it, which is the watermark while it is the oldest outstanding.
    """

    __slots__ = ("_early", "_last_seen", "_outstanding", "_start")

    def __init__(self, start: int | None = None) -> None:
        """``start``: the watermark before anything is seen (a resumed run's checkpoint), or ``None``."""
        self._start = start
        self._last_seen = start
        # outstanding seq -> the seq seen just before it (the watermark while it is the oldest outstanding)
        self._outstanding: OrderedDict[int, int | None] = OrderedDict()
        # done before seen: rare (the pipeline reports ``seen`` at read time), but must not be lost
        self._early: set[int] = set()

    def seen(self, seq: int) -> None:
        """A row with this seq was read; it holds the watermark back until it is ``done``."""
        if self._last_seen is not None and seq <= self._last_seen:
            raise ValueError(f"seqs must be seen in ascending order: {seq} after {self._last_seen}")
        if seq in self._early:
            self._early.discard(seq)
        else:
            self._outstanding[seq] = self._last_seen
        self._last_seen = seq

    def done(self, seq: int) -> None:
        """The change with this seq has a terminal outcome (committed). Repeats are harmless."""
        if self._outstanding.pop(seq, _MISSING) is _MISSING and (self._last_seen is None or seq > self._last_seen):
            self._early.add(seq)

    @property
    def value(self) -> int | None:
        """The watermark, or ``None`` if nothing is contiguous yet (and no ``start`` was given)."""
        for oldest in self._outstanding:  # O(1): only the first key is looked at
            return self._outstanding[oldest]
        return self._last_seen

    @property
    def outstanding(self) -> int:
        """How many seen seqs are not done yet: the memory it holds."""
        return len(self._outstanding)

    def __repr__(self) -> str:
        return f"Watermark(value={self.value}, outstanding={self.outstanding})"


_MISSING = object()
