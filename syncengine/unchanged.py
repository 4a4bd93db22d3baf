"""Skip-unchanged that never rolls a key back: which changes of a stream to send, to skip, or to hold.

The rule (README, "Skip unchanged"): a change is skipped only when sending it would leave the CRM as it is,
as far as the ledger knows, taking this pass's own earlier sends into account; an older row of a key is
never applied after a newer one, not even for a moment. The ledger keeps, per key, the *chain* of digests of
the changes the CRM holds, in source order, from the latest pass that applied or confirmed any
(``ledger/chains.py``). Then, per change ``c`` of key ``K``:

- nothing is known of ``K``, or this pass has already written ``K``: **send** (in source order, as read);
- ``K``'s chain was written by this pass and ends with ``c``: **skip** (a no-op);
- ``K``'s chain was written by an earlier pass: the CRM holds a newer state than any row of ``K`` read so far
  may be, so ``K``'s rows are **held** while they repeat the chain. When the whole chain is repeated, every
  held row is skipped (the rows after it, if any, are sent). When a row differs from the chain, or the pass
  ends first, the held rows and every later row of ``K`` in the pass are sent at the end of the pass **as one
  record** (merged, later wins): one write, of the state the export ends with.

With ``--full`` nothing is skipped, and a key written by an earlier pass is still written once, merged, at
the end of the pass (the CRM may hold a newer row of it than the first rows read).

A *pass* is one run, or one re-read of a source by ``watch`` (ended by each poll). Memory: rows are held only
for keys whose export differs from their history; past ``MAX_HELD`` held rows, the keys held longest are
sent at once, merged, and their later rows as they are read (source order still holds within the pass).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Protocol

from syncengine.ledger.chains import Chain
from syncengine.model import Change, Outcome, Status

__all__ = ["MAX_HELD", "Action", "Chains", "Passes", "SkipUnchanged"]

MAX_HELD: Final = 100_000  # changes held while their keys repeat a chain: the memory bound of the rule


class Chains(Protocol):
    """Where chains are kept: the ledger (``SqliteLedger.chains``)."""

    async def chains(self, stream: str, keys: Sequence[int]) -> dict[int, Chain]: ...


class Action(Enum):
    """What to do with the changes ``SkipUnchanged.decide`` returns."""

    SEND = "send"  # hand them to the batcher as one record
    SKIP = "skip"  # record them SKIPPED/UNCHANGED
    SUPERSEDED = "superseded"  # a re-drive's change whose key a later run wrote: record it SKIPPED/OVERTAKEN
    HOLD = "hold"  # nothing yet (the change is held)


@dataclass(slots=True)
class _Match:
    chain: tuple[int, ...]
    index: int  # the next chain entry to match; -1 once a row differed (held to the end of the pass)
    held: list[Change] = field(default_factory=list)


class Passes:
    """The pass each seq of a stream belongs to: ``run_id << 20 | n`` for the n-th re-read of a source."""

    def __init__(self, run_id: int) -> None:
        self._base = run_id << 20
        self._starts: dict[str, list[int]] = {}  # per stream: the first seq of each pass after the first

    def begin(self, stream: str, first_seq: int) -> None:
        self._starts.setdefault(stream, []).append(first_seq)

    def current(self, stream: str) -> int:
        return self._base + len(self._starts.get(stream, ()))

    def of(self, stream: str, seq: int) -> int:
        starts = self._starts.get(stream)
        return self._base + (bisect.bisect_right(starts, seq) if starts else 0)


class SkipUnchanged:
    """The decisions of one stream. Not thread-safe; one event loop."""

    def __init__(
        self,
        stream: str,
        passes: Passes,
        *,
        chains: Chains | None = None,
        full: bool = False,
        retry_of: int | None = None,
        max_held: int = MAX_HELD,
    ) -> None:
        self._stream = stream
        self._chains = chains  # where the chains are looked up (None: in a test, handed to ``decide``)
        # A re-drive of run N: a key whose chain a run after N wrote holds a newer row than N's failure.
        self._newer_than = None if retry_of is None else (retry_of + 1) << 20
        # --full: nothing is skipped, but the CRM may hold a newer row of a key than the rows read so far, so
        # a key written by an earlier pass still gets one merged write at the end of the pass.
        self._full = full
        self._passes = passes
        self._max_held = max_held
        self._matching: dict[int, _Match] = {}  # key digest -> its repeat of a chain, in progress
        self._held = 0
        self._live: dict[int, int] = {}  # key digest -> changes handed over whose outcome is not committed
        self._live_seqs: dict[int, int] = {}  # seq -> key digest, for those changes
        self._unsure: set[int] = set()  # keys with a FAILED send: it may have been applied; never skipped
        # Keys whose outcomes were committed since the last lookup began: a chain read before that commit
        # is stale for them, so they still count as live until the next lookup.
        self._recent: set[int] = set()

    @property
    def held(self) -> int:
        return self._held

    def begin_lookup(self) -> None:
        """Call right before reading the chains for the next changes to decide."""
        self._recent.clear()

    async def lookup(self, keys: Sequence[int]) -> dict[int, Chain]:
        """The chains of ``keys`` (key digests), read a chunk at a time, never per change."""
        self.begin_lookup()
        return await self._chains.chains(self._stream, keys) if self._chains is not None else {}

    def begin_pass(self, first_seq: int) -> None:
        """A followed source is read again from ``first_seq`` on: a new pass (see ``Passes``)."""
        self._passes.begin(self._stream, first_seq)

    def decide(self, change: Change, key: int, chain: Chain | None) -> tuple[Action, tuple[Change, ...]]:
        """The action for ``change`` (``key`` is its key digest, ``chain`` what the ledger holds for it)."""
        match = self._matching.get(key)
        if match is not None:
            return self._continue(key, match, change)
        if chain is None:
            return Action.SEND, (change,)  # nothing known: nothing to skip, nothing to roll back
        if key in self._live or key in self._unsure or key in self._recent:
            return self._send(key, (change,))
        written_by, digests = chain
        digest = change.digest()
        current = self._passes.current(self._stream)
        if self._newer_than is not None and self._newer_than <= written_by != current:
            return Action.SUPERSEDED, (change,)
        if written_by == current:  # this pass's own writes so far
            skip = digest == digests[-1] and not self._full
            return (Action.SKIP, (change,)) if skip else self._send(key, (change,))
        if digests == (digest,) and not self._full:
            return Action.SKIP, (change,)
        # Only a repeat from the history's first row can end early: a row that equals a later entry may be a
        # new row with old values, and then the rows after it are not newer than the CRM's.
        index = 1 if digest == digests[0] and not self._full else -1
        self._matching[key] = _Match(chain=digests, index=index, held=[change])
        self._held += 1
        return self._resolved(key) if index == len(digests) else (Action.HOLD, ())

    def _continue(self, key: int, match: _Match, change: Change) -> tuple[Action, tuple[Change, ...]]:
        match.held.append(change)
        self._held += 1
        if match.index < 0:
            return Action.HOLD, ()
        if change.digest() != match.chain[match.index]:
            match.index = -1  # the export departs from the history: one merged write at the end
            return Action.HOLD, ()
        match.index += 1
        return self._resolved(key) if match.index == len(match.chain) else (Action.HOLD, ())

    def _resolved(self, key: int) -> tuple[Action, tuple[Change, ...]]:
        """The held rows end where the history does: the CRM holds their state already."""
        match = self._matching.pop(key)
        self._held -= len(match.held)
        return Action.SKIP, tuple(match.held)

    def overflow(self) -> list[tuple[Change, ...]]:
        """Over the memory bound: the keys held longest are sent now, merged (see the module docstring)."""
        groups: list[tuple[Change, ...]] = []
        for key in list(self._matching):
            if self._held <= self._max_held // 2:
                break
            match = self._matching.pop(key)
            self._held -= len(match.held)
            groups.append(self._send(key, tuple(match.held))[1])
        return groups

    def finish(self) -> list[tuple[Change, ...]]:
        """The pass ended: each key still held is sent as one record (it departed, or stopped short)."""
        held = list(self._matching.items())
        self._matching.clear()
        self._held = 0
        return [self._send(key, tuple(match.held))[1] for key, match in held]

    def sent(self, key: int, group: Sequence[Change]) -> None:
        """``group`` is handed to the batcher outside ``decide`` (a resume's re-send): track it."""
        self._send(key, tuple(group))

    def _send(self, key: int, group: tuple[Change, ...]) -> tuple[Action, tuple[Change, ...]]:
        self._live[key] = self._live.get(key, 0) + len(group)
        for change in group:
            self._live_seqs[change.seq] = key
        return Action.SEND, group

    def committed(self, outcomes: Iterable[Outcome]) -> None:
        """Outcomes of this stream are in the ledger: their keys' chains there are current again."""
        if not self._live_seqs:
            return
        for outcome in outcomes:
            key = self._live_seqs.pop(outcome.change.seq, None)
            if key is None:
                continue
            if outcome.status is Status.FAILED:
                self._unsure.add(key)
            left = self._live[key] - 1
            if left:
                self._live[key] = left
            else:
                del self._live[key]
                self._recent.add(key)
