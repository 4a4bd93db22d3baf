"""Related and delink results matched exactly (issue 11, point 4; zoho-fidelity.md rows 5, 7, 9, 10).

Zoho promises no order for update-related and delink answers: the strict sandbox shuffles them, and every
record must still get its own entry's answer, matched by what the entry names. A record no entry names is
sent again, never given a neighbour's answer. A delink whose whole call answers 404 "The record does not
exist" is split so the other delinks go through, and a delink that removed nothing is never SUCCESS. Delinks
by external ID go 100 per call in the multi form. Outcomes are checked row by row from the ledger, and the
CRM's state and history of applied writes from the sandbox.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from syncengine.config import Config
from syncengine.model import Status
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.dispatch import Call
from syncengine.sandbox.envelopes import Reply, request_error
from tests.conftest import run, stat, write_config, write_csv
from tests.test_ambiguity import seed_for
from tests.zoho_readings import Scripted, contact_ids, outcomes, related_stream, seed, unlinked

ROLE = "111111000000026002"
NOT_A_RECORD = "111111000009999999"


def deal_id(sb: Sandbox, d: int = 0) -> str:
    return str(sb.state.find_id("Deals", "External_Deal_ID", f"D{d}"))


def linked_to(sb: Sandbox, d: int = 0) -> set[str]:
    return set(sb.state.related("Deals", deal_id(sb, d), "Contacts"))


def config_of(tmp_path: Path, sb: Sandbox, operation: str, rows: list[list[str]], **stream: object) -> Config:
    header = ["deal", "contact", "role"] if operation == "update_related" else ["deal", "contact"]
    src = write_csv(tmp_path / f"{operation}.csv", header, rows)
    fields = {"fields": {"Contact_Role": "role"}} if operation == "update_related" else {}
    return write_config(tmp_path / "sync.toml", sb.url, [related_stream("s", operation, src, **fields, **stream)])  # type: ignore[arg-type]


# -- shuffled answers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["ids", "external"])
async def test_shuffled_update_related_answers_are_matched_record_by_record(tmp_path: Path, by: str) -> None:
    """Strict: 40 links with 8 bad related keys, answered in a shuffled order: each row gets its own answer."""
    async with Sandbox(SandboxOptions(strict=True, record_history=True)) as sb:
        seed(sb, contacts=40)
        ids = contact_ids(sb, 40)
        bad = set(range(3, 40, 5))
        if by == "ids":
            keys = [NOT_A_RECORD[:-2] + f"{c:02d}" if c in bad else ids[c] for c in range(40)]
            rows = [[deal_id(sb), k, ROLE] for k in keys]
            config = config_of(tmp_path, sb, "update_related", rows, parent_field=None, related_field=None)
        else:
            rows = [["D0", f"NOPE{c}" if c in bad else f"C{c}", ROLE] for c in range(40)]
            config = config_of(tmp_path, sb, "update_related", rows)
        result = await run(config)
        now = linked_to(sb)
        assert stat(sb, "calls", "update_related") == 1
    got = await outcomes(config)
    assert result.summary.adds_up and len(got) == 40
    for c in range(40):
        row = got[c + 1]
        if c in bad:
            assert (row.status, row.code) == (Status.REJECTED, "INVALID_DATA"), (c, row)
        else:
            assert (row.status, row.crm_id) == (Status.SUCCESS, ids[c]), (c, row)
    assert now == {ids[c] for c in range(40) if c not in bad}


async def test_shuffled_delink_answers_are_matched_record_by_record(tmp_path: Path) -> None:
    """Strict: 60 delinks by ids, 20 of relations that do not exist, shuffled: exactly those 20 are REJECTED
    "relation not found", and the 40 the CRM removed are SUCCESS."""
    absent = set(range(0, 60, 3))
    async with Sandbox(SandboxOptions(strict=True, record_history=True)) as sb:
        seed(sb, contacts=60, linked=[(0, c) for c in range(60) if c not in absent])
        ids = contact_ids(sb, 60)
        config = config_of(
            tmp_path, sb, "delete_related", [[deal_id(sb), i] for i in ids], parent_field=None, related_field=None
        )
        result = await run(config)
        removed, calls = unlinked(sb), stat(sb, "calls", "delete_related")
    got = await outcomes(config)
    assert result.summary.adds_up and calls == 1
    assert sorted(removed) == sorted(ids[c] for c in range(60) if c not in absent)
    for c in range(60):
        row = got[c + 1]
        want = (
            (Status.REJECTED, "INVALID_DATA", "relation not found")
            if c in absent
            else (Status.SUCCESS, "SUCCESS", "relation removed")
        )
        assert (row.status, row.code, row.message) == want, (c, row)
        assert row.note is None


# -- the multi form for delinks by external ID -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parent_field", "related_field"),
    [("External_Deal_ID", "External_Contact_ID"), (None, "External_Contact_ID"), ("External_Deal_ID", None)],
    ids=["both-external", "related-external", "parent-external"],
)
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_delinks_by_external_id_go_up_to_100_per_call(
    tmp_path: Path, strict: bool, parent_field: str | None, related_field: str | None
) -> None:
    """150 delinks of one deal by external IDs: 2 calls in the multi form (``?ids=``), not 150; the 30 whose
    relation is absent are REJECTED, the 120 removed SUCCESS, however the answer is ordered."""
    absent = set(range(0, 150, 5))
    async with Sandbox(SandboxOptions(strict=strict, record_history=True)) as sb:
        seed(sb, contacts=150, linked=[(0, c) for c in range(150) if c not in absent])
        ids = contact_ids(sb, 150)
        parent = "D0" if parent_field else deal_id(sb)
        rows = [[parent, f"C{c}" if related_field else ids[c]] for c in range(150)]
        config = config_of(tmp_path, sb, "delete_related", rows, parent_field=parent_field, related_field=related_field)
        result = await run(config)
        removed = unlinked(sb)
        calls = (stat(sb, "calls", "delete_related"), sb.stats.calls.get("delete_related_one", 0))
    assert calls == (2, 0)
    assert sorted(removed) == sorted(ids[c] for c in range(150) if c not in absent)
    got = await outcomes(config)
    assert result.summary.adds_up and len(got) == 150
    for c in range(150):
        status = Status.REJECTED if c in absent else Status.SUCCESS
        assert got[c + 1].status is status, (c, got[c + 1])


async def test_an_external_key_with_a_comma_is_delinked_alone_in_the_single_form(tmp_path: Path) -> None:
    """Zoho splits ``?ids=`` on commas: the value "x,y" goes alone, in the path; the others in one call."""
    async with Sandbox(SandboxOptions(record_history=True)) as sb:
        seed(sb, contacts=5, linked=[(0, c) for c in range(5)], contact_keys={2: "x,y"})
        keys = ["C0", "C1", "x,y", "C3", "C4"]
        config = config_of(tmp_path, sb, "delete_related", [["D0", k] for k in keys])
        result = await run(config)
        calls = (stat(sb, "calls", "delete_related"), stat(sb, "calls", "delete_related_one"))
        assert linked_to(sb) == set()
    assert calls == (1, 1) and result.summary.succeeded == 5


# -- the whole-call 404 of a delink naming a deleted record -------------------------------------------------------


@pytest.mark.parametrize("by", ["ids", "external"])
async def test_a_delink_naming_a_deleted_record_is_split_so_the_others_go_through(tmp_path: Path, by: str) -> None:
    """Strict: 100 delinks, one naming a record that does not exist, answer 404 "The record does not exist" for
    the whole call: the call is split, the 97 linked are removed (SUCCESS), the 2 never linked are REJECTED
    "relation not found", the missing one REJECTED with the CRM's answer; within 2*log2(100)+2 extra calls."""
    never, missing = {10, 70}, 42
    async with Sandbox(SandboxOptions(strict=True, record_history=True)) as sb:
        seed(sb, contacts=100, linked=[(0, c) for c in range(100) if c not in never | {missing}])
        ids = contact_ids(sb, 100)
        if by == "ids":
            keys = [NOT_A_RECORD if c == missing else ids[c] for c in range(100)]
            rows, fields = [[deal_id(sb), k] for k in keys], {"parent_field": None, "related_field": None}
        else:
            rows, fields = [["D0", "GONE" if c == missing else f"C{c}"] for c in range(100)], {}
        config = config_of(tmp_path, sb, "delete_related", rows, **fields)
        result = await run(config)
        removed, calls = unlinked(sb), stat(sb, "calls_total")
    assert sorted(removed) == sorted(ids[c] for c in range(100) if c not in never | {missing})
    assert len(removed) == 97 and 2 < calls <= 1 + int(2 * math.log2(100) + 2)
    got = await outcomes(config)
    assert result.summary.adds_up and not result.halted
    for c in range(100):
        row = got[c + 1]
        if c == missing:
            assert (row.status, row.code) == (Status.REJECTED, "INVALID_DATA"), row
            if by == "ids":  # alone, still in ?ids=: the CRM's 404 itself
                assert (row.http_status, row.message) == (404, "The record does not exist"), row
        elif c in never:
            assert (row.status, row.message, row.note) == (Status.REJECTED, "relation not found", None), (c, row)
        else:
            assert row.status is Status.SUCCESS, (c, row)


