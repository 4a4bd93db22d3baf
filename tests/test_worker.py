"""The Worker turns verdicts into outcomes: one outcome per change, whatever the sender answers.

The sender here is scripted (``ScriptedSender``): it answers each call from a rule on the payload it is given,
and records the calls and pauses. The sender's own behaviour (limits, tokens, retries) is ``test_sender.py``'s;
here the Batcher, RunStops, the outcome stream and the dry-run sender are the real ones.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import orjson
import pytest

from syncengine.batcher import Batcher
from syncengine.control import RunControl, RunEnd, RunStops
from syncengine.crm.requests import Call
from syncengine.crm.responses import Action, RecordResult, Records, Refused
from syncengine.dryrun import DryRunSender
from syncengine.errors import AuthError, BudgetReached, CreditsExhausted, CrmError, CrmUnavailable, StreamHalted
from syncengine.model import JSON, Change, Operation, Outcome, Payload, PayloadItem, Status, Target
from syncengine.sender import CallStats, GaveUp, RetryPolicy, Sent
from syncengine.workers import Sends, Worker, WorkerSettings

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
UNLINK = Target(operation=Operation.DELETE_RELATED, module="Contacts", related_list="Deals", related_module="Deals")
POLICY = RetryPolicy(record_attempts=3, wait_initial=0.001, wait_max=0.004)

Answer = Sent | GaveUp | CrmError
Rule = Callable[[Payload], Answer]


class ScriptedSender:
    """A sender whose answer to each call is ``rule(payload)``; it journals like the real one and records calls."""

    def __init__(self, rule: Rule) -> None:
        self.stats = CallStats()
        self.stopping: anyio.Event | None = None
        self._rule = rule
        self.calls: list[Payload] = []
        self.pauses: list[float] = []

    async def send(
        self, payload: Payload, call: Call, stream: str, *, journal: Callable[[], object] | None = None
    ) -> Sent | GaveUp:
        if journal is not None:
            journal()
        self.calls.append(payload)
        self.stats.calls += 1
        answer = self._rule(payload)
        if isinstance(answer, CrmError):
            raise answer
        return answer

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def keys(self) -> list[list[str]]:
        """Per call, the keys it carried."""
        return [[item.key for item in p.items] for p in self.calls]


def success(key: str) -> RecordResult:
    return RecordResult(
        success=True,
        transient=False,
        code="SUCCESS",
        message="record updated",
        details={"id": f"id-{key}"},
        crm_id=f"id-{key}",
    )


def error(code: str, message: str = "", details: Mapping[str, JSON] | None = None) -> RecordResult:
    return RecordResult(
        success=False,
        transient=code in ("RECORD_LOCKED", "DEPENDENT_SERVICE_ERROR"),
        code=code,
        message=message or code.lower(),
        details=details or {},
        crm_id=None,
    )


NOT_FOUND = error("INVALID_DATA", "relation not found", {"id": "D"})


def per_record(answer: Callable[[PayloadItem], RecordResult], *, status: int = 200, ambiguous: bool = False) -> Rule:
    """A rule answering each record of each call on its own."""

    def rule(payload: Payload) -> Sent:
        results = tuple(answer(item) for item in payload.items)
        return Sent(verdict=Records(http_status=status, results=results), calls=1, ambiguous=ambiguous)

    return rule


def whole_call(status: int, code: str, details: Mapping[str, JSON]) -> Sent:
    verdict = Refused(http_status=status, action=Action.REJECT, code=code, message="refused", details=details)
    return Sent(verdict=verdict, calls=1, ambiguous=False)


def change(seq: int, key: str, target: Target = UPDATE, parent: str | None = None, **fields: JSON) -> Change:
    return Change(stream="s", seq=seq, target=target, key=key, parent=parent, fields=fields)


@dataclass
class Result:
    outcomes: list[Outcome]
    stops: RunStops
    batcher: Batcher

    def by_seq(self) -> dict[int, Outcome]:
        return {o.change.seq: o for o in self.outcomes}

    def statuses(self) -> dict[int, tuple[Status, str | None]]:
        return {seq: (o.status, o.code) for seq, o in sorted(self.by_seq().items())}


async def run(
    changes: Sequence[Change],
    sender: Sends,
    *,
    max_items: int = 100,
    possibly_sent: Callable[[Change], frozenset[int]] | None = None,
    journal: list[tuple[str, list[tuple[str, list[int]]]]] | None = None,
) -> Result:
    """Feed ``changes`` through a real Batcher to one Worker; every outcome it sends, and the run's stops."""

    def record(stream: str, records: Sequence[tuple[str, Sequence[int]]]) -> int:
        assert journal is not None
        journal.append((stream, [(key, list(seqs)) for key, seqs in records]))
        return len(journal)

    settings = WorkerSettings(
        api_base=API,
        trigger=None,
        policy=POLICY,
        possibly_sent=possibly_sent,
        journal=record if journal is not None else None,
    )
    batcher = Batcher()
    send, receive = anyio.create_memory_object_stream[Outcome](1000)
    with send, receive:
        stops = RunStops(RunControl(), batcher, send)
        worker = Worker(sender, batcher, send, stops, settings)
        batcher.open_input()
        for c in changes:
            await batcher.put(c, max_items=max_items, linger=60)
        batcher.close_input()
        with anyio.fail_after(5):
            await worker.run()
        outcomes: list[Outcome] = []
        while True:
            try:
                outcomes.append(receive.receive_nowait())
            except anyio.WouldBlock:
                break
    seqs = [o.change.seq for o in outcomes]
    assert len(seqs) == len(set(seqs)), f"a change got two outcomes: {seqs}"
    return Result(outcomes=outcomes, stops=stops, batcher=batcher)


