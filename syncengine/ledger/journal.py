"""The call journal: one line per call, written right before the call goes out, read by a resume.

A line says which changes the call carries and how they were merged: per record, its key and the seqs of the
changes in it. A resumed run reads the journal of the run it continues, so it knows exactly which changes
without an outcome the killed process may have sent (``plan.InDoubt``), and which it never sent.

It is a plain append-only file beside the ledger (``<ledger>-calls-<run id>.jsonl``), not a table: a line is
one ``write`` on the event loop, inside the call's concurrency slot, so nothing that waits for a slot or a
token is ever journaled as sent, and the send path never waits for the ledger's thread. A write is in the
kernel before the call starts, so a killed process loses none (the same durability as the ledger's WAL
with ``synchronous=NORMAL``); a line torn by a power cut is skipped on reading.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import orjson

from syncengine.errors import LedgerError

__all__ = ["CallJournal", "Dispatch", "journal_path", "prune_journals", "read_journal"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    """One journaled call: its number in the run, its stream, and per record its key and merged seqs."""

    id: int
    stream: str
    records: tuple[tuple[str, tuple[int, ...]], ...]


def journal_path(ledger: Path, run_id: int) -> Path:
    return ledger.with_name(f"{ledger.name}-calls-{run_id}.jsonl")


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            yield from handle
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(str(path), f"cannot read the call journal: {exc.strerror or exc}") from exc


def read_journal(path: Path) -> list[Dispatch]:
    """Every call the journal holds, oldest first (a torn last line is skipped)."""
    calls: list[Dispatch] = []
    for number, line in enumerate(_lines(path), start=1):
        try:
            stream, records = orjson.loads(line)
            calls.append(Dispatch(id=number, stream=stream, records=tuple((key, tuple(seqs)) for key, seqs in records)))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue
    return calls


def prune_journals(ledger: Path, keep: set[int]) -> None:
    """Delete the journals of runs that are not in ``keep`` (runs that may still be resumed)."""
    for path in ledger.parent.glob(f"{ledger.name}-calls-*.jsonl"):
        run = path.stem.removeprefix(f"{ledger.name}-calls-")
        if run.isdigit() and int(run) not in keep:
            path.unlink(missing_ok=True)


class CallJournal:
    """Appends a run's calls: ``with CallJournal(path) as journal: journal.record(stream, records)``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._count = 0

    def __enter__(self) -> CallJournal:
        try:
            self._count = sum(1 for _ in _lines(self._path))  # a resume numbers on after the last process
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(str(self._path), f"cannot open the call journal: {exc.strerror or exc}") from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, stream: str, records: Sequence[tuple[str, Sequence[int]]]) -> int:
        """Journal one call (one ``write``); returns its number in the run."""
        if self._fd is None:
            raise LedgerError(str(self._path), "the call journal is not open")
        line = orjson.dumps([stream, [[key, list(seqs)] for key, seqs in records]]) + b"\n"
        try:
            os.write(self._fd, line)
        except OSError as exc:
            raise LedgerError(str(self._path), f"cannot write the call journal: {exc.strerror or exc}") from exc
        self._count += 1
        return self._count
