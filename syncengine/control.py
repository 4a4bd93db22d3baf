"""How a run stops: the one channel every stage reports through, and the one place errors are classified.

- ``RunControl`` is the outside's handle: ``stop`` (calls in flight finish) and ``abort`` (they are cancelled).
- ``RunStops`` is what the stages call: ``stop(error)`` when nothing more may be sent (credits, budget,
  credentials, a token lockout, an outage, the journal), ``halt(stream, code, message)`` when a stream's config
  is wrong, ``source_failed(stream, error)`` when a source cannot be read. It keeps what it was told, and ``end()``
  says how the run ended, as a ``RunEnd``: the ledger state, the summary and the exit code all follow from it.
"""

from __future__ import annotations

from enum import Enum

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher
from syncengine.errors import (
    AuthError,
    LedgerError,
    SecretsError,
    SourceError,
    SyncError,
    TokenLockout,
    TransportError,
)
from syncengine.ledger.values import RunState
from syncengine.model import Outcome

__all__ = ["RunControl", "RunEnd", "RunStops"]

_log = structlog.get_logger("syncengine.control")


class RunEnd(Enum):
    """How a run ended; ``state`` is what the ledger records."""

    COMPLETED = "completed"  # every stream was read to its end
    HALTED = "halted"  # a stream stopped on a config error or an unreadable source; the others went on
    PAUSED = "paused"  # sending stopped to try later (budget, spent credits, an outage, a token lockout): resumable
    FATAL = "fatal"  # sending stopped on what only the user can fix (credentials, a certificate)
    INTERRUPTED = "interrupted"  # stopped on request (Ctrl-C, SIGTERM): the rest is pending
    LEDGER_FAILED = "ledger_failed"  # the ledger could not be written: what was committed stays

    def state(self, *, watch: bool) -> RunState:
        if self is RunEnd.INTERRUPTED:
            # A watch ends on request; what it held is read again from the stored positions next time.
            return RunState.COMPLETED if watch else RunState.INTERRUPTED
        if self in (RunEnd.FATAL, RunEnd.LEDGER_FAILED):
            return RunState.FAILED
        return RunState(self.value)


def _fatal(error: Exception) -> bool:
    """Only the user can fix it: refused credentials, unreadable secrets, a call no retry can make.

    A token lockout ("Access Denied") is not: it lifts by itself, and the run pauses until it does.
    """
    if isinstance(error, TokenLockout):
        return False
    return isinstance(error, AuthError | SecretsError) or (isinstance(error, TransportError) and not error.retryable)


class RunControl:
    """Stop a run from outside: ``stop`` lets calls in flight finish, ``abort`` cancels them."""

    def __init__(self) -> None:
        self.stop_requested = anyio.Event()
        self.abort_requested = anyio.Event()

    def stop(self) -> None:
        self.stop_requested.set()

    def abort(self) -> None:
        self.stop_requested.set()
        self.abort_requested.set()


class RunStops:
    """What the stages report; see the module docstring."""

    def __init__(self, control: RunControl, batcher: Batcher, outcomes: MemoryObjectSendStream[Outcome]) -> None:
        self.control = control
        self._batcher = batcher
        self._outcomes = outcomes
        self.halted: list[str] = []  # one line per halted stream (and unreadable source)
        self._halted_streams: set[str] = set()
        self.reason: str | None = None  # why sending stopped, when it did
        self._fatal = False
        self.ledger_failure: LedgerError | None = None

    def stop(self, error: Exception) -> None:
        """Nothing more may be sent: calls in flight finish, what has no outcome stays pending."""
        if self.reason is None:
            self.reason = str(error)
            self._fatal = _fatal(error)
            level = _log.info if self.control.stop_requested.is_set() else _log.error
            level("syncengine.run_stopping", reason=self.reason, cause=type(error).__name__)
        self._batcher.stop()

    async def halt(self, stream: str, code: str, message: str) -> None:
        """The stream's config is wrong: its held changes end FAILED with the CRM's code; others go on."""
        if stream in self._halted_streams:
            return
        self._halted_streams.add(stream)
        self.halted.append(f"{stream}: {code}: {message}")
        _log.error("syncengine.stream_halted", stream=stream, code=code, message=message)
        note = f"stream {stream!r} halted"
        for change in self._batcher.halt(stream):
            await self._outcomes.send(Outcome.failed(change, code=code, message=message, note=note))

    def source_failed(self, stream: str, error: SourceError) -> None:
        self.halted.append(f"{stream}: SOURCE_ERROR: {error}")
        _log.error("syncengine.source_failed", stream=stream, reason=str(error))

    def ledger_failed(self, error: LedgerError) -> None:
        self.ledger_failure = error
        _log.error("syncengine.ledger_failed", reason=str(error))

    async def watch_requests(self, stages: anyio.CancelScope, stop_timeout: float) -> None:
        """A stop request stops sending; a second one, or calls in flight outlasting ``stop_timeout``,
        cancels ``stages``."""
        await self.control.stop_requested.wait()
        self.stop(SyncError("stopped on request (calls in flight finish, the rest stays pending)"))
        with anyio.move_on_after(stop_timeout):
            await self.control.abort_requested.wait()
        stages.cancel()

    def end(self) -> RunEnd:
        if self.ledger_failure is not None:
            return RunEnd.LEDGER_FAILED
        if self.control.stop_requested.is_set():
            return RunEnd.INTERRUPTED
        if self._batcher.stopped:
            return RunEnd.FATAL if self._fatal else RunEnd.PAUSED
        return RunEnd.HALTED if self.halted else RunEnd.COMPLETED