# -- per-record outcomes --------------------------------------------------------------------------------------


async def test_each_record_gets_its_own_outcome_with_the_crms_code() -> None:
    """A per-record answer: SUCCESS with the CRM id, REJECTED with the CRM's code, message and details."""
    answers = {
        "C-1": success("C-1"),
        "C-2": error("MANDATORY_NOT_FOUND", "required field not found", {"api_name": "Last_Name"}),
        "C-3": error("DUPLICATE_DATA", "duplicate data", {"api_name": "Email", "id": "id-9"}),
    }
    sender = ScriptedSender(per_record(lambda item: answers[item.key], status=207))
    journal: list[tuple[str, list[tuple[str, list[int]]]]] = []
    result = await run([change(1, "C-1", Email="a@x"), change(2, "C-2"), change(3, "C-3")], sender, journal=journal)
    got = result.by_seq()
    assert result.statuses() == {
        1: (Status.SUCCESS, "SUCCESS"),
        2: (Status.REJECTED, "MANDATORY_NOT_FOUND"),
        3: (Status.REJECTED, "DUPLICATE_DATA"),
    }
    assert got[1].crm_id == "id-C-1" and got[2].crm_id is None
    assert got[2].message == "required field not found" and got[2].details == {"api_name": "Last_Name"}
    assert all(o.http_status == 207 and o.attempts == 1 for o in got.values())
    assert sender.keys() == [["C-1", "C-2", "C-3"]]
    assert journal == [("s", [("\x00C-1", [1]), ("\x00C-2", [2]), ("\x00C-3", [3])])]
    assert result.stops.end() is RunEnd.COMPLETED


async def test_a_call_that_gave_up_fails_its_records_for_a_later_re_drive() -> None:
    """GaveUp (transient trouble outlasted the retries): every record FAILED with the last code and status."""
    gave_up = GaveUp(code="INTERNAL_ERROR", message="service unavailable", http_status=503, calls=4, ambiguous=True)
    sender = ScriptedSender(lambda payload: gave_up)
    result = await run([change(1, "C-1"), change(2, "C-2")], sender)
    assert result.statuses() == {1: (Status.FAILED, "INTERNAL_ERROR"), 2: (Status.FAILED, "INTERNAL_ERROR")}
    assert all(o.http_status == 503 and o.attempts == 4 for o in result.outcomes)
    assert not result.batcher.stopped