async def test_a_split_delink_after_a_lost_answer_reports_only_what_it_removed(tmp_path: Path) -> None:
    """Strict: the first try's answer is lost (dropped after the CRM answered 404: nothing applied), the retry
    answers 404 again and the call is split: a delink that removed nothing is still REJECTED, not SUCCESS."""
    never, missing = {5, 25}, 17
    seed_ = seed_for(["after"] + ["none"] * 20, drop_rate=0.05)
    async with Sandbox(SandboxOptions(strict=True, record_history=True, seed=seed_, drop_rate=0.05)) as sb:
        seed(sb, contacts=32, linked=[(0, c) for c in range(32) if c not in never | {missing}])
        ids = contact_ids(sb, 32)
        keys = [NOT_A_RECORD if c == missing else ids[c] for c in range(32)]
        config = config_of(
            tmp_path, sb, "delete_related", [[deal_id(sb), k] for k in keys], parent_field=None, related_field=None
        )
        result = await run(config)
        removed, drops = unlinked(sb), stat(sb, "drops_after")
    assert drops == 1 and len(removed) == 29 and len(set(removed)) == 29
    got = await outcomes(config)
    assert result.summary.adds_up
    assert {c for c in range(32) if got[c + 1].status is Status.SUCCESS} == set(range(32)) - never - {missing}
    for c in never | {missing}:
        assert got[c + 1].status is Status.REJECTED and got[c + 1].note is None, got[c + 1]


