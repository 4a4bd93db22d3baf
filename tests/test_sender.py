"""The Sender through the whole response table of DESIGN §3, one call at a time.

The request function here is scripted: it stands for the network boundary (``Transport.request``, the one
module that owns aiohttp), answers each call with the next scripted ``HttpResponse`` or raises the next
scripted ``TransportError``, and records what it was sent. Everything above that boundary is the real code:
``interpret``, ``Limits`` (AIMD), ``CreditMeter``, ``TokenProvider`` (its accounts endpoint is scripted too),
the outage gate and the retry policy, with short waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import orjson
import pytest

from syncengine.config import Secrets
from syncengine.crm.auth import TokenProvider
from syncengine.crm.requests import build_call, write_credits
from syncengine.crm.responses import Action, Records, Refused
from syncengine.crm.transport import HttpResponse
from syncengine.errors import (
    AuthError,
    BudgetReached,
    CreditsExhausted,
    CrmUnavailable,
    StreamHalted,
    TransportError,
)
from syncengine.limits import CreditMeter, Limits
from syncengine.model import JSON, Change, Operation, Payload, PayloadItem, Target
from syncengine.sender import CallStats, GaveUp, RetryPolicy, Sender, Sent, Stopping

API = "https://crm.test/crm/v7"
UPDATE = Target(operation=Operation.UPDATE, module="Contacts", match_field="External_Contact_ID")
LINK = Target(
    operation=Operation.UPDATE_RELATED,
    module="Contacts",
    related_list="Deals",
    related_module="Deals",
    match_field="External_Deal_ID",
    parent_match_field="External_Contact_ID",
)

# Every wait is a few milliseconds. ``probe_interval`` is above the longest backoff, so a lone failing call
# waits out its own backoff and every failure is charged: the number of tries is exact.
FAST = RetryPolicy(
    attempts=3,
    throttle_attempts=3,
    record_attempts=3,
    auth_attempts=2,
    outage_give_ups=3,
    wait_initial=0.001,
    wait_max=0.004,
    probe_interval=1.0,
)

Step = HttpResponse | TransportError


@dataclass(frozen=True, slots=True)
class Seen:
    """One call as the network saw it."""

    method: str
    url: str
    headers: Mapping[str, str]
    params: Mapping[str, str] | None
    body: bytes | None


class ScriptedRequest:
    """Answers each call with the next step of the script (then ``then``, forever), recording every call."""

    def __init__(self, *steps: Step, then: Step | None = None) -> None:
        self._steps = deque(steps)
        self._then = then
        self.seen: list[Seen] = []

    async def __call__(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> HttpResponse:
        self.seen.append(Seen(method, url, dict(headers), params, body))
        step = self._steps.popleft() if self._steps else self._then
        if step is None:
            raise AssertionError(f"the script has no answer for call {len(self.seen)}")
        if isinstance(step, TransportError):
            raise step
        return step


class TokenEndpoint:
    """A scripted accounts server: every grant is a new token, tok-1, tok-2, ..."""

    def __init__(self) -> None:
        self.grants = 0

    async def request(self, method: str, url: str, *, headers: dict[str, str], form: dict[str, str]) -> HttpResponse:
        self.grants += 1
        return HttpResponse(
            status=200, body=orjson.dumps({"access_token": f"tok-{self.grants}", "expires_in_sec": 3600})
        )


def tokens(endpoint: TokenEndpoint) -> TokenProvider:
    """The real single-flight provider, starting from a ready token tok-0, refreshing against ``endpoint``."""
    secrets = Secrets(client_id="id", client_secret="secret", refresh_token="refresh", access_token="tok-0")
    return TokenProvider(endpoint, "https://accounts.test/oauth/v2/token", secrets)


@dataclass
class Rig:
    """A Sender and everything it shares with the rest of a run."""

    request: ScriptedRequest
    sender: Sender
    limits: Limits
    credits: CreditMeter
    stats: CallStats
    journal: list[tuple[int, int, int]] = field(default_factory=list)  # (calls seen, in flight, complex in flight)

    def journal_call(self) -> None:
        self.journal.append((len(self.request.seen), self.limits.general.in_flight, self.limits.complex_in_flight))

    async def send(self, payload: Payload, *, journal: bool = True) -> Sent | GaveUp:
        call = build_call(payload, API)
        return await self.sender.send(payload, call, "s", journal=self.journal_call if journal else None)


def rig(
    *steps: Step,
    then: Step | None = None,
    policy: RetryPolicy = FAST,
    provider: TokenProvider | None = None,
    budget: int | None = None,
    concurrency: int = 8,
) -> Rig:
    request = ScriptedRequest(*steps, then=then)
    limits = Limits(concurrency=concurrency, sub_concurrency=2)
    credits = CreditMeter(budget)
    stats = CallStats()
    sender = Sender(request=request, tokens=provider, limits=limits, credits=credits, policy=policy, stats=stats)
    return Rig(request=request, sender=sender, limits=limits, credits=credits, stats=stats)


def payload(records: int = 3, target: Target = UPDATE, parent: str | None = None) -> Payload:
    items = []
    for i in range(records):
        fields: dict[str, JSON] = {"Email": f"c{i}@example.test"}
        change = Change(stream="s", seq=i + 1, target=target, key=f"C-{i}", parent=parent, fields=fields)
        items.append(PayloadItem(key=change.key, fields=fields, changes=(change,)))
    return Payload(target=target, parent=parent, items=tuple(items))


def answer(status: int, body: object, *, credits: int | None = None) -> HttpResponse:
    return HttpResponse(status=status, body=orjson.dumps(body), credits_remaining=credits)


def entry(code: str, index: int) -> dict[str, JSON]:
    if code == "SUCCESS":
        return {"code": "SUCCESS", "details": {"id": f"id-{index}"}, "message": "record updated", "status": "success"}
    details: dict[str, JSON] = {"api_name": "Email", "json_path": f"$.data[{index}].Email"}
    return {"code": code, "details": details, "message": f"{code.lower()} here", "status": "error"}


def per_record(status: int, *codes: str) -> HttpResponse:
    return answer(status, {"data": [entry(code, i) for i, code in enumerate(codes)]})


def refusal(status: int, code: str, message: str = "refused", details: dict[str, JSON] | None = None) -> HttpResponse:
    return answer(status, {"code": code, "details": details or {}, "message": message, "status": "error"})


OK = per_record(200, "SUCCESS", "SUCCESS", "SUCCESS")
UNAVAILABLE = refusal(503, "INTERNAL_ERROR", "service unavailable")
THROTTLED = refusal(429, "TOO_MANY_REQUESTS", "too many requests")
EXPIRED = refusal(401, "INVALID_TOKEN", "invalid oauth token")
REFUSED = TransportError(API, "connection refused or unreachable", maybe_sent=False)
TIMED_OUT = TransportError(API, "read timed out", maybe_sent=True)
DROPPED = TransportError(API, "server closed the connection", maybe_sent=True)
BAD_CERT = TransportError(API, "TLS certificate rejected", maybe_sent=False, retryable=False)


# -- answers that are the verdict -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 207, 400], ids=["200", "207", "400-with-data"])
async def test_per_record_answer_is_the_verdict_after_one_call(status: int) -> None:
    """200, 207 and 400 with data[] are a per-record verdict: one call, no retry, each record's code kept."""
    r = rig(
        answer(
            status, {"data": [entry("SUCCESS", 0), entry("INVALID_DATA", 1), entry("RECORD_LOCKED", 2)]}, credits=4321
        )
    )
    result = await r.send(payload(3))
    assert isinstance(result, Sent) and isinstance(result.verdict, Records)
    assert [(x.code, x.success, x.transient) for x in result.verdict.results] == [
        ("SUCCESS", True, False),
        ("INVALID_DATA", False, False),
        ("RECORD_LOCKED", False, True),
    ]
    assert result.verdict.http_status == status and result.verdict.results[0].crm_id == "id-0"
    assert (result.calls, result.ambiguous, len(r.request.seen)) == (1, False, 1)
    assert r.stats.credits_remaining == 4321 and r.stats.calls == 1 and r.stats.retries == 0
    assert r.credits.spent == write_credits(UPDATE, 3)