# -- transient per-record trouble -----------------------------------------------------------------------------


async def test_a_locked_record_is_sent_again_in_a_later_round() -> None:
    """RECORD_LOCKED: that record alone goes out again after a pause, and then succeeds."""
    seen: dict[str, int] = {}

    def answer(item: PayloadItem) -> RecordResult:
        seen[item.key] = seen.get(item.key, 0) + 1
        return error("RECORD_LOCKED") if item.key == "C-1" and seen[item.key] == 1 else success(item.key)

    sender = ScriptedSender(per_record(answer))
    result = await run([change(1, "C-1"), change(2, "C-2")], sender)
    assert result.statuses() == {1: (Status.SUCCESS, "SUCCESS"), 2: (Status.SUCCESS, "SUCCESS")}
    assert sender.keys() == [["C-1", "C-2"], ["C-1"]]
    assert result.by_seq()[1].attempts == 2 and result.by_seq()[2].attempts == 1
    assert len(sender.pauses) == 1


@pytest.mark.parametrize("code", ["RECORD_LOCKED", "DEPENDENT_SERVICE_ERROR"])
async def test_a_record_locked_round_after_round_fails_after_record_attempts(code: str) -> None:
    """Per-record transient trouble is bounded: after ``record_attempts`` rounds the record is FAILED."""
    sender = ScriptedSender(per_record(lambda item: error(code) if item.key == "C-1" else success(item.key)))
    result = await run([change(1, "C-1"), change(2, "C-2")], sender)
    assert result.statuses() == {1: (Status.FAILED, code), 2: (Status.SUCCESS, "SUCCESS")}
    assert sender.keys() == [["C-1", "C-2"]] + [["C-1"]] * (POLICY.record_attempts - 1)
    assert result.by_seq()[1].attempts == POLICY.record_attempts
    assert len(sender.pauses) == POLICY.record_attempts - 1  # no pause after the last round


# -- whole-call refusals --------------------------------------------------------------------------------------


async def test_a_whole_call_400_is_bisected_down_to_the_bad_record() -> None:
    """One bad record makes Zoho refuse the whole body: halves are sent until it stands alone, REJECTED."""

    def rule(payload: Payload) -> Answer:
        if any(item.key == "C-3" for item in payload.items):
            return whole_call(400, "INVALID_DATA", {"api_name": "Email"})
        return per_record(lambda item: success(item.key))(payload)

    sender = ScriptedSender(rule)
    result = await run([change(i, f"C-{i}") for i in range(1, 5)], sender)
    assert sender.keys() == [["C-1", "C-2", "C-3", "C-4"], ["C-1", "C-2"], ["C-3", "C-4"], ["C-3"], ["C-4"]]
    assert result.statuses() == {
        1: (Status.SUCCESS, "SUCCESS"),
        2: (Status.SUCCESS, "SUCCESS"),
        3: (Status.REJECTED, "INVALID_DATA"),
        4: (Status.SUCCESS, "SUCCESS"),
    }
    assert result.by_seq()[3].details == {"api_name": "Email"} and result.by_seq()[3].http_status == 400


