"""The SQLite ledger: what goes in comes back, one row per change per run, and summaries that add up."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from syncengine.errors import LedgerError
from syncengine.ledger import SCHEMA_VERSION, OutcomeRow, RunState, SeqSet, SqliteLedger, open_ledger
from syncengine.model import JSON, Change, Operation, Outcome, Status

from .builders import LINK, UPDATE, outcome


async def rows_of(ledger: SqliteLedger, run_id: int, **filters: object) -> list[OutcomeRow]:
    return [row async for row in ledger.outcomes(run_id, **filters)]  # type: ignore[arg-type]


async def test_every_column_round_trips(tmp_path: Path) -> None:
    """Each field of an Outcome and its Change comes back from the ledger as it was written."""
    source: dict[str, JSON] = {"deal": "D1", "contact": "C1", "amount": 12.5, "tags": ["a", "b"], "empty": None, "n": 3}
    written = Outcome(
        change=Change(
            stream="links", seq=42, target=LINK, key="D1", parent="C1", fields={"Role": "Buyer"}, source_row=source
        ),
        status=Status.REJECTED,
        code="INVALID_DATA",
        message="invalid data",
        details={"api_name": "Role", "n": [1]},
        crm_id="5725767000000524001",
        http_status=400,
        attempts=3,
        started_at=1700000000.25,
        finished_at=1700000001.5,
        note="ambiguous retry",
    )
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="sync.toml", streams=["links"])
        await ledger.append(run_id, [written])
        [row] = await rows_of(ledger, run_id)
    assert row == OutcomeRow(
        run_id=run_id,
        stream="links",
        seq=42,
        operation=Operation.UPDATE_RELATED,
        module="Contacts",
        related_list="Deals",
        key="D1",
        parent="C1",
        status=Status.REJECTED,
        code="INVALID_DATA",
        message="invalid data",
        details={"api_name": "Role", "n": [1]},
        crm_id="5725767000000524001",
        http_status=400,
        attempts=3,
        started_at=1700000000.25,
        finished_at=1700000001.5,
        note="ambiguous retry",
        source_row=source,
    )


async def test_optional_columns_round_trip_as_none(tmp_path: Path) -> None:
    """An outcome with nothing optional set comes back with NULLs, not empty strings."""
    bare = Outcome(change=Change(stream="s", seq=1, target=UPDATE, key="k"), status=Status.SKIPPED)
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["s"])
        await ledger.append(run_id, [bare])
        [row] = await rows_of(ledger, run_id)
    assert (row.code, row.message, row.details, row.crm_id, row.http_status, row.source_row, row.parent) == (
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )
    assert row.attempts == 0 and row.status is Status.SKIPPED


async def test_reappend_keeps_one_row_per_change(tmp_path: Path) -> None:
    """A change written twice in one run keeps one row, the latest: FAILED then SUCCESS counts once."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        await ledger.append(run_id, [outcome(1, Status.FAILED, code="TIMEOUT"), outcome(2)])
        await ledger.append(run_id, [outcome(1, Status.SUCCESS, crm_id="99")])
        rows = await rows_of(ledger, run_id)
        summary = await ledger.finish_run(run_id, state="completed", read={"contacts": 2})
    assert [(r.seq, r.status, r.crm_id) for r in rows] == [(1, Status.SUCCESS, "99"), (2, Status.SUCCESS, None)]
    assert (summary.succeeded, summary.failed, summary.read, summary.pending) == (2, 0, 2, 0)