@pytest.mark.parametrize(
    ("response", "action"),
    [
        (refusal(400, "INVALID_DATA", "invalid data", {"api_name": "Email"}), Action.REJECT),
        (refusal(403, "AUTHORIZATION_FAILED", "no privilege on this record"), Action.REJECT),
        (refusal(404, "INVALID_DATA", "The record does not exist", {"id": "C-0"}), Action.REJECT),
        (answer(200, {"info": "no data array"}), Action.UNEXPECTED),
    ],
    ids=["400-without-data", "403", "404", "200-without-data"],
)
async def test_whole_call_refusal_is_the_verdict_after_one_call(response: HttpResponse, action: Action) -> None:
    """400/403/404 without data[] refuse the whole call: the verdict carries the CRM's code, nothing is retried."""
    r = rig(response)
    result = await r.send(payload(3))
    assert isinstance(result, Sent) and isinstance(result.verdict, Refused)
    assert result.verdict.action is action and result.verdict.http_status == response.status
    body = orjson.loads(response.body)
    assert result.verdict.code == body.get("code", f"HTTP_{response.status}")
    assert result.verdict.details == body.get("details", {})
    assert len(r.request.seen) == 1 and result.calls == 1


@pytest.mark.parametrize(
    ("response", "target"),
    [
        (refusal(400, "INVALID_MODULE", "the module name given seems to be invalid"), UPDATE),
        (refusal(403, "NO_PERMISSION", "permission denied"), UPDATE),
        (refusal(404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"), UPDATE),
        (refusal(401, "OAUTH_SCOPE_MISMATCH", "invalid oauth scope to access this URL"), UPDATE),
        (refusal(400, "INVALID_DATA", "the relation name given seems to be invalid"), LINK),
    ],
    ids=[
        "400-INVALID_MODULE",
        "403-NO_PERMISSION",
        "404-INVALID_URL_PATTERN",
        "401-OAUTH_SCOPE_MISMATCH",
        "related-list-unknown",
    ],
)
async def test_config_error_halts_the_stream(response: HttpResponse, target: Target) -> None:
    """A request-level code that says the config is wrong raises StreamHalted for the stream, after one call."""
    r = rig(response)
    with pytest.raises(StreamHalted) as halted:
        await r.send(payload(2, target=target, parent="P-1" if target.is_related else None))
    assert halted.value.stream == "s"
    assert halted.value.code == orjson.loads(response.body)["code"]
    assert len(r.request.seen) == 1


async def test_unknown_relation_name_rejects_a_plain_update_instead_of_halting() -> None:
    """A "relation name" refusal halts only a related call: on a module update it is an ordinary whole-call refusal."""
    r = rig(refusal(400, "INVALID_DATA", "the relation name given seems to be invalid"))
    result = await r.send(payload(2))
    assert isinstance(result, Sent) and isinstance(result.verdict, Refused)
    assert result.verdict.action is Action.REJECT


# -- 401: one refresh, then AuthError -------------------------------------------------------------------------


async def test_expired_token_is_refreshed_once_and_the_call_retried() -> None:
    """401 INVALID_TOKEN: one refresh, the same call again with the new token; the 401 costs no credits."""
    endpoint = TokenEndpoint()
    r = rig(EXPIRED, OK, provider=tokens(endpoint))
    result = await r.send(payload(3))
    assert isinstance(result, Sent) and isinstance(result.verdict, Records) and result.calls == 2
    assert endpoint.grants == 1
    assert [s.headers["Authorization"] for s in r.request.seen] == ["Zoho-oauthtoken tok-0", "Zoho-oauthtoken tok-1"]
    assert r.request.seen[0].body == r.request.seen[1].body
    assert r.credits.spent == write_credits(UPDATE, 3)


async def test_token_rejected_after_every_refresh_is_an_auth_error() -> None:
    """A token refused again after ``auth_attempts`` refreshes raises AuthError: one try per token, no more."""
    endpoint = TokenEndpoint()
    r = rig(then=EXPIRED, provider=tokens(endpoint))
    with pytest.raises(AuthError) as error:
        await r.send(payload(1))
    assert error.value.code == "INVALID_TOKEN"
    assert endpoint.grants == FAST.auth_attempts
    assert len(r.request.seen) == FAST.auth_attempts + 1
    assert len({s.headers["Authorization"] for s in r.request.seen}) == FAST.auth_attempts + 1


async def test_expired_token_without_a_provider_is_an_auth_error_at_once() -> None:
    """With no token provider a 401 cannot be fixed here: AuthError after the one call."""
    r = rig(EXPIRED)
    with pytest.raises(AuthError):
        await r.send(payload(1))
    assert len(r.request.seen) == 1 and "Authorization" not in r.request.seen[0].headers


# -- 429: throttle, AIMD, spent credits -----------------------------------------------------------------------


async def test_throttled_call_backs_off_halves_the_limit_once_and_is_retried() -> None:
    """429s in a burst halve the concurrency once (AIMD), are retried, and are not charged against the budget."""
    r = rig(THROTTLED, THROTTLED, OK, concurrency=8, budget=write_credits(UPDATE, 3))
    result = await r.send(payload(3))
    assert isinstance(result, Sent) and isinstance(result.verdict, Records) and result.calls == 3
    assert r.limits.general.limit == 4  # one cut per burst, not 8 -> 4 -> 2
    assert r.stats.throttled == 2 and r.stats.retries == 2
    # Only the try that got through is charged: without the refunds the budget would have stopped the retry.
    assert r.credits.spent == write_credits(UPDATE, 3)


async def test_429s_outlasting_the_backoff_mean_the_credits_are_spent() -> None:
    """``throttle_attempts`` 429s in a row raise CreditsExhausted, with every try's credits refunded."""
    r = rig(then=THROTTLED)
    with pytest.raises(CreditsExhausted):
        await r.send(payload(3))
    assert len(r.request.seen) == FAST.throttle_attempts
    assert r.stats.throttled == FAST.throttle_attempts
    assert r.credits.spent == 0


# -- 5xx and transport errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trouble", "ambiguous"),
    [
        ((UNAVAILABLE, UNAVAILABLE), True),
        ((REFUSED, REFUSED), False),
        ((TIMED_OUT, REFUSED), True),
        ((REFUSED, DROPPED), True),
    ],
    ids=["503-503", "refused-refused", "timeout-refused", "refused-dropped"],
)
async def test_transient_trouble_is_retried_until_an_answer(trouble: Sequence[Step], ambiguous: bool) -> None:
    """5xx and transport errors are retried; the answer is ambiguous iff an earlier try may have been applied."""
    r = rig(*trouble, OK)
    result = await r.send(payload(3))
    assert isinstance(result, Sent) and isinstance(result.verdict, Records)
    assert result.calls == 3 and result.ambiguous is ambiguous
    assert r.stats.retries == 2
    assert r.stats.transport_errors == sum(isinstance(t, TransportError) for t in trouble)
    assert len({s.body for s in r.request.seen}) == 1  # the same call every time


@pytest.mark.parametrize(
    ("trouble", "code", "status", "ambiguous"),
    [
        (UNAVAILABLE, "INTERNAL_ERROR", 503, True),
        (refusal(500, "INTERNAL_ERROR", "internal error"), "INTERNAL_ERROR", 500, True),
        (REFUSED, "TRANSPORT_ERROR", None, False),
        (TIMED_OUT, "TRANSPORT_ERROR", None, True),
    ],
    ids=["503", "500", "connection-refused", "read-timeout"],
)
async def test_transient_trouble_outlasting_the_attempts_gives_up(
    trouble: Step, code: str, status: int | None, ambiguous: bool
) -> None:
    """After ``attempts`` tries of transient trouble the verdict is GaveUp, ambiguous when one may have landed."""
    r = rig(then=trouble)
    result = await r.send(payload(3))
    assert isinstance(result, GaveUp)
    assert (result.code, result.http_status, result.ambiguous) == (code, status, ambiguous)
    assert result.calls == FAST.attempts == len(r.request.seen)


async def test_transport_error_no_retry_can_fix_is_raised_at_once() -> None:
    """A rejected certificate is not retried: the TransportError itself stops the run, after one try."""
    r = rig(then=BAD_CERT)
    with pytest.raises(TransportError) as error:
        await r.send(payload(1))
    assert error.value is BAD_CERT and len(r.request.seen) == 1


async def test_calls_giving_up_in_a_row_mean_the_crm_is_unavailable() -> None:
    """``outage_give_ups`` calls in a row that gave up raise CrmUnavailable; an answer in between resets the count."""
    policy = RetryPolicy(attempts=1, outage_give_ups=3, wait_initial=0.001, wait_max=0.004, probe_interval=1.0)
    r = rig(UNAVAILABLE, UNAVAILABLE, OK, UNAVAILABLE, UNAVAILABLE, then=UNAVAILABLE, policy=policy)
    assert isinstance(await r.send(payload(3)), GaveUp)
    assert isinstance(await r.send(payload(3)), GaveUp)
    assert isinstance(await r.send(payload(3)), Sent)  # the CRM answered: the count starts again
    assert isinstance(await r.send(payload(3)), GaveUp)
    assert isinstance(await r.send(payload(3)), GaveUp)
    with pytest.raises(CrmUnavailable):
        await r.send(payload(3))
    assert len(r.request.seen) == 6


@pytest.mark.parametrize("trouble", [UNAVAILABLE, TIMED_OUT, THROTTLED], ids=["503", "read-timeout", "429"])
async def test_a_stop_ends_the_wait_between_tries(trouble: Step) -> None:
    """When the run is stopping, a long backoff after trouble ends at once with Stopping, and no new try starts."""
    slow = RetryPolicy(attempts=3, wait_initial=5.0, wait_max=5.0, probe_interval=10.0)
    r = rig(then=trouble, policy=slow)
    r.sender.stopping = anyio.Event()
    r.sender.stopping.set()
    with anyio.fail_after(1), pytest.raises(Stopping):
        await r.send(payload(1))
    assert len(r.request.seen) == 1


async def test_a_stop_starts_no_new_try_even_after_a_zero_backoff() -> None:
    """Sender.stopping promises "no new try starts": a backoff of 0 (full jitter can draw it) must not send again."""
    zero = RetryPolicy(attempts=3, wait_initial=0.0, wait_max=0.0, probe_interval=1.0)
    r = rig(then=UNAVAILABLE, policy=zero)
    r.sender.stopping = anyio.Event()
    r.sender.stopping.set()
    with pytest.raises(Stopping):
        await r.send(payload(1))
    assert len(r.request.seen) == 1


# -- the credit budget ----------------------------------------------------------------------------------------


async def test_a_call_that_would_exceed_the_budget_is_never_sent() -> None:
    """BudgetReached before the try: the budget is never exceeded, nothing goes out, nothing is journaled."""
    r = rig(OK, budget=write_credits(UPDATE, 3))  # one call's worth
    assert isinstance(await r.send(payload(3)), Sent)
    with pytest.raises(BudgetReached):
        await r.send(payload(3))
    assert len(r.request.seen) == 1 and len(r.journal) == 1
    assert r.credits.spent == write_credits(UPDATE, 3) <= (r.credits.budget or 0)


async def test_budget_counts_credits_per_ten_records() -> None:
    """An 11-record write costs 2 credits: a budget of 1 refuses it before it is sent."""
    r = rig(OK, budget=1)
    with pytest.raises(BudgetReached):
        await r.send(payload(11))
    assert r.request.seen == [] and r.journal == [] and r.credits.spent == 0


class DownTokenEndpoint:
    """An accounts server that cannot be reached."""

    async def request(self, method: str, url: str, *, headers: dict[str, str], form: dict[str, str]) -> HttpResponse:
        raise TransportError(url, "connection refused or unreachable", maybe_sent=False)


@pytest.mark.parametrize("where", ["connection-refused", "token-endpoint-down"])
async def test_a_try_that_never_reached_zoho_costs_no_credits(where: str) -> None:
    """Credits are spent by calls Zoho may have charged: not by a refused connection nor a failed token fetch."""
    if where == "connection-refused":
        r = rig(REFUSED, OK, budget=1)
        assert isinstance(await r.send(payload(3)), Sent)  # the refused try was refunded
        assert r.credits.spent == 1
    else:
        secrets = Secrets(client_id="id", client_secret="secret", refresh_token="refresh")
        provider = TokenProvider(DownTokenEndpoint(), "https://accounts.test/oauth/v2/token", secrets, attempts=1)
        r = rig(OK, provider=provider, budget=1)
        with pytest.raises(TransportError):
            await r.send(payload(3))
        assert r.request.seen == [] and r.credits.spent == 0


# -- the journal ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("records", [3, 11], ids=["simple-call", "complex-call"])
async def test_journal_is_written_once_inside_the_slot_before_the_first_try(records: int) -> None:
    """Through a 503, a 401 and a 429 the journal callback runs once: in the slot, before the first try."""
    r = rig(UNAVAILABLE, EXPIRED, THROTTLED, per_record(200, *["SUCCESS"] * records), provider=tokens(TokenEndpoint()))
    result = await r.send(payload(records))
    assert isinstance(result, Sent) and result.calls == 4
    complex_in_flight = 1 if records > 10 else 0
    assert r.journal == [(0, 1, complex_in_flight)]


async def test_without_a_journal_the_call_still_goes_out() -> None:
    """A dry-run-like caller passes no journal: the Sender sends as usual."""
    r = rig(OK)
    assert isinstance(await r.send(payload(3), journal=False), Sent)
    assert len(r.request.seen) == 1 and r.journal == []