@pytest.mark.parametrize(
    ("status", "details", "target"),
    [
        (400, {"api_name": "data"}, UPDATE),
        (400, {"resource_path_index": 0}, UPDATE),
        (400, {"resource_path_index": 1}, LINK),
        (403, {}, UPDATE),
        (404, {"id": "P-1"}, UNLINK),
    ],
    ids=["points-at-data", "points-at-url", "related-points-at-url", "403", "delink-names-the-parent"],
)
async def test_a_refusal_no_one_record_caused_rejects_every_record_at_once(
    status: int, details: Mapping[str, JSON], target: Target
) -> None:
    """No bisection when the refusal is not one record's fault: every record gets the code, after one call."""
    parent = "P-1" if target.is_related else None
    sender = ScriptedSender(lambda payload: whole_call(status, "INVALID_DATA", details))
    result = await run([change(i, f"C-{i}", target, parent) for i in range(1, 5)], sender)
    assert len(sender.calls) == 1
    assert result.statuses() == {i: (Status.REJECTED, "INVALID_DATA") for i in range(1, 5)}
    assert all(o.http_status == status and o.details == (details or None) for o in result.outcomes)


@pytest.mark.parametrize(
    ("target", "status"), [(UPDATE, 400), (LINK, 400), (UNLINK, 404)], ids=["update", "related", "delink-404"]
)
async def test_a_bad_record_is_isolated_in_related_calls_too(target: Target, status: int) -> None:
    """A whole-call refusal one record can cause (a related id Zoho finds invalid, a delink naming a deleted
    record) is split on related calls too: the other records go through."""
    parent = "P-1" if target.is_related else None

    def rule(payload: Payload) -> Answer:
        if any(item.key == "C-6" for item in payload.items):
            return whole_call(status, "INVALID_DATA", {})
        return per_record(lambda item: success(item.key))(payload)

    sender = ScriptedSender(rule)
    result = await run([change(i, f"C-{i}", target, parent) for i in range(1, 9)], sender)
    want = {i: (Status.SUCCESS, "SUCCESS") for i in range(1, 9)} | {6: (Status.REJECTED, "INVALID_DATA")}
    assert result.statuses() == want
    assert len(sender.calls) <= 1 + 2 * 3  # two calls per halving, 8 -> 1


async def test_a_refusal_no_record_causes_costs_at_most_the_cap() -> None:
    """Every part refused alike and none answered record by record: at most 2*log2(n)+2 extra calls, then the
    records never tried alone get the refusal with a note saying why."""
    sender = ScriptedSender(lambda payload: whole_call(400, "INVALID_DATA", {}))
    result = await run([change(i, f"C-{i}") for i in range(1, 101)], sender)
    assert len(sender.calls) == 1 + int(2 * math.log2(100) + 2) == 16
    assert result.statuses() == {i: (Status.REJECTED, "INVALID_DATA") for i in range(1, 101)}
    alone = {p.items[0].key for p in sender.calls if len(p.items) == 1}
    for outcome in result.outcomes:
        if outcome.change.key in alone:
            assert outcome.note is None  # the CRM refused it alone: a fact
        else:
            assert outcome.note is not None and "cap of 15 extra calls" in outcome.note


async def test_once_a_part_is_answered_record_by_record_splitting_goes_on_past_the_cap() -> None:
    """Eight bad records in 100, spread out: a part answered record by record proves records are the cause, so
    every good record goes through even though that takes more than the cap."""
    bad = {f"C-{i}" for i in range(5, 100, 12)}

    def rule(payload: Payload) -> Answer:
        if any(item.key in bad for item in payload.items):
            return whole_call(400, "INVALID_DATA", {})
        return per_record(lambda item: success(item.key))(payload)

    sender = ScriptedSender(rule)
    result = await run([change(i, f"C-{i}") for i in range(1, 101)], sender)
    assert result.statuses() == {
        i: (Status.REJECTED, "INVALID_DATA") if f"C-{i}" in bad else (Status.SUCCESS, "SUCCESS") for i in range(1, 101)
    }
    assert all(o.note is None for o in result.outcomes)
    assert len(sender.calls) > 16