# -- a record the answer names no entry for ------------------------------------------------------------------------


def drop_entry(kind: str, index: int, times: int) -> Scripted:
    """A sandbox that applies ``kind`` calls but leaves out of the first ``times`` answers the entry naming the
    record at ``index`` of the first such call (nothing promises one entry per record in related answers)."""
    key: list[str] = []
    left = [times]

    def reshape(call: Call, own: Reply) -> Reply | None:
        body = own.body
        if (
            call.route.kind != kind
            or left[0] <= 0
            or not isinstance(body, dict)
            or not isinstance(body.get("data"), list)
        ):
            return None
        if not key:
            item = call.ids[index] if call.ids else call.data[index]
            key.append(item if isinstance(item, str) else str(item.get("External_Contact_ID") or item.get("id")))
        data = body["data"]
        assert isinstance(data, list)
        entries = [e for e in data if not (isinstance(e, dict) and key[0] in str(e.get("details")))]
        left[0] -= 1
        return Reply(status=own.status, body={"data": entries})

    return Scripted(SandboxOptions(strict=True, record_history=True), reshape=reshape)


async def test_a_delink_whose_entry_is_missing_is_sent_again_and_found_removed(tmp_path: Path) -> None:
    """The CRM removed all 10 but its answer names only 9: the tenth is sent again, found "relation not
    found", and is SUCCESS with the note that an earlier try removed it (the history shows one unlink each)."""
    sb = drop_entry("delete_related", 7, times=1)
    async with sb:
        seed(sb, contacts=10, linked=[(0, c) for c in range(10)])
        ids = contact_ids(sb, 10)
        config = config_of(
            tmp_path, sb, "delete_related", [[deal_id(sb), i] for i in ids], parent_field=None, related_field=None
        )
        result = await run(config)
        removed = unlinked(sb)
        calls = [n for kind, n in sb.seen if kind == "delete_related"]
    assert sorted(removed) == sorted(ids) and calls == [10, 1]
    got = await outcomes(config)
    assert result.summary.succeeded == 10
    assert got[8].note is not None and "ambiguous" in got[8].note and got[8].attempts == 2
    assert all(got[c].note is None for c in got if c != 8)