async def test_same_seq_in_two_runs_or_streams_are_distinct_rows(tmp_path: Path) -> None:
    """The key is (run, stream, seq): the same seq in another stream or run is another change."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        first = await ledger.start_run(config_file="c.toml", streams=["a", "b"])
        second = await ledger.start_run(config_file="c.toml", streams=["a"])
        await ledger.append(first, [outcome(1, stream="a"), outcome(1, stream="b")])
        await ledger.append(second, [outcome(1, stream="a", status=Status.REJECTED)])
        assert len(await rows_of(ledger, first)) == 2
        assert [r.status for r in await rows_of(ledger, second)] == [Status.REJECTED]


async def test_summary_adds_up_with_pending(tmp_path: Path) -> None:
    """read = succeeded + rejected + failed + invalid + skipped + pending, per stream and in total."""
    statuses = [Status.SUCCESS] * 5 + [Status.REJECTED] * 2 + [Status.FAILED, Status.INVALID, Status.SKIPPED]
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts", "links"])
        await ledger.append(run_id, [outcome(i, s) for i, s in enumerate(statuses)])
        await ledger.append(run_id, [outcome(1, stream="links"), outcome(2, Status.INVALID, stream="links")])
        summary = await ledger.finish_run(run_id, state="interrupted", read={"contacts": 14, "links": 2})
        again = await ledger.summary(run_id)
    assert summary == again
    assert summary.adds_up
    assert summary.state is RunState.INTERRUPTED and summary.finished_at is not None
    assert (
        summary.read,
        summary.succeeded,
        summary.rejected,
        summary.failed,
        summary.invalid,
        summary.skipped,
        summary.pending,
    ) == (16, 6, 2, 1, 2, 1, 4)
    contacts, links = summary.per_stream
    assert (contacts.stream, contacts.read, contacts.pending, contacts.errors) == ("contacts", 14, 4, 4)
    assert (links.stream, links.read, links.pending, links.invalid) == ("links", 2, 0, 1)
    assert {(e.status, e.code): e.count for e in summary.top_errors} == {
        (Status.REJECTED, "INVALID_DATA"): 2,
        (Status.FAILED, "INVALID_DATA"): 1,
        (Status.INVALID, "INVALID_DATA"): 2,
    }


async def test_summary_never_reports_fewer_read_than_outcomes(tmp_path: Path) -> None:
    """A read count short of the outcomes (lost in a crash) is raised to the outcomes, so it still adds up."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        await ledger.append(run_id, [outcome(i) for i in range(3)])
        summary = await ledger.finish_run(run_id, state="failed", read={})
    assert (summary.read, summary.succeeded, summary.pending, summary.adds_up) == (3, 3, 0, True)


async def test_top_errors_are_counted_with_a_sample_message(tmp_path: Path) -> None:
    """The summary lists error codes by count, each with the message of its first occurrence."""
    errors = [outcome(i, Status.REJECTED, code="DUPLICATE_DATA", message=f"duplicate {i}") for i in range(3)]
    errors.append(outcome(9, Status.FAILED, code="INTERNAL_ERROR", message="boom"))
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        await ledger.append(run_id, errors)
        summary = await ledger.finish_run(run_id, state="completed", read={"contacts": 4})
    assert [(e.code, e.count, e.sample) for e in summary.top_errors] == [
        ("DUPLICATE_DATA", 3, "duplicate 0"),
        ("INTERNAL_ERROR", 1, "boom"),
    ]


async def test_unfinished_run_is_counted_live(tmp_path: Path) -> None:
    """A run that never finished (still running, or killed) is summarised from its rows as they are."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        await ledger.append(run_id, [outcome(1), outcome(2, Status.FAILED)])
        summary = await ledger.summary(run_id)
    assert (summary.state, summary.finished_at, summary.read, summary.failed) == (RunState.RUNNING, None, 2, 1)
    assert summary.adds_up


async def test_runs_history_newest_first(tmp_path: Path) -> None:
    """runs() lists the latest runs first with their counts, retry_of and dry_run; latest_run_id agrees."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        assert await ledger.latest_run_id() is None
        assert await ledger.runs() == []
        first = await ledger.start_run(config_file="nightly.toml", streams=["contacts"])
        await ledger.append(first, [outcome(1), outcome(2, Status.FAILED)])
        await ledger.finish_run(first, state="completed", read={"contacts": 2})
        second = await ledger.start_run(config_file="nightly.toml", streams=["contacts"], retry_of=first)
        third = await ledger.start_run(config_file="nightly.toml", streams=["contacts"], dry_run=True)
        history = await ledger.runs()
        assert await ledger.latest_run_id() == third
        assert [r.run_id for r in await ledger.runs(limit=2)] == [third, second]
    assert [(r.run_id, r.state, r.retry_of, r.dry_run) for r in history] == [
        (third, RunState.RUNNING, None, True),
        (second, RunState.RUNNING, first, False),
        (first, RunState.COMPLETED, None, False),
    ]
    assert (history[2].read, history[2].failed, history[2].config_file, history[2].streams) == (
        2,
        1,
        "nightly.toml",
        ("contacts",),
    )


