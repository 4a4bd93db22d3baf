"""Workers: take a payload, have the sender get it through, and turn every answer into outcomes.

``Worker`` is the stage between the batcher and the ledger: it turns verdicts into one outcome per change,
re-sends records the CRM saw locked, bisects a payload the CRM refused as a whole (within a cost cap), sends a
refused merged record again without its last change, waits out outages in a watch, and tells the batcher when
a payload's keys are free. Getting one call through (limits, token, retries) is the sender's (``sender.py``); a
dry run's sender writes the call instead (``dryrun.py``). Everything that stops more than one payload is reported to
``RunStops`` (``control.py``), the run's one channel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher, net_start
from syncengine.control import RunStops
from syncengine.crm.requests import Call, build_call, escaped_path_keys, single_form_only
from syncengine.crm.responses import (
    UNKNOWN_RESULT,
    Action,
    RecordResult,
    Records,
    Refused,
    per_record,
    relation_not_found,
    removed_earlier,
    splittable,
)
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
    """What a Worker needs of its sender: ``Sender`` (or ``ExternalUpdates`` in front of it), or
    ``DryRunSender`` for a dry run."""

    stopping: anyio.Event | None

    @property
    def stats(self) -> CallStats: ...

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
    # Bisection: while no call of the payload had a per-record answer, its refusals may be one that no record
    # causes, so the calls spent splitting it are capped; one per-record answer proves records are the cause.
    answered: bool = False
    split_calls: int = 0
    unsure: set[int] = field(default_factory=set)  # id(item): an answer named no entry for it (maybe applied)

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
        alone = [i for i in items if single_form_only(payload.target, i.key)] if len(items) > 1 else []
        if alone:  # a delink key with a comma cannot ride in ?ids=: it goes in a call of its own
            rest = [i for i in items if not single_form_only(payload.target, i.key)]
            for group in ([rest] if rest else []) + [[i] for i in alone]:
                await self._send(payload, group, started, book)
            return
        pending = list(items)
        last_code, last_message, last_status = "", "", None
        stream = pending[0].changes[0].stream
        for round_ in range(self._policy.record_attempts):
            sub = replace(payload, items=tuple(pending))
            call = build_call(sub, self._settings.api_base, trigger=self._settings.trigger)
            try:
                result = await self._sender.send(sub, call, stream, journal=self._journal_of(stream, pending))
            except StreamHalted as halted:
                await self._bad_key(sub, halted, started, book)  # or, when no key can be the cause, raises
                return
            book.add(pending, result.calls)
            verdict = _per_record(sub, result, book)
            if verdict is None:
                await self._settle_call(payload, pending, result, started, book)
                return
            # Only the first round's records can have been applied by an earlier process: a later round
            # re-sends records this process saw locked (proof they were not), or whose answer named no
            # entry for them (``book.unsure``: they may have been).
            earlier = self._settings.possibly_sent if round_ == 0 else None
            removed = removed_earlier(
                payload, pending, verdict, ambiguous=isinstance(result, Sent) and result.ambiguous, earlier=earlier
            )
            removed |= {id(i) for i, r in zip(pending, verdict.results, strict=True) if _unsure_removed(i, r, book)}
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
        if len(pending) > 1 and splittable(payload, verdict):
            await self._bisect(payload, pending, verdict, started, book)
            return
        ends = Status.REJECTED if verdict.action is Action.REJECT else Status.FAILED
        await self._emit(pending, book, started, **_refusal(verdict, ends))

    async def _bisect(
        self, payload: Payload, pending: list[PayloadItem], verdict: Refused, started: float, book: _Ledger
    ) -> None:
        """One bad record can make Zoho refuse the whole body: send the halves, to isolate it.

        A refusal that no record causes refuses every half too, down to single records, and nothing tells the
        two apart but a part that is answered record by record. Until one is, the calls spent splitting this
        payload are capped at 2·log2(n) + 2 (n its records; one bad record is isolated within that); the
        records of the parts left unsent then get the refusal, with a note saying why they were not tried
        alone. Once a part is answered record by record, the refusals are records' and splitting goes on.
        """
        cap = int(2 * math.log2(len(payload.items)) + 2)
        half = len(pending) // 2
        for part in (pending[:half], pending[half:]):
            if not book.answered and book.split_calls >= cap:
                note = (
                    f"not tried alone: refused in a call of {len(pending)} records, and every part of its payload "
                    f"sent ({book.split_calls + 1} calls) was refused as well, as a refusal that no record causes "
                    f"is; splitting stopped at its cap of {cap} extra calls"
                )
                await self._emit(part, book, started, **_refusal(verdict, Status.REJECTED), note=note)
                continue
            book.split_calls += 1
            await self._send(payload, part, started, book)

    async def _bad_key(self, sub: Payload, halted: StreamHalted, started: float, book: _Ledger) -> None:
        """Zoho refused a URL that carries a record's key (a related call's parent, a single delink's key): when
        the key needed percent-encoding, Zoho may not route it intact (a "/" decoded into the path reads as one
        segment more), so the record is refused, BAD_KEY, and the stream goes on. Else the config is wrong."""
        escaped = escaped_path_keys(sub)
        url_error = halted.code == "INVALID_URL_PATTERN" or "relation name" in halted.message.lower()
        if not (escaped and url_error):
            raise halted
        book.add(sub.items, 1)
        message = f"{halted.code}: {halted.message} (the URL carries the key {escaped[0]!r})"
        await self._emit(sub.items, book, started, status=Status.REJECTED, code="BAD_KEY", message=message)

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
                if record.code == UNKNOWN_RESULT:
                    book.unsure.add(id(item))
                retry.append(item)
                continue
            if not record.success and id(item) not in removed and _divisible(item) and record.code not in _WHOLE:
                refused.append(item)  # (a lock or a key is the record's, not a value's: no change alone fares better)
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


# Refusals of a record that no part of its merged changes would escape: they are not re-sent without the last.
_WHOLE = frozenset({"RECORD_LOCKED", "BAD_KEY"})


def _divisible(item: PayloadItem) -> bool:
    """A record that coalesced changes of one kind, whose fields the changes set (not delinks, not a record
    whose earlier changes a later one superseded)."""
    changes = item.changes
    return (
        len(changes) > 1
        and changes[-1].target.operation is not Operation.DELETE_RELATED
        and all(c.target == changes[-1].target for c in changes)
    )


def _per_record(sub: Payload, result: Sent | GaveUp | Planned, book: _Ledger) -> Records | None:
    """The call's per-record answer, one result per record in input order (``responses.per_record``)."""
    if not isinstance(result, Sent):
        return None
    book.answered |= isinstance(result.verdict, Records)
    return per_record(sub, result.verdict)


def _unsure_removed(item: PayloadItem, record: RecordResult, book: _Ledger) -> bool:
    """A delink answered "relation not found" after an earlier call's answer named no entry for it: that call
    may have removed it."""
    return id(item) in book.unsure and relation_not_found(record) and _is_delink(item)


def _is_delink(item: PayloadItem) -> bool:
    return item.changes[-1].target.operation is Operation.DELETE_RELATED


def _refusal(verdict: Refused, status: Status) -> dict[str, Any]:
    """The outcome fields of records a whole-call refusal ends."""
    return {
        "status": status,
        "code": verdict.code,
        "message": verdict.message,
        "http_status": verdict.http_status,
        "details": verdict.details,
    }
