"""What the ledger hands back: run summaries that add up, outcome rows as read, sets of seqs."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from syncengine.model import JSON, Operation, Status

__all__ = ["ErrorCount", "OutcomeRow", "RunState", "RunSummary", "SeqSet", "StreamCounts", "count_field"]


class RunState(StrEnum):
    """Where a run is; every state but RUNNING is written by ``finish_run``."""

    RUNNING = "running"  # started and not finished (or the process died: nothing finished it)
    COMPLETED = "completed"  # every stream was read to its end
    INTERRUPTED = "interrupted"  # stopped by the user (Ctrl-C, SIGTERM): resumable
    FAILED = "failed"  # stopped by an error of the engine itself (e.g. the ledger could not be written)
    HALTED = "halted"  # a stream was stopped by a request-level config error (INVALID_MODULE, ...)
    PAUSED = "paused"  # stopped early on purpose: the credit budget is reached or the credits look spent


# The status each count of a summary tallies; PENDING is not here: pending is derived (read - terminal).
_COUNTED: Final = {
    Status.SUCCESS: "succeeded",
    Status.REJECTED: "rejected",
    Status.FAILED: "failed",
    Status.INVALID: "invalid",
    Status.SKIPPED: "skipped",
}


def count_field(status: Status) -> str | None:
    """The ``StreamCounts`` field that tallies ``status`` (``None`` for PENDING, which is derived)."""
    return _COUNTED.get(status)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamCounts:
    """One stream's share of a run: what was read and where each change ended."""

    stream: str
    read: int
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0
    pending: int = 0

    @classmethod
    def tally(cls, stream: str, *, read: int, rows: Mapping[Status, int]) -> StreamCounts:
        """Counts from the ledger's rows per status and the number of changes read.

        A stream cannot have more changes with outcomes than changes read; when the caller's count is short
        (it never saw a finish, e.g. the process was killed) the rows are the better lower bound, so the
        identity still holds and nothing is hidden.
        """
        terminal = {name: rows.get(status, 0) for status, name in _COUNTED.items()}
        done = sum(terminal.values())
        effective = max(read, sum(rows.values()))
        return cls(stream=stream, read=effective, pending=effective - done, **terminal)

    @property
    def terminal(self) -> int:
        return self.succeeded + self.rejected + self.failed + self.invalid + self.skipped

    @property
    def errors(self) -> int:
        return self.rejected + self.failed + self.invalid

    @property
    def adds_up(self) -> bool:
        """Promise 1: read = succeeded + rejected + failed + invalid + skipped + pending."""
        return self.pending >= 0 and self.read == self.terminal + self.pending


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorCount:
    """One error code of a run, how often it happened, and one of its messages to show."""

    status: Status
    code: str | None
    count: int
    sample: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """One run as the ledger recorded it; the totals are the sums of ``per_stream``."""

    run_id: int
    state: RunState
    started_at: float  # epoch seconds
    finished_at: float | None
    config_file: str
    streams: tuple[str, ...]
    dry_run: bool
    retry_of: int | None
    read: int
    succeeded: int
    rejected: int
    failed: int
    invalid: int
    skipped: int
    pending: int
    per_stream: tuple[StreamCounts, ...]
    top_errors: tuple[ErrorCount, ...]  # most frequent first

    @classmethod
    def build(
        cls,
        *,
        run_id: int,
        state: RunState,
        started_at: float,
        finished_at: float | None,
        config_file: str,
        streams: Sequence[str],
        dry_run: bool,
        retry_of: int | None,
        per_stream: Sequence[StreamCounts],
        top_errors: Sequence[ErrorCount],
    ) -> RunSummary:
        """A summary whose totals are computed from the per-stream counts, so they cannot disagree."""
        return cls(
            run_id=run_id,
            state=state,
            started_at=started_at,
            finished_at=finished_at,
            config_file=config_file,
            streams=tuple(streams),
            dry_run=dry_run,
            retry_of=retry_of,
            read=sum(s.read for s in per_stream),
            succeeded=sum(s.succeeded for s in per_stream),
            rejected=sum(s.rejected for s in per_stream),
            failed=sum(s.failed for s in per_stream),
            invalid=sum(s.invalid for s in per_stream),
            skipped=sum(s.skipped for s in per_stream),
            pending=sum(s.pending for s in per_stream),
            per_stream=tuple(per_stream),
            top_errors=tuple(top_errors),
        )

    @property
    def terminal(self) -> int:
        return self.succeeded + self.rejected + self.failed + self.invalid + self.skipped

    @property
    def errors(self) -> int:
        return self.rejected + self.failed + self.invalid

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    @property
    def adds_up(self) -> bool:
        """Promise 1, for the run and for every stream of it."""
        return (
            self.pending >= 0 and self.read == self.terminal + self.pending and all(s.adds_up for s in self.per_stream)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRow:
    """One row of the ledger as read back: one change's outcome in one run."""

    run_id: int
    stream: str
    seq: int
    operation: Operation
    module: str
    related_list: str | None
    key: str
    parent: str | None
    status: Status
    code: str | None
    message: str | None
    details: Mapping[str, JSON] | None
    crm_id: str | None
    http_status: int | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    note: str | None
    source_row: Mapping[str, JSON] | None


class SeqSet:
    """An immutable set of sequence numbers stored as sorted, disjoint, inclusive ranges.

    Terminal seqs of a stream are nearly contiguous (gaps are the changes still to send), so a run of
    millions of rows costs a few ranges, not millions of ints; membership is a binary search.
    """

    __slots__ = ("_ends", "_size", "_starts")

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        """Build from seqs in ascending order (duplicates allowed), as the ledger's index yields them."""
        starts, ends = array("q"), array("q")
        size = 0
        for seq in seqs:
            if ends and seq <= ends[-1] + 1:
                if seq < ends[-1]:
                    raise ValueError(f"seqs must be ascending: {seq} after {ends[-1]}")
                if seq == ends[-1]:
                    continue
                ends[-1] = seq
            else:
                starts.append(seq)
                ends.append(seq)
            size += 1
        self._starts, self._ends, self._size = starts, ends, size

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield from range(start, end + 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]  # equal by value but not frozen enough to hash cheaply

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}-{e}" if s != e else str(s) for s, e in list(self.ranges())[:5])
        more = ", ..." if len(self._starts) > 5 else ""
        return f"SeqSet([{shown}{more}], len={self._size})"

    def ranges(self) -> Iterator[tuple[int, int]]:
        """The inclusive (first, last) ranges, ascending."""
        return zip(self._starts, self._ends, strict=True)

    def count_upto(self, seq: int) -> int:
        """How many members are <= ``seq``."""
        total = 0
        for start, end in zip(self._starts, self._ends, strict=True):
            if start > seq:
                break
            total += min(end, seq) - start + 1
        return total

    @property
    def max(self) -> int | None:
        return self._ends[-1] if self._ends else None