async def test_retry_of_an_unknown_run_is_refused(tmp_path: Path) -> None:
    """start_run(retry_of=...) names a run that must exist."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        with pytest.raises(LedgerError, match="no run 7"):
            await ledger.start_run(config_file="c.toml", streams=["s"], retry_of=7)


async def test_finish_run_needs_a_known_final_state(tmp_path: Path) -> None:
    """finish_run refuses 'running' and unknown states, and unknown runs."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["s"])
        with pytest.raises(ValueError, match="running"):
            await ledger.finish_run(run_id, state="running", read={})
        with pytest.raises(ValueError, match="done"):
            await ledger.finish_run(run_id, state="done", read={})
        with pytest.raises(LedgerError, match="no run 99"):
            await ledger.finish_run(99, state="completed", read={})


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({}, [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2)], id="all"),
        pytest.param({"stream": "b"}, [("b", 1), ("b", 2)], id="stream"),
        pytest.param({"statuses": {Status.REJECTED, Status.FAILED}}, [("a", 2), ("a", 3), ("b", 2)], id="statuses"),
        pytest.param({"codes": ["LOCKED"]}, [("a", 3)], id="codes"),
        pytest.param({"statuses": [Status.REJECTED], "stream": "b"}, [("b", 2)], id="status-and-stream"),
        pytest.param({"statuses": []}, [], id="no-status-matches-nothing"),
    ],
)
async def test_outcomes_filters(tmp_path: Path, filters: dict[str, object], expected: list[tuple[str, int]]) -> None:
    """outcomes() filters by status, code and stream, in (stream, seq) order."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["a", "b"])
        await ledger.append(
            run_id,
            [
                outcome(2, Status.REJECTED, stream="b"),
                outcome(4, stream="a"),
                outcome(1, stream="b"),
                outcome(1, stream="a"),
                outcome(2, Status.REJECTED, stream="a"),
                outcome(3, Status.FAILED, stream="a", code="LOCKED"),
            ],
        )
        rows = await rows_of(ledger, run_id, **filters)
    assert [(r.stream, r.seq) for r in rows] == expected


@pytest.mark.parametrize("stream", [None, "a"], ids=["all-streams", "one-stream"])
async def test_outcomes_page_through_every_row_once(tmp_path: Path, stream: str | None) -> None:
    """Keyset pages (here of 7 rows) visit every row once, in order, across stream boundaries."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["a", "b"])
        await ledger.append(run_id, [outcome(i, stream=s) for s in ("a", "b") for i in range(30)])
        rows = [r async for r in ledger.outcomes(run_id, stream=stream, page_size=7)]
    expected = [(s, i) for s in ("a", "b") for i in range(30) if stream in (None, s)]
    assert [(r.stream, r.seq) for r in rows] == expected


