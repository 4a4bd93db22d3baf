"""The single ledger writer: drains the outcome stream and commits it in batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from syncengine.ledger.sqlite import SqliteLedger
from syncengine.model import JSON, Outcome

__all__ = ["LedgerWriter", "send_all"]


class LedgerWriter:
    """The one task that writes outcomes: a batch is committed when it holds ``batch_size`` outcomes, or
    ``max_delay`` seconds after its first outcome arrived, whichever comes first. The default delay is none:
    a batch is whatever waits when the last commit ends, so under load batches grow by themselves, and an
    outcome is durable within one commit of its answer (a killed process re-sends little).

    ``on_flush`` is called with each batch after it is committed, so counters shown to the user only move
    once what they count is durable. When the stream ends the last batch is flushed; when the writer is
    cancelled (Ctrl-C, a failing stage) the flush of what it holds, and of what is already buffered in the
    stream, is shielded from the cancellation, so every outcome handed over is kept.
    """

    def __init__(
        self,
        ledger: SqliteLedger,
        run_id: int,
        *,
        batch_size: int = 500,
        max_delay: float = 0.0,
        on_flush: Callable[[Sequence[Outcome]], None] | None = None,
        checkpoints: Callable[[Sequence[Outcome]], Mapping[str, int] | None] | None = None,
        credits: Callable[[], int] | None = None,
        remember: bool = True,
        positions: Callable[[], Mapping[str, JSON]] | None = None,
        passes: Callable[[str, int], int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self._ledger = ledger
        self._run_id = run_id
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._on_flush = on_flush
        # Called with each batch just before it is committed: the source positions the batch completes,
        # written in the same transaction so a checkpoint never covers an outcome that was not kept.
        self._checkpoints = checkpoints
        self._credits = credits  # credits spent since the last call: recorded with the batch
        self._remember = remember  # record SUCCESS digests for skip-unchanged
        self._positions = positions  # database streams' positions moved by the batch (after checkpoints)
        self._passes = passes  # (stream, seq) -> the pass a change was read in, for skip-unchanged's chains
        self.written = 0  # outcomes committed so far
        self.flushes = 0  # transactions committed so far

    async def run(self, receive: MemoryObjectReceiveStream[Outcome]) -> None:
        """Until the stream ends: receive, batch, commit. Closes ``receive`` when done."""
        batch: list[Outcome] = []
        async with receive:
            try:
                while await self._fill(receive, batch):
                    await self._flush(batch)
                    batch = []
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._drain(receive, batch)
                raise
            # End of stream: what is left is the last, partial batch.
            await self._flush(batch)

    async def _fill(self, receive: MemoryObjectReceiveStream[Outcome], batch: list[Outcome]) -> bool:
        """Fill ``batch`` up to the size or the deadline; False once the stream has ended."""
        try:
            batch.append(await receive.receive())  # no deadline until the batch has its first outcome
        except anyio.EndOfStream:
            return False
        deadline = anyio.current_time() + self._max_delay
        while len(batch) < self._batch_size:
            try:
                # Under load the stream's buffer holds the next outcomes already: take them without a wait.
                batch.append(receive.receive_nowait())
                continue
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                return True  # flush this one; the next fill sees the end again
            with anyio.move_on_after(deadline - anyio.current_time()):
                try:
                    batch.append(await receive.receive())
                except anyio.EndOfStream:
                    return True
                continue
            break  # the deadline passed
        return True

    async def _drain(self, receive: MemoryObjectReceiveStream[Outcome], batch: list[Outcome]) -> None:
        """Cancelled: commit what is held and what is already in the stream's buffer, in full batches."""
        while True:
            while len(batch) < self._batch_size:
                try:
                    batch.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    await self._flush(batch)
                    return
            await self._flush(batch)
            batch = []

    async def _flush(self, batch: list[Outcome]) -> None:
        if not batch:
            return
        positions = self._checkpoints(batch) if self._checkpoints is not None else None
        spent = self._credits() if self._credits is not None else 0
        moved = self._positions() if self._positions is not None else None
        await self._ledger.append(
            self._run_id,
            batch,
            positions or None,
            credits=spent,
            remember=self._remember,
            positions=moved or None,
            passes=self._passes,
        )
        self.written += len(batch)
        self.flushes += 1
        if self._on_flush is not None:
            self._on_flush(batch)


async def send_all(stream: MemoryObjectSendStream[Outcome], outcomes: Sequence[Outcome]) -> None:
    """Hand outcomes to the ledger writer without a scheduling point per outcome while there is room."""
    for outcome in outcomes:
        try:
            stream.send_nowait(outcome)
        except anyio.WouldBlock:
            await stream.send(outcome)
