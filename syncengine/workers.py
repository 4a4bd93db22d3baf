"""Workers: take a payload, send it within the limits, retry what is transient, emit one outcome per change.

The pieces each do one thing: ``Sender`` gets one call through (limits, token, 429/5xx/401 retries)
and returns a verdict; ``Outage`` is what every call knows of the CRM's health (while it answers nobody,
one call probes it and the others wait for its answer); ``Worker`` turns verdicts into outcomes, re-sends
records that were locked, bisects a payload the CRM refused as a whole, and tells the batcher when a
payload's keys are free.

Every wait here (a backoff, a probe, the gate of an outage) ends at once when the run stops: what has no
outcome then stays pending, while calls in flight finish and keep theirs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Protocol

import anyio
import orjson
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from syncengine.batcher import Batcher
from syncengine.crm.auth import TokenProvider
from syncengine.crm.requests import Call, build_call, is_complex, write_credits
from syncengine.crm.responses import Action, Records, Refused, interpret, relation_not_found
from syncengine.crm.transport import HttpResponse
from syncengine.errors import (
    AuthError,
    CreditsExhausted,
    CrmUnavailable,
    LedgerError,
    SecretsError,
    StreamHalted,
    TransportError,
)
from syncengine.limits import CreditMeter, Limits
from syncengine.model import JSON, Change, Operation, Outcome, Payload, PayloadItem, Status, Target

__all__ = ["BudgetReached", "CallStats", "Outage", "RetryPolicy", "Sender", "Stopping", "Worker"]

log = structlog.get_logger("syncengine.workers")


class BudgetReached(Exception):
    """The configured credit budget would be exceeded: what is left stays pending, resumable."""


class Stopping(Exception):
    """The run is stopping: a wait between tries ended early; what has no outcome stays pending."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to try. Defaults are for production; tests shorten the waits."""

    attempts: int = 8  # tries of one call through 5xx, timeouts and dropped connections
    throttle_attempts: int = 12  # tries through 429s before the daily credits are deemed spent
    record_attempts: int = 5  # tries of one record through RECORD_LOCKED and other per-record trouble
    auth_attempts: int = 3  # token refreshes for one call before giving up
    outage_give_ups: int = 30  # calls in a row that gave up before the run stops as "CRM unavailable"
    wait_initial: float = 0.25  # seconds
    wait_max: float = 30.0
    probe_interval: float = 0.5  # seconds between tries of a CRM that answers nobody (never above the backoff)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
        return random.uniform(0.0, min(self.wait_max, self.wait_initial * 2.0**attempt))

    def probe(self) -> float:
        """The wait before the next probe of a CRM that is down: ``probe_interval`` with jitter."""
        return random.uniform(0.5, 1.0) * self.probe_interval


@dataclass(slots=True)
class CallStats:
    """Counters for progress, metrics and the summary (single event loop: no locking needed)."""

    calls: int = 0
    throttled: int = 0
    retries: int = 0
    transport_errors: int = 0
    credits_remaining: int | None = None  # X-API-CREDITS-REMAINING, when Zoho sends it
    planned_calls: int = 0  # dry run: the calls it would make
    planned_credits: int = 0  # dry run: what they would cost


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """A call that got an answer (possibly after retries)."""

    verdict: Records | Refused
    calls: int
    ambiguous: bool  # an earlier try may have been applied before the answer we got


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp:
    """Transient trouble outlasted the retries."""

    code: str
    message: str
    http_status: int | None
    calls: int
    ambiguous: bool


Send = Callable[[Call], Awaitable[HttpResponse]]
# Journals a call before it goes out: (stream, per record its key and the seqs merged into it) -> call id.
Journal = Callable[[str, Sequence[tuple[str, Sequence[int]]]], int]