async def test_append_refuses_pending_outcomes(tmp_path: Path) -> None:
    """Only terminal outcomes are recorded: pending is what has no row."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
        with pytest.raises(ValueError, match="PENDING"):
            await ledger.append(run_id, [outcome(1), outcome(2, Status.PENDING)])
        assert await rows_of(ledger, run_id) == []


async def test_append_to_an_unknown_run_is_refused(tmp_path: Path) -> None:
    """Outcomes always belong to a recorded run."""
    path = tmp_path / "ledger.db"
    async with SqliteLedger(path) as ledger:
        with pytest.raises(LedgerError, match="no run 5") as caught:
            await ledger.append(5, [outcome(1)])
    assert caught.value.location == str(path)


async def test_checkpoints_commit_with_their_batch_and_never_move_back(tmp_path: Path) -> None:
    """append() writes checkpoints in the batch's transaction; an older position does not overwrite a newer."""
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts", "links"])
        await ledger.append(run_id, [outcome(i) for i in range(10)], {"contacts": 9})
        await ledger.set_checkpoint(run_id, "links", 4)
        await ledger.append(run_id, [], {"contacts": 3})
        with pytest.raises(ValueError, match="PENDING"):
            await ledger.append(run_id, [outcome(10, Status.PENDING)], {"contacts": 10})
        assert await ledger.checkpoints(run_id) == {"contacts": 9, "links": 4}


async def test_terminal_seqs_are_compact_ranges(tmp_path: Path) -> None:
    """terminal_seqs() gives the seqs with an outcome as ranges: membership, size and gaps are right."""
    done = [*range(1, 1001), *range(1003, 2001), 5000]
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        run_id = await ledger.start_run(config_file="c.toml", streams=["contacts", "other"])
        await ledger.append(run_id, [outcome(i, Status.REJECTED if i % 7 else Status.SUCCESS) for i in done])
        await ledger.append(run_id, [outcome(1001, stream="other")])
        seqs = await ledger.terminal_seqs(run_id, "contacts")
        empty = await ledger.terminal_seqs(run_id, "missing")
    assert list(seqs.ranges()) == [(1, 1000), (1003, 2000), (5000, 5000)]
    assert len(seqs) == len(done) and list(seqs) == done
    assert 1000 in seqs and 1001 not in seqs and 1002 not in seqs and 5000 in seqs and 0 not in seqs
    assert seqs.max == 5000 and len(empty) == 0 and empty.max is None


def test_seqset_builds_ranges_from_ascending_seqs() -> None:
    """SeqSet merges runs, ignores repeats and refuses a descending input."""
    seqs = SeqSet([3, 4, 4, 5, 9, 10])
    assert list(seqs.ranges()) == [(3, 5), (9, 10)] and len(seqs) == 5 and seqs == SeqSet([3, 4, 5, 9, 10])
    assert "4" not in seqs
    with pytest.raises(ValueError, match="ascending"):
        SeqSet([5, 3])


async def test_schema_is_versioned_and_reopening_keeps_everything(tmp_path: Path) -> None:
    """The file carries its schema version; a reopened ledger has every run and row."""
    path = tmp_path / "ledger.db"
    ledger = await open_ledger(path)
    run_id = await ledger.start_run(config_file="c.toml", streams=["contacts"])
    await ledger.append(run_id, [outcome(i) for i in range(5)])
    await ledger.aclose()
    await ledger.aclose()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    async with SqliteLedger(path) as again:
        assert len(await rows_of(again, run_id)) == 5
        assert await again.latest_run_id() == run_id


async def test_a_ledger_from_a_newer_syncengine_is_refused(tmp_path: Path) -> None:
    """A schema version above ours is a LedgerError that says so, not a crash later."""
    path = tmp_path / "ledger.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="newer") as caught:
        await SqliteLedger.open(path)
    assert caught.value.location == str(path)


async def test_a_closed_ledger_says_so(tmp_path: Path) -> None:
    """Using a ledger after closing it is a LedgerError, not an AttributeError."""
    ledger = await open_ledger(tmp_path / "ledger.db")
    await ledger.aclose()
    with pytest.raises(LedgerError, match="not open"):
        await ledger.latest_run_id()
