"""Workers: take a payload, have the sender get it through, and turn every answer into outcomes.

``Worker`` is the stage between the batcher and the ledger: it turns verdicts into one outcome per change,
re-sends records the CRM saw locked, bisects a payload the CRM refused as a whole, sends a refused merged
record again without its last change, waits out outages in a watch, and tells the batcher when a payload's
keys are free. Getting one call through (limits, token, retries) is the sender's (``sender.py``); a dry run's
sender writes the call instead (``dryrun.py``). Everything that stops more than one payload is reported to
``RunStops`` (``control.py``), the run's one channel.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher, net_start
from syncengine.control import RunStops
from syncengine.crm.requests import Call, build_call
from syncengine.crm.responses import Action, Records, Refused, relation_not_found
from syncengine.dryrun import Planned
from syncengine.errors import (
    AuthError,
    BudgetReached,
    CreditsExhausted,
    CrmUnavailable,
    LedgerError,
    SecretsError,
    StreamHalted,
    TransportError,
)
from syncengine.ledger.writer import send_all
from syncengine.limits import Backoff
from syncengine.model import JSON, Change, Operation, Outcome, Payload, PayloadItem, Status
from syncengine.sender import CallStats, GaveUp, Journal, RetryPolicy, Sent, Stopping

__all__ = ["RetryPolicy", "Sends", "Worker", "WorkerSettings"]

_log = structlog.get_logger("syncengine.workers")


class Sends(Protocol):
    """What a Worker needs of its sender: ``Sender``, or ``DryRunSender`` for a dry run."""

    stats: CallStats
    stopping: anyio.Event | None

    def send(
        self, payload: Payload, call: Call, stream: str, *, journal: Callable[[], object] | None = None
    ) -> Awaitable[Sent | GaveUp | Planned]: ...

    async def pause(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """What every worker of a run shares, besides its sender, batcher, outcome stream and stops."""

    api_base: str
    trigger: Sequence[str] | None
    policy: RetryPolicy
    persistent: bool = False  # watch: outages are waited out, never the end of the run
    # A resumed run: the journaled call of the killed process that may have applied a change, if any.
    possibly_sent: Callable[[Change], frozenset[int]] | None = None
    journal: Journal | None = None  # records each call right before it goes out (None: a dry run)


@dataclass(slots=True)
class _Ledger:
    """Per payload: how many calls each record took part in, and which changes already have outcomes."""

    tries: dict[int, int] = field(default_factory=dict)  # id(item) -> calls
    emitted: set[int] = field(default_factory=set)  # id(change) of changes with their outcomes out

    def add(self, items: Sequence[PayloadItem], calls: int) -> None:
        for item in items:
            self.tries[id(item)] = self.tries.get(id(item), 0) + calls

    def open_items(self, items: Sequence[PayloadItem]) -> list[PayloadItem]:
        """The records whose changes have no outcome yet (a record sent again in parts: what is left of it)."""
        found: list[PayloadItem] = []
        for item in items:
            left = tuple(c for c in item.changes if id(c) not in self.emitted)
            if len(left) == len(item.changes):
                found.append(item)
            elif left:
                fields: dict[str, JSON] = {}
                for change in left:
                    fields.update(change.fields)
                found.append(PayloadItem(key=item.key, fields=fields, changes=left))
        return found


class Worker:
    """Turns payloads into outcomes. Many run at once; they share the sender's limits."""

    def __init__(
        self,
        sender: Sends,
        batcher: Batcher,
        outcomes: MemoryObjectSendStream[Outcome],
        stops: RunStops,
        settings: WorkerSettings,
    ) -> None:
        self._sender = sender
        self._batcher = batcher
        if sender.stopping is None:
            sender.stopping = batcher.stopping  # the sender's waits end when the run stops
        self._outcomes = outcomes
        self._stops = stops
        self._settings = settings
        self._policy = settings.policy

    async def run(self) -> None:
        while (payload := await self._batcher.get()) is not None:
            try:
                await self.process(payload)
            finally:
                self._batcher.done(payload)

    async def process(self, payload: Payload) -> None:
        """Send one payload; every change of it ends with exactly one outcome, or none if the run stops."""
        started = time.time()
        book = _Ledger()
        try:
            await self._send_through_outages(payload, started, book)
        except StreamHalted as halted:
            await self._emit(
                book.open_items(payload.items),
                book,
                started,
                status=Status.FAILED,
                code=halted.code,
                message=halted.message,
                note=f"stream {halted.stream!r} halted",
            )
            await self._stops.halt(halted.stream, halted.code, halted.message)
        except (
            BudgetReached,
            CreditsExhausted,
            CrmUnavailable,
            AuthError,
            SecretsError,
            TransportError,
            LedgerError,  # the dispatch journal cannot be written: nothing more may be sent
        ) as stop:
            # The records without an outcome stay pending: a resumed run sends them.
            self._stops.stop(stop)

    async def _send_through_outages(self, payload: Payload, started: float, book: _Ledger) -> None:
        """A one-off run stops on an outage; a watch waits it out and sends the same records again.

        A stop ends every wait: the records without an outcome stay pending, for the next run.
        """
        outages = 0
        while True:
            try:
                await self._send(payload, book.open_items(payload.items), started, book)
                return
            except Stopping:
                return
            except (CrmUnavailable, CreditsExhausted, TransportError) as outage:
                # A token endpoint that cannot be reached is an outage too; a rejected certificate is not.
                persistent = self._settings.persistent
                if not persistent or (isinstance(outage, TransportError) and not outage.retryable):
                    raise
                outages += 1
                if isinstance(outage, CrmUnavailable):
                    # The sender's outage gate paces the CRM from here: while it is down, one call probes it
                    # and this one waits at the gate for its answer.
                    _log.warning("syncengine.outage_waiting", reason=str(outage), wait_s=0.0)
                    continue
                cap = 300.0 if isinstance(outage, CreditsExhausted) else 4 * self._policy.probe_interval
                wait = Backoff(initial=1.0, maximum=cap).wait(outages)
                _log.warning("syncengine.outage_waiting", reason=str(outage), wait_s=round(wait, 1))
                with anyio.move_on_after(wait):
                    await self._batcher.stopping.wait()
                if self._batcher.stopped:
                    return  # stopping: what has no outcome stays pending, for the next run

    async def _send(self, payload: Payload, items: Sequence[PayloadItem], started: float, book: _Ledger) -> None:
        pending = list(items)
        last_code, last_message, last_status = "", "", None
        stream = pending[0].changes[0].stream
        for round_ in range(self._policy.record_attempts):
            sub = replace(payload, items=tuple(pending))
            call = build_call(sub, self._settings.api_base, trigger=self._settings.trigger)
            result = await self._sender.send(sub, call, stream, journal=self._journal_of(stream, pending))
            book.add(pending, result.calls)
            if not isinstance(result, Sent) or isinstance(result.verdict, Refused):
                await self._settle_call(payload, pending, result, started, book)
                return
            verdict = result.verdict
            # Only the first round's records can have been applied by an earlier process: a later round
            # re-sends records this process saw locked, which is proof they were not.
            earlier = self._settings.possibly_sent if round_ == 0 else None
            removed = _removed_earlier(payload, pending, verdict, ambiguous=result.ambiguous, earlier=earlier)
            retry, refused = await self._settle(pending, verdict, removed, started, book)
            for item in refused:
                await self._without_last(payload, item, started, book)
            if not retry:
                return
            record = next(r for i, r in zip(pending, verdict.results, strict=True) if i is retry[-1])
            last_code, last_message, last_status = record.code, record.message, verdict.http_status
            pending = retry
            if round_ + 1 < self._policy.record_attempts:
                await self._sender.pause(self._policy.backoff(round_))  # a stop ends it: the rest stays pending
        await self._emit(
            pending, book, started, status=Status.FAILED, code=last_code, message=last_message, http_status=last_status
        )

    async def _settle_call(
        self,
        payload: Payload,
        pending: list[PayloadItem],
        result: Sent | GaveUp | Planned,
        started: float,
        book: _Ledger,
    ) -> None:
        """A call with no per-record answer: a dry run's, one that gave up, or one refused as a whole."""
        if isinstance(result, Planned):
            message = "dry run: request written, not sent"
            await self._emit(pending, book, started, status=Status.SKIPPED, code="DRY_RUN", message=message)
            return
        if isinstance(result, GaveUp):
            code, message, status = result.code, result.message, result.http_status
            await self._emit(
                pending, book, started, status=Status.FAILED, code=code, message=message, http_status=status
            )
            return
        verdict = result.verdict
        assert isinstance(verdict, Refused)
        if len(pending) > 1 and _bisectable(payload, verdict):
            # One bad record can make Zoho refuse the whole body: split to isolate it.
            half = len(pending) // 2
            await self._send(payload, pending[:half], started, book)
            await self._send(payload, pending[half:], started, book)
            return
        await self._emit(
            pending,
            book,
            started,
            status=Status.REJECTED if verdict.action is Action.REJECT else Status.FAILED,
            code=verdict.code,
            message=verdict.message,
            http_status=verdict.http_status,
            details=verdict.details,
        )

    def _journal_of(self, stream: str, items: Sequence[PayloadItem]) -> Callable[[], object] | None:
        """What the Sender calls when the call is about to go out: one journal line, per record its changes."""
        journal = self._settings.journal
        if journal is None:
            return None
        return lambda: journal(stream, [(i.changes[0].record_key, [c.seq for c in i.changes]) for i in items])

    async def _settle(
        self,
        pending: Sequence[PayloadItem],
        verdict: Records,
        removed: set[int],
        started: float,
        book: _Ledger,
    ) -> tuple[list[PayloadItem], list[PayloadItem]]:
        """Emit each record's outcome; return the records to send again (transient trouble), and the
        coalesced records the CRM refused (to send again without their last change)."""
        retry: list[PayloadItem] = []
        refused: list[PayloadItem] = []
        for item, record in zip(pending, verdict.results, strict=True):
            if record.transient:
                retry.append(item)
                continue
            if not record.success and id(item) not in removed and _divisible(item):
                refused.append(item)
                continue
            status, code, message, note = Status.REJECTED, record.code, record.message, None
            if record.success:
                status = Status.SUCCESS
            elif relation_not_found(record) and _links_superseded(item):
                # The link before this delink was superseded, not sent: the CRM holds what the two leave.
                status, code, message = Status.SUCCESS, "SUCCESS", "relation absent, as its changes leave it"
            elif id(item) in removed:
                status, code, message = Status.SUCCESS, "SUCCESS", "relation removed"
                note = (
                    "ambiguous retry: an earlier try of this change may have removed the relation (its answer was lost)"
                )
            await self._emit(
                (item,),
                book,
                started,
                status=status,
                code=code,
                message=message,
                crm_id=record.crm_id,
                http_status=verdict.http_status,
                details=record.details,
                note=note,
            )
        return retry, refused

    async def _without_last(self, payload: Payload, item: PayloadItem, started: float, book: _Ledger) -> None:
        """A record that merged several changes was refused: one bad value in a later change must not take
        the earlier ones down with it. Send the earlier changes (merged, so the CRM still goes straight to
        their state), then the last alone: each ends with its own outcome, in source order."""
        earlier = item.changes[:-1]
        fields: dict[str, JSON] = {}
        for change in earlier:
            fields.update(change.fields)
        await self._send(payload, [PayloadItem(key=item.key, fields=fields, changes=earlier)], started, book)
        last = item.changes[-1]
        await self._send(payload, [PayloadItem(key=item.key, fields=last.fields, changes=(last,))], started, book)

    async def _emit(
        self,
        items: Sequence[PayloadItem],
        book: _Ledger,
        started: float,
        *,
        status: Status,
        code: str,
        message: str,
        crm_id: str | None = None,
        http_status: int | None = None,
        details: Mapping[str, JSON] | None = None,
        note: str | None = None,
    ) -> None:
        finished = time.time()
        outcomes: list[Outcome] = []
        for item in items:
            book.emitted.update(id(c) for c in item.changes)
            outcomes.extend(
                Outcome(
                    change=change,
                    status=status,
                    code=code,
                    message=message,
                    details=details or None,
                    crm_id=crm_id,
                    http_status=http_status,
                    attempts=book.tries.get(id(item), 0),
                    started_at=started,
                    finished_at=finished,
                    note=note,
                )
                for change in item.changes
            )
            start = net_start(item.changes)
            if start:  # the changes before ``start`` were superseded by a later change of another kind
                count = len(item.changes)
                outcomes[-count : -count + start] = [_superseded(o) for o in outcomes[-count : -count + start]]
        await send_all(self._outcomes, outcomes)