async def wait_any(events: Sequence[anyio.Event | None], deadline: float = math.inf) -> None:
    """Until one of ``events`` is set or the clock reaches ``deadline`` (``anyio.current_time``)."""
    waiting = [event for event in events if event is not None]
    if any(event.is_set() for event in waiting):
        return
    with anyio.CancelScope(deadline=deadline):
        async with anyio.create_task_group() as tg:

            async def one(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            for event in waiting:
                tg.start_soon(one, event)
            if not waiting:
                await anyio.sleep_forever()


class Outage:
    """What the calls of one run know of the CRM's health, so an outage costs neither hammering nor lag.

    After transient trouble (a 5xx, a timeout, a dropped connection) the CRM is *down* until some call gets
    an answer. While it is down, one call (the prober) tries again every ``probe_interval`` instead of
    sleeping out a growing backoff, and every other call waits at ``admit`` for the CRM to answer anyone:
    the CRM sees one call at a time, and the others go out as soon as it answers again. A call that fails
    while the CRM answers the others waits out its own backoff, as before.
    """

    def __init__(self) -> None:
        self.down = False  # a call met transient trouble, and no call has had an answer since
        self.probes = 0  # tries made by a prober (for metrics and tests)
        self._prober: object | None = None
        self._changed = anyio.Event()  # replaced on every change: the CRM answered, or the prober left

    async def admit(self, call: object, stop: anyio.Event | None) -> None:
        """Before a try: while the CRM is down only one call goes (as the prober); the rest wait here."""
        while self.down and self._prober not in (None, call):
            await wait_any((self._changed, stop))
            if stop is not None and stop.is_set():
                raise Stopping("stopping while the CRM is down")
        if self.down:
            self._prober = call
            self.probes += 1

    async def failed(self, call: object, *, until: float, probe: float, stop: anyio.Event | None) -> None:
        """``call`` met transient trouble: wait until its next try.

        The first call to fail probes: it tries again after ``probe`` seconds while the CRM stays down, or
        at ``until`` (its own backoff) if the CRM answers others meanwhile (the trouble was its own). A call
        that fails while another probes failed with the outage: it waits for the CRM to answer, then goes
        within ``probe`` seconds (jittered) rather than after the rest of its backoff.
        """
        self.down = True
        if self._prober is None:
            self._prober = call
        if self._prober is call:
            probe_at = min(until, anyio.current_time() + probe)
            while self._prober is call and self.down and anyio.current_time() < probe_at:
                await wait_any((self._changed, stop), probe_at)
                _check(stop)
            if self.down:
                return  # time to probe
            await wait_any((stop,), until)
            _check(stop)
            return
        while self.down and self._prober not in (None, call):
            await wait_any((self._changed, stop))
            _check(stop)
        if not self.down:
            await wait_any((stop,), min(until, anyio.current_time() + random.uniform(0.0, probe)))
            _check(stop)

    def answered(self, call: object) -> None:
        """``call`` got an answer (any answer but a 5xx): the CRM is up."""
        if self._prober is call:
            self._prober = None
        if self.down:
            self.down = False
            self._wake()

    def leave(self, call: object) -> None:
        """``call`` is over (answered, gave up, stopped): if it was probing, another call takes over."""
        if self._prober is call:
            self._prober = None
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def _check(stop: anyio.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopping("stopping: a wait ended early")


@dataclass(slots=True, eq=False)
class _Tries:
    """One call's tries so far; also its identity at the outage gate."""

    calls: int = 0
    transient: int = 0  # charged transient failures (a probe that fails inside the backoff is free)
    throttles: int = 0
    refreshes: int = 0
    ambiguous: bool = False
    charge_after: float = -math.inf  # a transient failure before this time is a probe's, not charged


class Sender:
    """Gets one call through: limits, token, and the retries of the response table."""

    def __init__(
        self,
        *,
        request: Callable[..., Awaitable[HttpResponse]],
        tokens: TokenProvider | None,
        limits: Limits,
        credits: CreditMeter,
        policy: RetryPolicy,
        stats: CallStats,
    ) -> None:
        self._request = request
        self._tokens = tokens
        self._limits = limits
        self._credits = credits
        self._policy = policy
        self.stats = stats
        self._give_ups = 0  # calls in a row that gave up on transient trouble
        self.outage = Outage()
        # Set when the run stops: no new try starts, and every wait ends (Stopping). A Worker links its
        # batcher's ``stopping`` here when the pipeline has not.
        self.stopping: anyio.Event | None = None

    async def send(
        self, payload: Payload, call: Call, stream: str, *, journal: Callable[[], object] | None = None
    ) -> Sent | GaveUp:
        """Send until the CRM gives a verdict, or transient trouble outlasts the policy.

        Raises what stops more than this call: StreamHalted (the stream's config is wrong),
        CreditsExhausted, BudgetReached, CrmUnavailable (call after call gave up), AuthError, a
        TransportError that no retry can fix (a rejected certificate, a bad URL), and Stopping (the run is
        stopping: a wait between tries ends at once).
        """
        target = payload.target
        count = len(payload.items)
        cost = write_credits(target, count)
        tries = _Tries()
        try:
            while True:
                response, token = await self._try(call, cost, is_complex(target, count), tries, journal)
                if isinstance(response, TransportError):
                    if not response.retryable:
                        raise response
                    tries.ambiguous |= response.maybe_sent
                    self.stats.transport_errors += 1
                    gave_up = await self._transient(tries, "TRANSPORT_ERROR", response.reason, None)
                    if gave_up is not None:
                        return gave_up
                    continue
                if response.credits_remaining is not None:
                    self.stats.credits_remaining = response.credits_remaining
                verdict = interpret(response, count, related=target.is_related)
                if isinstance(verdict, Refused) and verdict.action is Action.RETRY:
                    tries.ambiguous = True  # a 5xx (a gateway timeout above all) may come after the CRM applied it
                    gave_up = await self._transient(tries, verdict.code, verdict.message, verdict.http_status)
                    if gave_up is not None:
                        return gave_up
                    continue
                self.outage.answered(tries)
                if isinstance(verdict, Records) or not await self._again(verdict, stream, cost, token, tries):
                    self._succeeded()
                    return Sent(verdict=verdict, calls=tries.calls, ambiguous=tries.ambiguous)
        finally:
            self.outage.leave(tries)

    async def _try(
        self, call: Call, cost: int, complex_call: bool, tries: _Tries, journal: Callable[[], object] | None
    ) -> tuple[HttpResponse | TransportError, str]:
        """One try, once the outage gate lets it go: the response (or the transport error), and the token.

        A try that is under way when the run stops still goes out (a payload already taken is sent once, as
        before); only the waits between tries end at a stop.
        """
        await self.outage.admit(tries, self.stopping)
        if not self._credits.spend(cost):
            raise BudgetReached(f"credit budget {self._credits.budget} reached")
        token = await self._tokens.token() if self._tokens is not None else ""
        headers = dict(call.headers)
        if token:
            headers["Authorization"] = f"Zoho-oauthtoken {token}"
        async with self._limits.slot(complex_call=complex_call):
            if journal is not None and tries.calls == 0:
                journal()  # the call is about to leave: from here on a resume counts it as possibly sent
            tries.calls += 1
            self.stats.calls += 1
            try:
                response = await self._request(
                    call.method, call.url, headers=headers, params=dict(call.params) or None, body=call.body
                )
            except TransportError as exc:
                return exc, token
        return response, token

    async def _again(self, verdict: Refused, stream: str, cost: int, token: str, tries: _Tries) -> bool:
        """A refusal: True when the call is to be tried again (a 429, an expired token), False when it is
        the verdict; raises when it stops more than this call."""
        action = verdict.action
        if action is Action.THROTTLE:
            self._credits.refund(cost)
            self._limits.general.throttled()
            self.stats.throttled += 1
            tries.throttles += 1
            if tries.throttles >= self._policy.throttle_attempts:
                raise CreditsExhausted(
                    f"Zoho answered 429 {tries.throttles} times in a row, backing off each time: "
                    "the org's API credits for the rolling 24 hours look spent"
                )
            self.stats.retries += 1
            await self.pause(self._policy.backoff(tries.throttles))
            return True
        if action is Action.REFRESH:
            if self._tokens is None or tries.refreshes >= self._policy.auth_attempts:
                # The token is shared by every stream: no stream can go on.
                raise AuthError(verdict.code, f"{verdict.message} (after {tries.refreshes} token refreshes)")
            tries.refreshes += 1
            self._credits.refund(cost)
            await self._tokens.rejected(token)
            return True
        if action is Action.HALT:
            raise StreamHalted(stream, verdict.code, verdict.message)
        return False

    async def _transient(self, tries: _Tries, code: str, message: str, status: int | None) -> GaveUp | None:
        """A try met transient trouble: None once it is time to try again, GaveUp once it is past the policy.

        A failure counts against ``attempts`` only once the backoff of the last one that counted has run
        out: a prober tries a CRM that is down far more often than that, and a short outage must not make
        it give up sooner than it would have by sleeping.
        """
        now = anyio.current_time()
        if now >= tries.charge_after:
            tries.transient += 1
            if tries.transient >= self._policy.attempts:
                return self._gave_up(code, message, status, tries.calls, tries.ambiguous)
            tries.charge_after = now + self._policy.backoff(tries.transient)
        self.stats.retries += 1
        await self.outage.failed(tries, until=tries.charge_after, probe=self._policy.probe(), stop=self.stopping)
        return None

    def _succeeded(self) -> None:
        self._limits.general.succeeded()
        self._give_ups = 0

    def _gave_up(self, code: str, message: str, status: int | None, calls: int, ambiguous: bool) -> GaveUp:
        self._give_ups += 1
        if self._give_ups >= self._policy.outage_give_ups:
            # Every call lately has given up: the CRM is down. Stop with the rest pending rather
            # than read the whole source only to mark every record FAILED.
            raise CrmUnavailable(
                f"{self._give_ups} calls in a row gave up ({code}: {message}): the CRM looks unavailable"
            )
        return GaveUp(code=code, message=message, http_status=status, calls=calls, ambiguous=ambiguous)

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the run stops (then raises Stopping)."""
        await wait_any((self.stopping,), anyio.current_time() + seconds)
        _check(self.stopping)


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


class RunStop(Protocol):
    """What a worker calls when the whole run must stop sending (credits, budget, credentials)."""

    def __call__(self, reason: Exception) -> None: ...


class Worker:
    """Turns payloads into outcomes. Many run at once; they share the Sender's limits."""

    def __init__(
        self,
        *,
        sender: Sender,
        batcher: Batcher,
        outcomes: MemoryObjectSendStream[Outcome],
        api_base: str,
        trigger: Sequence[str] | None,
        policy: RetryPolicy,
        on_halt: Callable[[StreamHalted], Awaitable[None]],
        on_stop: RunStop,
        dry_run_out: IO[bytes] | None = None,
        persistent: bool = False,
        possibly_sent: Callable[[Change], int | None] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._sender = sender
        self._batcher = batcher
        if sender.stopping is None:
            sender.stopping = batcher.stopping  # the sender's waits end when the run stops
        self._outcomes = outcomes
        self._api_base = api_base
        self._trigger = trigger
        self._policy = policy
        self._on_halt = on_halt
        self._on_stop = on_stop
        self._dry_run_out = dry_run_out
        self._persistent = persistent  # watch: outages are waited out, never the end of the run
        # A resumed run: the journaled call of the killed process that may have applied a change, if any.
        self._possibly_sent = possibly_sent
        self._journal = journal  # records each call before it goes out (None: a dry run)

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
        if self._dry_run_out is not None:
            self._write_dry_run(build_call(payload, self._api_base, trigger=self._trigger))
            stats = self._sender.stats
            stats.planned_calls += 1
            stats.planned_credits += write_credits(payload.target, len(payload.items))
            await self._emit(
                payload.items,
                book,
                started,
                status=Status.SKIPPED,
                code="DRY_RUN",
                message="dry run: request written, not sent",
            )
            return
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
            await self._on_halt(halted)
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
            self._on_stop(stop)

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
                if not self._persistent or (isinstance(outage, TransportError) and not outage.retryable):
                    raise
                outages += 1
                if isinstance(outage, CrmUnavailable):
                    # The sender's outage gate paces the CRM from here: while it is down, one call probes it
                    # and this one waits at the gate for its answer.
                    log.warning("syncengine.outage_waiting", reason=str(outage), wait_s=0.0)
                    continue
                cap = 300.0 if isinstance(outage, CreditsExhausted) else 4 * self._policy.probe_interval
                wait = random.uniform(0.5, 1.0) * min(cap, 2.0**outages)
                log.warning("syncengine.outage_waiting", reason=str(outage), wait_s=round(wait, 1))
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
            call = build_call(sub, self._api_base, trigger=self._trigger)
            result = await self._sender.send(sub, call, stream, journal=self._journal_of(stream, pending))
            book.add(pending, result.calls)
            if isinstance(result, GaveUp):
                await self._emit(
                    pending,
                    book,
                    started,
                    status=Status.FAILED,
                    code=result.code,
                    message=result.message,
                    http_status=result.http_status,
                )
                return
            verdict = result.verdict
            if isinstance(verdict, Refused):
                if len(pending) > 1 and _bisectable(payload, verdict):
                    # One bad record can make Zoho refuse the whole body: split to isolate it.
                    half = len(pending) // 2
                    await self._send(payload, pending[:half], started, book)
                    await self._send(payload, pending[half:], started, book)
                    return
                status = Status.REJECTED if verdict.action is Action.REJECT else Status.FAILED
                await self._emit(
                    pending,
                    book,
                    started,
                    status=status,
                    code=verdict.code,
                    message=verdict.message,
                    http_status=verdict.http_status,
                    details=verdict.details,
                )
                return
            # Only the first round's records can have been applied by an earlier process: a later round
            # re-sends records this process saw locked, which is proof they were not.
            earlier = self._possibly_sent if round_ == 0 else None
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

    def _journal_of(self, stream: str, items: Sequence[PayloadItem]) -> Callable[[], object] | None:
        """What the Sender calls when the call is about to go out: one journal line, per record its changes."""
        journal = self._journal
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
            last = item.changes[-1].target
            if any(c.target is not last for c in item.changes):
                outcomes[-len(item.changes) :] = [_superseded(o, last) for o in outcomes[-len(item.changes) :]]
        await send_all(self._outcomes, outcomes)

    def _write_dry_run(self, call: Call) -> None:
        assert self._dry_run_out is not None
        line = {
            "method": call.method,
            "url": call.url,
            "params": dict(call.params),
            "headers": dict(call.headers),
            "body": orjson.loads(call.body) if call.body else None,
        }
        self._dry_run_out.write(orjson.dumps(line) + b"\n")


def _superseded(outcome: Outcome, last: Target) -> Outcome:
    """A change of a record that a later change of another kind superseded (``batcher._net_start``): not sent
    itself. When the record went through, the CRM holds what the later change left: SKIPPED, SUPERSEDED."""
    if outcome.change.target is last:
        return outcome
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
    last = item.changes[-1].target
    return last.operation is Operation.DELETE_RELATED and any(c.target is not last for c in item.changes)


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
    earlier: Callable[[Change], int | None] | None,
) -> set[int]:
    """The delinks answered "relation not found" that an earlier try may really have removed (``id(item)``).

    An earlier try counts only if it may have reached the CRM (this call retried after a drop or a 5xx, or a
    journaled call of a killed process carried the change) and nothing shows it was not applied: when the
    answer removed a relation that the earlier try carried too, that try removed nothing, so a "not found"
    beside it is the CRM's real answer.
    """
    if payload.target.operation is not Operation.DELETE_RELATED or not (ambiguous or earlier is not None):
        return set()
    results = list(zip(pending, verdict.results, strict=True))
    removed_now = [item for item, record in results if record.success]
    # Retries of this call carried exactly these records: one removed now means none was removed before.
    this_call = ambiguous and not removed_now
    calls = {id(item): earlier(item.changes[0]) for item, _ in results} if earlier is not None else {}
    disproved = {calls[id(item)] for item in removed_now if calls.get(id(item)) is not None}
    return {
        id(item)
        for item, record in results
        if relation_not_found(record)
        and (this_call or (calls.get(id(item)) is not None and calls[id(item)] not in disproved))
    }


def _bisectable(payload: Payload, verdict: Refused) -> bool:
    """A whole-call 400 that one record may have caused. Not for related calls (the records share a parent,
    the likelier culprit) nor when Zoho points at the URL (``resource_path_index``) or at ``data`` itself.
    """
    if verdict.action is not Action.REJECT or verdict.http_status != 400 or payload.target.is_related:
        return False
    details = verdict.details
    return "resource_path_index" not in details and details.get("api_name") != "data"


async def send_all(stream: MemoryObjectSendStream[Outcome], outcomes: Sequence[Outcome]) -> None:
    """Hand outcomes to the ledger writer without a scheduling point per outcome while there is room."""
    for outcome in outcomes:
        try:
            stream.send_nowait(outcome)
        except anyio.WouldBlock:
            await stream.send(outcome)


def failed_outcome(change: Change, *, code: str, message: str, note: str | None = None) -> Outcome:
    """An outcome for a change that never reached a call (its stream was halted first)."""
    now = time.time()
    return Outcome(
        change=change,
        status=Status.FAILED,
        code=code,
        message=message,
        attempts=0,
        started_at=now,
        finished_at=now,
        note=note,
    )