async def test_a_persistent_lock_is_rejected_at_once_and_a_merged_record_is_not_split_for_it() -> None:
    """RECORD_LOCKED by record_locking is the CRM's refusal: REJECTED after one call, with its message; its
    merged changes are not sent again one by one (the lock, not a value, refused them)."""
    locked = RecordResult(
        success=False,
        transient=False,
        code="RECORD_LOCKED",
        message="Sorry, you cannot perform this operation as the record is locked.",
        details={"api_name": "id", "action": "record_locking"},
        crm_id=None,
    )
    sender = ScriptedSender(per_record(lambda item: locked if item.key == "C-1" else success(item.key)))
    result = await run([change(1, "C-1", Email="a@x"), change(2, "C-2"), change(3, "C-1", Phone="1")], sender)
    assert result.statuses() == {
        1: (Status.REJECTED, "RECORD_LOCKED"),
        2: (Status.SUCCESS, "SUCCESS"),
        3: (Status.REJECTED, "RECORD_LOCKED"),
    }
    assert len(sender.calls) == 1 and sender.pauses == []
    assert result.by_seq()[1].message == locked.message


async def test_a_refused_merged_record_is_sent_again_without_its_last_change() -> None:
    """Two changes merged into one refused record: the earlier goes alone (SUCCESS), the last alone (REJECTED)."""

    def answer(item: PayloadItem) -> RecordResult:
        if item.fields.get("Phone") == "not a phone":
            return error("INVALID_DATA", "invalid phone", {"api_name": "Phone"})
        return success(item.key)

    sender = ScriptedSender(per_record(answer))
    changes = [change(1, "C-1", Email="new@x"), change(2, "C-2"), change(3, "C-1", Phone="not a phone")]
    result = await run(changes, sender)
    assert [[dict(i.fields) for i in p.items] for p in sender.calls] == [
        [{"Email": "new@x", "Phone": "not a phone"}, {}],
        [{"Email": "new@x"}],
        [{"Phone": "not a phone"}],
    ]
    assert result.statuses() == {
        1: (Status.SUCCESS, "SUCCESS"),
        2: (Status.SUCCESS, "SUCCESS"),
        3: (Status.REJECTED, "INVALID_DATA"),
    }
    assert result.by_seq()[3].details == {"api_name": "Phone"}


# -- the delink ambiguity rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ambiguous", "journaled", "answers", "expected"),
    [
        (True, None, (NOT_FOUND, NOT_FOUND), (Status.SUCCESS, Status.SUCCESS)),
        (False, None, (NOT_FOUND, NOT_FOUND), (Status.REJECTED, Status.REJECTED)),
        (True, None, (success("D-1"), NOT_FOUND), (Status.SUCCESS, Status.REJECTED)),
        (False, {"D-1": 7, "D-2": 7}, (NOT_FOUND, NOT_FOUND), (Status.SUCCESS, Status.SUCCESS)),
        (False, {"D-1": 7, "D-2": 7}, (success("D-1"), NOT_FOUND), (Status.SUCCESS, Status.REJECTED)),
        (False, {"D-1": 7, "D-2": 8}, (success("D-1"), NOT_FOUND), (Status.SUCCESS, Status.SUCCESS)),
    ],
    ids=[
        "retried-nothing-removed-now",
        "not-retried",
        "retried-a-mate-removed-now",
        "resumed-journaled",
        "resumed-mate-of-the-same-call-removed-now",
        "resumed-mate-of-another-call-removed-now",
    ],
)
async def test_relation_not_found_is_success_only_when_an_earlier_try_may_have_removed_it(
    ambiguous: bool,
    journaled: Mapping[str, int] | None,
    answers: tuple[RecordResult, RecordResult],
    expected: tuple[Status, Status],
) -> None:
    """A delink answered "relation not found" is SUCCESS (with a note) only if an earlier try of that change may
    have been applied and no record of that same try was removed now; otherwise the CRM's REJECTED stands."""
    by_key = {"D-1": answers[0], "D-2": answers[1]}
    sender = ScriptedSender(per_record(lambda item: by_key[item.key], ambiguous=ambiguous))
    possibly_sent = None if journaled is None else (lambda c: frozenset({journaled[c.key]}))
    result = await run(
        [change(1, "D-1", UNLINK, "P-1"), change(2, "D-2", UNLINK, "P-1")], sender, possibly_sent=possibly_sent
    )
    got = result.by_seq()
    assert (got[1].status, got[2].status) == expected
    for seq, answer in ((1, answers[0]), (2, answers[1])):
        note = got[seq].note
        if answer is NOT_FOUND and got[seq].status is Status.SUCCESS:
            assert note is not None and "ambiguous retry" in note
        if got[seq].status is Status.REJECTED:
            assert (got[seq].code, got[seq].message) == ("INVALID_DATA", "relation not found")
    assert len(sender.calls) == 1