def _superseded(outcome: Outcome) -> Outcome:
    """A change of a record that a later change of another kind superseded (``batcher.net_start``): not sent
    itself. When the record went through, the CRM holds what the later change left: SKIPPED, SUPERSEDED."""
    if outcome.status is not Status.SUCCESS:
        return replace(outcome, note=outcome.note or "not sent itself: a later change of this key superseded it")
    return replace(
        outcome,
        status=Status.SKIPPED,
        code="SUPERSEDED",
        message="not sent: a later change of this key in the run supersedes it (a link after a delink, or the reverse)",
        crm_id=None,
        details=None,
        note=None,
    )


def _links_superseded(item: PayloadItem) -> bool:
    """A delink record that carries links of the same relation read before it (superseded by it)."""
    return item.changes[-1].target.operation is Operation.DELETE_RELATED and net_start(item.changes) > 0


def _divisible(item: PayloadItem) -> bool:
    """A record that coalesced changes of one kind, whose fields the changes set (not delinks, not a record
    whose earlier changes a later one superseded)."""
    changes = item.changes
    return (
        len(changes) > 1
        and changes[-1].target.operation is not Operation.DELETE_RELATED
        and all(c.target == changes[-1].target for c in changes)
    )


def _removed_earlier(
    payload: Payload,
    pending: Sequence[PayloadItem],
    verdict: Records,
    *,
    ambiguous: bool,
    earlier: Callable[[Change], frozenset[int]] | None,
) -> set[int]:
    """The delinks answered "relation not found" that an earlier try may really have removed (``id(item)``).

    An earlier try counts only if it may have reached the CRM (this call retried after a drop or a 5xx, or a
    journaled call of a killed process carried the change) and nothing shows it was not applied: when the
    answer removed a relation that an earlier call carried too, that call removed nothing (Zoho applies a
    call whole), so a "not found" beside it is the CRM's real answer unless another earlier call carried it.
    """
    if payload.target.operation is not Operation.DELETE_RELATED or not (ambiguous or earlier is not None):
        return set()
    results = list(zip(pending, verdict.results, strict=True))
    removed_now = [item for item, record in results if record.success]
    # Retries of this call carried exactly these records: one removed now means none was removed before.
    this_call = ambiguous and not removed_now
    calls = {id(item): earlier(item.changes[0]) for item, _ in results} if earlier is not None else {}
    disproved = frozenset().union(*(calls.get(id(item), frozenset()) for item in removed_now))
    return {
        id(item)
        for item, record in results
        if relation_not_found(record) and (this_call or bool(calls.get(id(item), frozenset()) - disproved))
    }


def _bisectable(payload: Payload, verdict: Refused) -> bool:
    """A whole-call 400 that one record may have caused. Not for related calls (the records share a parent,
    the likelier culprit) nor when Zoho points at the URL (``resource_path_index``) or at ``data`` itself.
    """
    if verdict.action is not Action.REJECT or verdict.http_status != 400 or payload.target.is_related:
        return False
    details = verdict.details
    return "resource_path_index" not in details and details.get("api_name") != "data"