async def test_a_link_whose_entry_never_comes_is_failed_as_unknown_never_success(tmp_path: Path) -> None:
    """Every answer leaves one link's entry out: after the record's rounds it is FAILED, UNKNOWN_RESULT
    (retryable), while the others are SUCCESS."""
    sb = drop_entry("update_related", 2, times=100)
    async with sb:
        seed(sb, contacts=6)
        config = config_of(tmp_path, sb, "update_related", [["D0", f"C{c}", ROLE] for c in range(6)])
        result = await run(config)
        calls = [n for kind, n in sb.seen if kind == "update_related"]
    got = await outcomes(config)
    assert result.summary.adds_up and calls == [6, 1, 1, 1, 1]  # RetryPolicy.record_attempts rounds
    assert (got[3].status, got[3].code) == (Status.FAILED, "UNKNOWN_RESULT")
    assert all(got[c].status is Status.SUCCESS for c in got if c != 3)


# -- the single form's whole-call 400 ------------------------------------------------------------------------------


def single_form_400(call: Call, own: Reply) -> Reply | None:
    """The documented single-form answer for a related key Zoho does not find: a whole-call 400 naming the
    external field (zoho-fidelity.md row 9: what it answers for an absent relation is not documented)."""
    body = own.body
    if call.route.kind != "delete_related_one" or not isinstance(body, dict):
        return None
    entries = body.get("data")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict) and entries[0].get("code") != "SUCCESS":
        return request_error(
            400,
            "INVALID_DATA",
            "You have specified an invalid external ID for the related module.",
            {"api_name": "External_Contact_ID"},
        )
    return None


@pytest.mark.parametrize(
    ("fate", "linked", "status"), [("after", True, Status.SUCCESS), ("none", False, Status.REJECTED)]
)
async def test_a_single_form_delink_refused_whole_follows_the_ambiguity_rule(
    tmp_path: Path, fate: str, linked: bool, status: Status
) -> None:
    """One delink by external IDs (the single form): its first answer lost after the CRM removed the relation,
    the retry's whole-call 400 is SUCCESS with the ambiguity note; with no earlier try, the 400 is REJECTED."""
    seed_ = seed_for([fate] + ["none"] * 5, drop_rate=0.5)
    sb = Scripted(SandboxOptions(record_history=True, seed=seed_, drop_rate=0.5), reshape=single_form_400)
    async with sb:
        seed(sb, contacts=1, linked=[(0, 0)] if linked else [])
        config = config_of(tmp_path, sb, "delete_related", [["D0", "C0"]])
        result = await run(config)
        removed = unlinked(sb)
        calls = stat(sb, "calls", "delete_related_one")
    got = (await outcomes(config))[1]
    assert result.summary.adds_up and len(removed) == int(linked) and calls == (2 if fate == "after" else 1)
    assert got.status is status, got
    if status is Status.SUCCESS:
        assert got.note is not None and "ambiguous" in got.note
    else:
        assert (got.code, got.http_status, got.note) == ("INVALID_DATA", 400, None)
