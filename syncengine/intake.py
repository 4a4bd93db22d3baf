"""The reading stage of one stream: rows -> changes -> the batcher.

Per row: skip what a resumed run already finished, map the row (bad rows become INVALID outcomes at
once), hold deletes to the stream's ``max_deletes``, and skip changes identical to the last one that
succeeded for their key (``SKIPPED``, code ``UNCHANGED``: no call, no credit). Digests are looked up a
chunk of changes at a time, off the event loop, never per row.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher
from syncengine.config import StreamConfig
from syncengine.crm.requests import max_items
from syncengine.errors import SourceError
from syncengine.ledger import SeqSet, SqliteLedger
from syncengine.mapping import to_change
from syncengine.model import Change, Operation, Outcome, Status
from syncengine.positions import Checkpoints
from syncengine.progress import RunProgress
from syncengine.readers import BadRow, Row, SourceRow, SqlRow
from syncengine.workers import failed_outcome, send_all

__all__ = ["IDLE", "Intake"]

CHUNK = 256  # changes per digest lookup

# A source that follows a table yields IDLE before it waits for new rows: a partial chunk goes out then.
IDLE = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Halt:
    code: str
    message: str


class Intake:
    """Feeds one stream's rows to the batcher. ``run`` returns when the rows end or the stream stops."""

    def __init__(
        self,
        stream: StreamConfig,
        *,
        batcher: Batcher,
        outcomes: MemoryObjectSendStream[Outcome],
        progress: RunProgress,
        checkpoints: Checkpoints,
        skip: SeqSet | None,
        digests: SqliteLedger | None,
        halt: Callable[[str, str, str], Awaitable[None]],
        on_source_error: Callable[[str, SourceError], None],
    ) -> None:
        self._stream = stream
        self._batcher = batcher
        self._outcomes = outcomes
        self._progress = progress
        self._checkpoints = checkpoints
        self._skip = skip
        self._digests = digests  # None: send everything (--full, or a dry run without a ledger)
        self._halt = halt
        self._on_source_error = on_source_error
        self._per_call = max_items(stream.target, stream.batch_size)
        self._deletes = 0
        self._chunk: list[Change] = []

    async def run(self, rows: AsyncIterator[Row | object]) -> None:
        name = self._stream.name
        try:
            async with self._outcomes:
                async for row in rows:
                    if row is IDLE:
                        if not await self._flush():
                            return
                        continue
                    assert isinstance(row, SourceRow | BadRow)
                    if self._skip is not None and row.seq in self._skip:
                        self._progress.read[name] += 1  # resumed: it already has its outcome in this run
                        continue
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
                await self._flush()
        except SourceError as exc:
            self._on_source_error(name, exc)
        finally:
            self._batcher.close_input()
            aclose = getattr(rows, "aclose", None)
            if aclose is not None:  # a stream stopped early must still close its file or cursor
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def _flush(self) -> bool:
        """Send the chunk on; False when the stream must stop reading (halted, or the run stopping)."""
        chunk, self._chunk = self._chunk, []
        if not chunk:
            return True
        known: dict[int, int] = {}
        keys: list[int] = []
        if self._digests is not None:
            keys = [c.key_digest() for c in chunk]
            known = await self._digests.digests(self._stream.name, keys)
        skipped: list[Outcome] = []
        now = time.time()
        for index, change in enumerate(chunk):
            if index % 32 == 31:
                await anyio.lowlevel.checkpoint()  # let responses in between: a chunk is ~1 ms of work
            if known and known.get(keys[index]) == change.digest():
                skipped.append(
                    Outcome(
                        change=change,
                        status=Status.SKIPPED,
                        code="UNCHANGED",
                        message="same as the last change that succeeded: not sent",
                        started_at=now,
                        finished_at=now,
                    )
                )
                continue
            halt = self._over_delete_limit(change)
            if halt is None and await self._batcher.put(change, max_items=self._per_call, linger=self._stream.linger):
                continue
            await send_all(self._outcomes, skipped)
            if self._batcher.stopped and halt is None:
                return False  # the run is stopping: the rest of the chunk stays pending, for a resume
            code, message = (
                (halt.code, halt.message)
                if halt
                else ("STREAM_HALTED", "not sent: the stream was halted by an earlier error")
            )
            await send_all(self._outcomes, [failed_outcome(c, code=code, message=message) for c in chunk[index:]])
            if halt is not None:
                await self._halt(self._stream.name, halt.code, halt.message)
            return False
        await send_all(self._outcomes, skipped)
        return True

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
