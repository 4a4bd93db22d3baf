"""The single ledger writer: batches by size and by time, flushes at the end, and keeps what it holds when cancelled."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from syncengine.ledger import LedgerWriter, SqliteLedger
from syncengine.model import Outcome, Status

from .builders import outcome


def stream(size: int) -> tuple[MemoryObjectSendStream[Outcome], MemoryObjectReceiveStream[Outcome]]:
    return anyio.create_memory_object_stream[Outcome](size)


async def test_full_batches_flush_at_batch_size_and_the_rest_at_the_end(tmp_path: Path) -> None:
    """1,200 outcomes waiting in the stream are committed as 500 + 500 + 200, in order, each then reported."""
    flushed: list[list[int]] = []
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        send, receive = stream(2000)
        async with send:
            for i in range(1200):
                send.send_nowait(outcome(i))
        writer = LedgerWriter(
            ledger,
            run_id,
            batch_size=500,
            max_delay=60,
            on_flush=lambda batch: flushed.append([o.change.seq for o in batch]),
        )
        await writer.run(receive)
        seqs = await ledger.terminal_seqs(run_id, "contacts")
    assert [len(b) for b in flushed] == [500, 500, 200]
    assert [s for b in flushed for s in b] == list(range(1200))
    assert list(seqs.ranges()) == [(0, 1199)] and (writer.written, writer.flushes) == (1200, 3)


async def test_a_partial_batch_is_flushed_after_max_delay(tmp_path: Path) -> None:
    """With the stream still open, three outcomes are committed once max_delay has passed since the first."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        send, receive = stream(10)
        flushed = anyio.Event()
        sizes: list[int] = []

        def on_flush(batch: Sequence[Outcome]) -> None:
            sizes.append(len(batch))
            flushed.set()

        writer = LedgerWriter(ledger, run_id, batch_size=500, max_delay=0.05, on_flush=on_flush)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                started = time.monotonic()
                for i in range(3):
                    await send.send(outcome(i))
                with anyio.fail_after(5):
                    await flushed.wait()  # the stream is still open: only the deadline can have flushed
                waited = time.monotonic() - started
                assert len(await ledger.terminal_seqs(run_id, "contacts")) == 3
    assert sizes == [3] and waited >= 0.04


async def test_an_empty_stream_writes_nothing(tmp_path: Path) -> None:
    """A stream closed without outcomes ends the writer without a transaction."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        send, receive = stream(1)
        await send.aclose()
        writer = LedgerWriter(ledger, run_id)
        await writer.run(receive)
    assert (writer.written, writer.flushes) == (0, 0)


async def test_cancelling_the_task_group_still_commits_everything_handed_over(tmp_path: Path) -> None:
    """Ctrl-C while the writer holds a batch and more waits in the stream: all of it is committed."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        send, receive = stream(5000)
        for i in range(1700):
            send.send_nowait(outcome(i))
        writer = LedgerWriter(ledger, run_id, batch_size=500, max_delay=60)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            await anyio.wait_all_tasks_blocked()  # the writer is inside its first flush
            for i in range(1700, 1750):
                send.send_nowait(outcome(i))
            tg.cancel_scope.cancel()
        send.close()  # the test's end of the stream: the writer closes only its own
        seqs = await ledger.terminal_seqs(run_id, "contacts")
    assert list(seqs.ranges()) == [(0, 1749)] and writer.written == 1750


async def test_a_failing_stage_cancels_the_writer_and_its_batch_is_kept(tmp_path: Path) -> None:
    """A sibling task raising mid-run cancels the writer; what it held is committed before the error surfaces."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        send, receive = stream(100)

        async def producer() -> None:
            for i in range(1234):
                await send.send(outcome(i, Status.REJECTED if i % 3 else Status.SUCCESS))
            raise RuntimeError("a stage failed")

        writer = LedgerWriter(ledger, run_id, batch_size=500, max_delay=60)
        with send, pytest.raises(ExceptionGroup) as caught:  # send is closed after the writer stopped
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run, receive)
                tg.start_soon(producer)
        summary = await ledger.finish_run(run_id, state="failed", read={"contacts": 1300})
    assert caught.group_contains(RuntimeError, match="a stage failed")
    assert (summary.succeeded + summary.rejected, summary.pending, summary.adds_up) == (1234, 66, True)


async def test_a_ledger_error_stops_the_writer_and_closes_its_stream(tmp_path: Path) -> None:
    """When a commit fails the writer raises LedgerError and senders see the stream broken, not a hang."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        send, receive = stream(10)
        writer = LedgerWriter(ledger, 404, batch_size=2, max_delay=60)  # no run 404: every append fails
        with send, pytest.raises(ExceptionGroup) as caught:  # send is closed after the writer stopped
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run, receive)
                with pytest.raises(anyio.BrokenResourceError):
                    for i in range(100):
                        await send.send(outcome(i))
    assert caught.group_contains(Exception, match="no run 404")


@pytest.mark.slow
async def test_append_rate_through_the_writer(tmp_path: Path) -> None:
    """200,000 outcomes through the writer all land, once each; the rate is printed (benchmarks assert it)."""
    total = 200_000
    outcomes = [
        outcome(
            i,
            Status.SUCCESS if i % 10 else Status.REJECTED,
            crm_id=str(10**18 + i),
            http_status=200,
            attempts=1,
            started_at=1.0,
            finished_at=1.5,
            message="record updated",
        )
        for i in range(total)
    ]
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        send, receive = stream(2000)
        writer = LedgerWriter(ledger, run_id)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                for o in outcomes:
                    await send.send(o)
        elapsed = time.perf_counter() - started
        summary = await ledger.finish_run(run_id, state="completed", read={"contacts": total})
    print(
        f"\nledger append rate through LedgerWriter: {total / elapsed:,.0f} outcomes/s ({writer.flushes} transactions)"
    )
    assert (summary.succeeded, summary.rejected, summary.pending, summary.adds_up) == (180_000, 20_000, 0, True)
