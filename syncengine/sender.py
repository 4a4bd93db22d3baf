"""The sender: gets one call through the limits, the token and the retries of the response table.

``Sender.send`` returns a verdict (``Sent``) or gives up on transient trouble (``GaveUp``); ``Outage`` is what
every call knows of the CRM's health (while it answers nobody, one call probes it and the others wait for its
answer). ``DryRunSender`` (``dryrun.py``) has the same ``send`` for a dry run.

Every wait here (a backoff, a probe, the gate of an outage) ends at once when the run stops (``Stopping``):
what has no outcome then stays pending, while calls in flight finish and keep theirs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from syncengine.crm.auth import TokenProvider, token_refused
from syncengine.crm.requests import Call, is_complex, write_credits
from syncengine.crm.responses import Action, Records, Refused, interpret
from syncengine.crm.transport import HttpResponse
from syncengine.errors import (
    BudgetReached,
    CreditsExhausted,
    CrmUnavailable,
    StreamHalted,
    TransportError,
)
from syncengine.limits import Backoff, CreditMeter, Limits
from syncengine.model import Payload

__all__ = [
    "Answered",
    "CallStats",
    "GaveUp",
    "Journal",
    "Outage",
    "RetryPolicy",
    "Sender",
    "Sent",
    "Stopping",
    "wait_any",
]


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
        """The engine's one backoff (``limits.Backoff``): uniform in [0, min(max, initial * 2**attempt)]."""
        return Backoff(initial=self.wait_initial, maximum=self.wait_max).wait(attempt)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Answered:
    """A read the CRM answered: its response, for the caller to read."""

    response: HttpResponse
    calls: int


def _read_answer(response: HttpResponse) -> Records | Refused:
    """A read's verdict: any 2xx is the answer (COQL answers 204 when nothing matches); the rest are
    read as any call's (429, an expired token, a 5xx, a request-level refusal)."""
    if 200 <= response.status < 300:
        return Records(http_status=response.status, results=())
    verdict = interpret(response, 0)
    return verdict if isinstance(verdict, Refused) else Records(http_status=response.status, results=())


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
        answer = await self._exchange(
            call,
            stream,
            cost=write_credits(target, count),
            complex_call=is_complex(target, count),
            journal=journal,
            read=lambda response: interpret(response, count, related=target.is_related),
        )
        if isinstance(answer, GaveUp):
            return answer
        verdict, _, tries = answer
        return Sent(verdict=verdict, calls=tries.calls, ambiguous=tries.ambiguous)

    async def query(self, call: Call, stream: str, *, cost: int) -> Answered | GaveUp:
        """Send a read (a COQL lookup) with the same limits, token, credits and retries as ``send``: the
        response is the caller's to read once it is a 2xx, or a 4xx that no try again can change."""
        answer = await self._exchange(call, stream, cost=cost, complex_call=False, journal=None, read=_read_answer)
        if isinstance(answer, GaveUp):
            return answer
        _, response, tries = answer
        return Answered(response=response, calls=tries.calls)

    async def _exchange(
        self,
        call: Call,
        stream: str,
        *,
        cost: int,
        complex_call: bool,
        journal: Callable[[], object] | None,
        read: Callable[[HttpResponse], Records | Refused],
    ) -> tuple[Records | Refused, HttpResponse, _Tries] | GaveUp:
        """Try ``call`` until ``read`` makes a verdict of its response that is final (see ``send``)."""
        tries = _Tries()
        try:
            while True:
                response, token = await self._try(call, cost, complex_call, tries, journal)
                if isinstance(response, TransportError):
                    if not response.maybe_sent:
                        self._credits.refund(cost)  # it never reached Zoho: nothing was charged
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
                verdict = read(response)
                if not (isinstance(verdict, Refused) and verdict.action is Action.REFRESH):
                    # The token was taken: only refusals of fresh tokens in a row say the credentials are
                    # wrong, not tokens that expired one by one over a long run of 429s and 5xx.
                    tries.refreshes = 0
                if isinstance(verdict, Refused) and verdict.action is Action.RETRY:
                    tries.ambiguous = True  # a 5xx (a gateway timeout above all) may come after the CRM applied it
                    gave_up = await self._transient(tries, verdict.code, verdict.message, verdict.http_status)
                    if gave_up is not None:
                        return gave_up
                    continue
                self.outage.answered(tries)
                if isinstance(verdict, Records) or not await self._again(verdict, stream, cost, token, tries):
                    self._succeeded()
                    return verdict, response, tries
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
        if tries.calls and self.stopping is not None and self.stopping.is_set():
            raise Stopping("stopping: no new try starts")  # the first try of a taken payload still goes out
        token = await self._tokens.token() if self._tokens is not None else ""
        if not self._credits.spend(cost):  # after the token: a try that cannot start costs nothing
            raise BudgetReached(f"credit budget {self._credits.budget} reached")
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
                # The token is shared by every stream: no stream can go on (fresh tokens refused: a wrong data centre).
                raise token_refused(self._tokens, verdict.code, verdict.message, tries.refreshes)
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
