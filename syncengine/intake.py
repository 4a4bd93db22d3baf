"""The reading stage of one stream: rows -> changes -> the batcher.

Per row: skip what a resumed run already finished, map the row (bad rows become INVALID outcomes at
once), hold deletes to the stream's ``max_deletes``, and skip changes the CRM already holds (``SKIPPED``,
code ``UNCHANGED``: no call, no credit; the rule is in ``unchanged.py``). Chains of digests are looked up a
chunk of changes at a time, off the event loop, never per row. In a resumed run, the changes a call of the
killed process carried (``plan.InDoubt``) are re-sent first thing, each group merged as it was then.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher
from syncengine.config import StreamConfig
from syncengine.control import RunStops
from syncengine.crm.requests import max_items
from syncengine.errors import SourceError
from syncengine.ledger.chains import Chain
from syncengine.ledger.checkpoints import Checkpoints
from syncengine.ledger.writer import send_all
from syncengine.mapping import to_change
from syncengine.model import JSON, Change, Operation, Outcome
from syncengine.plan import StreamPlan
from syncengine.progress import RunProgress
from syncengine.readers import IDLE, BadRow, Row, SourceRow, SqlRow
from syncengine.unchanged import MAX_HELD, Action, SkipUnchanged

__all__ = [
    "CHUNK",
    "Intake",
]

CHUNK = 256  # changes per digest lookup


@dataclass(frozen=True, slots=True, kw_only=True)
class _Halt:
    code: str
    message: str


class Intake:
    """Feeds one stream's rows to the batcher. ``run`` returns when the rows end or the stream stops."""

    def __init__(
        self,
        stream: StreamConfig,
        plan: StreamPlan,
        *,
        batcher: Batcher,
        outcomes: MemoryObjectSendStream[Outcome],
        progress: RunProgress,
        checkpoints: Checkpoints,
        stops: RunStops,
        unchanged: SkipUnchanged | None,
    ) -> None:
        self._stream = stream
        self._batcher = batcher
        self._outcomes = outcomes
        self._progress = progress
        self._checkpoints = checkpoints
        self._stops = stops
        self._skip = plan.skip
        self._unchanged = unchanged  # None: no ledger to compare with (a dry run without one)
        self._in_doubt = plan.in_doubt if plan.in_doubt else None
        self._superseded = plan.superseded or None  # a re-drive: failed seqs a later change overtook
        self._doubt_held: dict[tuple[int, ...], list[Change]] = {}  # an in-doubt group, until it is complete
        self._per_call = max_items(stream.target, stream.batch_size)
        self._deletes = 0
        self._chunk: list[Change] = []
        self._new_pass = False

    async def run(self, rows: AsyncIterator[Row | object]) -> None:
        name = self._stream.name
        try:
            async with self._outcomes:
                async for row in rows:
                    if row is IDLE:  # a followed source waits for more: what is held goes out now
                        if not await self._end_pass():
                            return
                        continue
                    assert isinstance(row, SourceRow | BadRow)
                    if self._skip is not None and row.seq in self._skip:
                        self._progress.read[name] += 1  # resumed: it already has its outcome in this run
                        continue
                    if self._new_pass and self._unchanged is not None:
                        self._unchanged.begin_pass(row.seq)
                        self._new_pass = False
                    self._progress.on_read(name)
                    position = list(row.position) if isinstance(row, SqlRow) and not row.replay else None
                    self._checkpoints.seen(name, row.seq, position)
                    result = to_change(self._stream, row)
                    if isinstance(result, Outcome):
                        await self._outcomes.send(result)
                        continue
                    self._chunk.append(result)
                    if len(self._chunk) >= CHUNK and not await self._flush():
                        return
                await self._end_pass()
        except SourceError as exc:
            self._stops.source_failed(name, exc)
        finally:
            self._batcher.close_input()
            aclose = getattr(rows, "aclose", None)
            if aclose is not None:  # a stream stopped early must still close its file or cursor
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def _end_pass(self) -> bool:
        """The rows end (for now): flush, then send what is still held; False when the stream must stop."""
        if not await self._flush():
            return False
        held = [tuple(group) for group in self._doubt_held.values()]  # members never read again: send the rest
        self._doubt_held.clear()
        if self._unchanged is not None:
            held += self._unchanged.finish()
        for group in held:
            if not await self._hand_over(group, ()):
                return False
        self._new_pass = True
        return True

    async def _flush(self) -> bool:
        """Send the chunk on; False when the stream must stop reading (halted, or the run stopping)."""
        chunk, self._chunk = self._chunk, []
        if not chunk:
            return True
        keys: list[int] = []
        chains: dict[int, Chain] = {}
        unchanged = self._unchanged
        if unchanged is not None:
            keys = [c.key_digest() for c in chunk]
            chains = await unchanged.lookup(keys)
        skipped: list[Outcome] = []
        now = time.time()
        for index, change in enumerate(chunk):
            if index % 32 == 31:
                await anyio.lowlevel.checkpoint()  # let responses in between: a chunk is ~1 ms of work
            action, group = self._decide(change, keys[index] if keys else None, chains)
            if action is Action.SKIP:
                skipped.extend(_unchanged(c, now) for c in group)
            elif action is Action.SUPERSEDED:
                skipped.extend(_overtaken(c, now) for c in group)
            elif action is Action.SEND:
                await send_all(self._outcomes, skipped)
                skipped = []
                if not await self._hand_over(group, chunk[index + 1 :]):
                    return False
        await send_all(self._outcomes, skipped)
        if unchanged is not None and unchanged.held > MAX_HELD:
            for group in unchanged.overflow():
                if not await self._hand_over(group, ()):
                    return False
        return True

    def _decide(self, change: Change, key: int | None, chains: dict[int, Chain]) -> tuple[Action, tuple[Change, ...]]:
        """What to do with one change: a re-drive's overtaken change, a resume's in-doubt group, or the rule."""
        if self._superseded is not None and change.seq in self._superseded:
            return self._overtaken(change, self._superseded[change.seq])
        doubt = self._in_doubt.groups.get(change.seq) if self._in_doubt is not None else None
        if doubt is not None:
            return self._in_doubt_group(doubt, change, key)
        if self._unchanged is not None and key is not None:
            return self._unchanged.decide(change, key, chains.get(key))
        return Action.SEND, (change,)

    def _overtaken(self, change: Change, later: list[JSON]) -> tuple[Action, tuple[Change, ...]]:
        """A re-drive's failed change whose key later changes of its run were applied after: only the fields
        none of them set are sent again, merged with theirs, so the CRM never goes back to an older row."""
        fields: dict[str, JSON] = dict(change.fields)
        newer: set[str] = set()
        for values in later:
            mapped = to_change(
                self._stream, SourceRow(seq=change.seq, values=values if isinstance(values, dict) else {})
            )
            if isinstance(mapped, Change):
                if mapped.target.operation is Operation.DELETE_RELATED:
                    return Action.SUPERSEDED, (change,)  # a later delink erased what the change would write
                fields.update(mapped.fields)
                newer.update(mapped.fields)
        if set(change.fields) <= newer or change.target.operation is Operation.DELETE_RELATED:
            return Action.SUPERSEDED, (change,)
        return Action.SEND, (replace(change, fields=fields),)

    def _in_doubt_group(
        self, group: tuple[int, ...], change: Change, key: int | None
    ) -> tuple[Action, tuple[Change, ...]]:
        """A change a call of the killed process carried: re-sent as then, merged with the same changes."""
        held = self._doubt_held.setdefault(group, [])
        held.append(change)
        if len(held) < len(group):
            return Action.HOLD, ()
        del self._doubt_held[group]
        if self._unchanged is not None and key is not None:
            self._unchanged.sent(key, held)
        return Action.SEND, tuple(held)

    async def _hand_over(self, group: tuple[Change, ...], rest: Sequence[Change]) -> bool:
        """Give one record's changes to the batcher; when it takes none, settle ``rest`` too and say stop."""
        halt = None
        for change in group:
            halt = halt or self._over_delete_limit(change)
        if halt is None and await self._batcher.put_group(group, max_items=self._per_call, linger=self._stream.linger):
            return True
        if self._batcher.stopped and halt is None:
            return False  # the run is stopping: the rest stays pending, for a resume
        code, message = (
            (halt.code, halt.message)
            if halt
            else ("STREAM_HALTED", "not sent: the stream was halted by an earlier error")
        )
        held = [c for g in self._doubt_held.values() for c in g]
        self._doubt_held.clear()
        if self._unchanged is not None:
            held += [c for g in self._unchanged.finish() for c in g]
        await send_all(self._outcomes, [Outcome.failed(c, code=code, message=message) for c in (*group, *rest, *held)])
        if halt is not None:
            await self._stops.halt(self._stream.name, halt.code, halt.message)
        return False

    def _over_delete_limit(self, change: Change) -> _Halt | None:
        limit = self._stream.max_deletes
        if limit is None or change.target.operation is not Operation.DELETE_RELATED:
            return None
        self._deletes += 1
        if self._deletes <= limit:
            return None
        return _Halt(
            code="MAX_DELETES_EXCEEDED",
            message=f"the source asks for more than max_deletes = {limit} deletes in one run: the stream is "
            "stopped before sending more; check the source, then raise max_deletes if it is right",
        )


def _overtaken(change: Change, now: float) -> Outcome:
    message = "not sent again: a later change of this key was applied after it failed"
    return Outcome.skipped(change, code="OVERTAKEN", message=message, now=now)


def _unchanged(change: Change, now: float) -> Outcome:
    return Outcome.skipped(change, code="UNCHANGED", message="the CRM already holds this change: not sent", now=now)