# -- what stops more than one payload -------------------------------------------------------------------------


async def test_a_halted_stream_fails_its_payload_and_everything_it_held() -> None:
    """StreamHalted: the payload's changes and the stream's held payloads end FAILED with the code; RunStops says so."""
    halted = StreamHalted("s", "INVALID_MODULE", "the module name given seems to be invalid")
    sender = ScriptedSender(lambda payload: halted)
    result = await run([change(i, f"C-{i}") for i in range(1, 4)], sender, max_items=1)
    assert len(sender.calls) == 1  # the other payloads were never sent
    assert result.statuses() == {i: (Status.FAILED, "INVALID_MODULE") for i in range(1, 4)}
    assert all(o.note == "stream 's' halted" for o in result.outcomes)
    assert result.stops.halted == ["s: INVALID_MODULE: the module name given seems to be invalid"]
    assert result.stops.end() is RunEnd.HALTED and not result.batcher.stopped


@pytest.mark.parametrize(
    ("stop", "end"),
    [
        (CreditsExhausted("429s in a row"), RunEnd.PAUSED),
        (BudgetReached("credit budget 10 reached"), RunEnd.PAUSED),
        (CrmUnavailable("30 calls in a row gave up"), RunEnd.PAUSED),
        (AuthError("invalid_client"), RunEnd.FATAL),
    ],
    ids=["credits-exhausted", "budget-reached", "crm-unavailable", "auth-error"],
)
async def test_an_error_that_stops_sending_leaves_the_rest_pending(stop: CrmError, end: RunEnd) -> None:
    """Credits, budget, outage, credentials: no outcome is invented, the batcher stops, the run ends as it says."""
    sender = ScriptedSender(lambda payload: stop)
    result = await run([change(i, f"C-{i}") for i in range(1, 4)], sender, max_items=1)
    assert result.outcomes == [] and len(sender.calls) == 1
    assert result.batcher.stopped and result.stops.reason == str(stop)
    assert result.stops.end() is end


# -- a dry run ------------------------------------------------------------------------------------------------


async def test_a_dry_run_writes_the_call_and_skips_every_change() -> None:
    """DryRunSender: each change SKIPPED/DRY_RUN, the call written as one JSON line, its cost counted."""
    out = io.BytesIO()
    sender = DryRunSender(out, CallStats())
    result = await run([change(1, "C-1", Email="a@x"), change(2, "C-2", Email="b@x")], sender)
    assert result.statuses() == {1: (Status.SKIPPED, "DRY_RUN"), 2: (Status.SKIPPED, "DRY_RUN")}
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert (line["method"], line["url"], line["params"]) == ("PUT", f"{API}/Contacts", {})
    assert line["headers"] == {"Content-Type": "application/json", "X-EXTERNAL": "Contacts.External_Contact_ID"}
    assert line["body"] == {
        "data": [
            {"Email": "a@x", "External_Contact_ID": "C-1"},
            {"Email": "b@x", "External_Contact_ID": "C-2"},
        ]
    }
    assert (sender.stats.planned_calls, sender.stats.planned_credits, sender.stats.calls) == (1, 1, 0)
