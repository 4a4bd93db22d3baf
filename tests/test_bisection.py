"""A payload refused as a whole for one record's sake is split until the record is isolated, at a capped cost.

The sandbox never refuses a whole update because of one record (Zoho does, for a body it cannot parse), so
the first test runs against a small Zoho-shaped server on a real socket that refuses any body holding a
poisoned value with a request-level 400, and the others against the sandbox with that refusal scripted
through its ``_dispatch`` hook (``tests/zoho_readings.py``): the records it lets through are really applied.
A refusal that no record causes refuses every part too: the cap (2*log2(n)+2 extra calls while no part was
answered record by record) is what bounds its cost (issue 11, point 3; zoho-fidelity.md row 14).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.config import Config
from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.dispatch import Call
from syncengine.sandbox.envelopes import Reply, request_error
from tests.conftest import run, stat, write_config, write_csv
from tests.zoho_readings import Refuse, Scripted, outcomes, seed


@pytest.fixture
async def picky_crm() -> AsyncIterator[tuple[str, list[int]]]:
    calls: list[int] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "1000.t", "expires_in": 3600, "api_domain": "x"})

    async def update(request: web.Request) -> web.Response:
        body = await request.read()
        records = orjson.loads(body)["data"]
        calls.append(len(records))
        if b"POISON" in body:
            envelope = {
                "code": "INVALID_DATA",
                "details": {"expected_data_type": "jsonobject"},
                "message": "unable to process your request",
                "status": "error",
            }
            return web.json_response(envelope, status=400)
        data = [
            {"code": "SUCCESS", "details": {"id": str(1000 + i)}, "message": "record updated", "status": "success"}
            for i, _ in enumerate(records)
        ]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/oauth/v2/token", token)
    app.router.add_put("/crm/v7/Contacts", update)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_one_bad_record_is_isolated_and_the_rest_go_through(
    tmp_path: Path, picky_crm: tuple[str, list[int]]
) -> None:
    """100 records, one poisoned: 99 SUCCESS, 1 REJECTED with the CRM's code, in a handful of calls."""
    url, calls = picky_crm
    rows = [[f"C{i}", "POISON" if i == 37 else f"N{i}"] for i in range(100)]
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], rows)
    config = write_config(
        tmp_path / "sync.toml",
        url,
        [
            {
                "name": "contacts",
                "operation": "update",
                "module": "Contacts",
                "source": {"kind": "csv", "path": str(src)},
                "match": {"column": "erp_id", "field": "External_Contact_ID"},
                "fields": {"Last_Name": "last_name"},
            }
        ],
    )
    result = await run(config)
    s = result.summary
    assert (s.succeeded, s.rejected, s.adds_up) == (99, 1, True)
    assert len(calls) <= 1 + 2 * 7  # halving 100 records down to one: at most two calls per level
    async with SqliteLedger(config.ledger.path) as ledger:
        bad = [r async for r in ledger.outcomes(s.run_id, statuses={Status.REJECTED})]
    assert [(r.seq, r.code, r.http_status) for r in bad] == [(38, "INVALID_DATA", 400)]


# -- the cost cap (issue 11, point 3), against the sandbox --------------------------------------------------------

CAP_100 = int(2 * math.log2(100) + 2)  # 15 extra calls: 16 in all, under the 2*log2(100)+3


def contacts_by_external(tmp_path: Path, url: str, rows: list[list[str]], field: str, **crm: object) -> Config:
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], rows)
    stream = {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(src)},
        "match": {"column": "erp_id", "field": field},
        "fields": {"Last_Name": "last_name"},
    }
    return write_config(tmp_path / "sync.toml", url, [stream], **crm)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_x_external_naming_a_field_that_is_not_external_halts_after_one_call(
    tmp_path: Path, strict: bool
) -> None:
    """``X-EXTERNAL: Contacts.Email`` (Email is not an external field): the sandbox's 400 names the header, so
    no record caused it: one call, the stream halts, nothing is applied (today's 199 calls per payload). With
    more calls in flight, each payload in flight when the answer comes costs its one call."""
    async with Sandbox(SandboxOptions(strict=strict, record_history=True)) as sb:
        seed(sb, contacts=300)
        rows = [[f"c{i}@example.com", f"N{i}"] for i in range(300)]
        config = contacts_by_external(tmp_path, sb.url, rows, "Email", concurrency=1)  # one payload at a time
        result = await run(config)
        assert stat(sb, "calls_total") == 1 and stat(sb, "calls", "invalid") == 1
        assert sb.state.history == []
    got = await outcomes(config)
    assert result.summary.adds_up and len(got) == 300 and result.halted
    assert {r.status for r in got.values()} == {Status.FAILED}  # the stream's config error: re-run once fixed
    assert sum(r.code == "INVALID_DATA" for r in got.values()) >= 100  # the call's payload, at least


def refuse_every_update(call: Call) -> Reply | None:
    """The reading where Zoho answers a bad X-EXTERNAL (or anything no record causes) with a bare 400."""
    return request_error(400, "INVALID_DATA", "invalid data") if call.route.kind == "update" else None


async def test_a_refusal_no_record_causes_costs_at_most_the_cap_per_payload(tmp_path: Path) -> None:
    """A bare request-level 400 on every call (nothing says it is the request's): each 100-record payload costs
    at most 2*log2(100)+3 calls, counted by the sandbox, and every record is REJECTED with the CRM's code."""
    sb = Scripted(SandboxOptions(record_history=True), refuse=refuse_every_update)
    async with sb:
        seed(sb, contacts=300)
        config = contacts_by_external(tmp_path, sb.url, [[f"C{i}", f"N{i}"] for i in range(300)], "External_Contact_ID")
        result = await run(config)
        calls, seen = stat(sb, "calls", "update"), list(sb.seen)
        assert sb.state.history == []
    assert calls == len(seen) <= 3 * (1 + CAP_100) <= 3 * (2 * math.log2(100) + 3)
    assert [n for _, n in seen].count(100) == 3  # three payloads, each refused whole first
    got = await outcomes(config)
    assert result.summary.adds_up and len(got) == 300 and not result.halted
    assert {(r.status, r.code, r.http_status) for r in got.values()} == {(Status.REJECTED, "INVALID_DATA", 400)}
    capped = [r for r in got.values() if r.note and "not tried alone" in r.note]
    assert len(capped) >= 3 * 80  # most were never sent alone: the cap stopped the splitting


# -- random bad records (Hypothesis), against the sandbox -------------------------------------------------------


def poisoned_or_all(every: bool) -> Refuse:
    """Refuse a call as a whole when it carries a poisoned record (or every call, ``every``), with the same
    body-level 400 whichever record it is; the sandbox applies the others."""

    def refuse(call: Call) -> Reply | None:
        poisoned = any(str(r.get("Last_Name", "")).startswith("POISON") for r in call.data if isinstance(r, dict))
        if call.route.kind != "update" or not (every or poisoned):
            return None
        return request_error(
            400, "INVALID_DATA", "unable to process your request", {"expected_data_type": "jsonobject"}
        )

    return refuse


async def _bisect_once(directory: Path, n: int, bad: frozenset[int], every: bool) -> None:
    sb = Scripted(SandboxOptions(record_history=True), refuse=poisoned_or_all(every))
    async with sb:
        seed(sb, contacts=n)
        rows = [[f"C{i}", f"POISON{i}" if i in bad else f"New {i}"] for i in range(n)]
        config = contacts_by_external(directory, sb.url, rows, "External_Contact_ID")
        result = await run(config)
        calls = stat(sb, "calls", "update")
        names = {
            i: sb.state.records["Contacts"][str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{i}"))][
                "Last_Name"
            ]
            for i in range(n)
        }
    got = await outcomes(config)
    assert result.summary.adds_up and sorted(got) == list(range(1, n + 1))
    cap = int(2 * math.log2(n) + 2) if n > 1 else 0
    if every:
        assert calls <= 1 + cap, f"a refusal no record causes cost {calls} calls for {n} records"
        assert {(r.status, r.code) for r in got.values()} == {(Status.REJECTED, "INVALID_DATA")}
        assert all(names[i] == f"Contact {i}" for i in range(n))
        return
    # Below this many bad records no placement keeps every call of the cap refused (n >= 10: 4; else 2).
    always_found = len(bad) < (4 if n >= 10 else 2)
    for i in range(n):
        row = got[i + 1]
        if i in bad:
            assert (row.status, row.code) == (Status.REJECTED, "INVALID_DATA"), (i, row)
            assert names[i] == f"Contact {i}"
        elif row.status is Status.SUCCESS:
            assert names[i] == f"New {i}"
        else:  # only when every call up to the cap was refused: said so, never a silent REJECTED
            assert not always_found, (i, row, sorted(bad))
            assert row.status is Status.REJECTED and row.note and "not tried alone" in row.note, (i, row)


@settings(max_examples=int(os.environ.get("BISECT_EXAMPLES", "40")), deadline=None, database=None)
@given(data=st.data())
def test_random_bad_records_are_isolated_and_a_request_level_refusal_is_capped(data: st.DataObject) -> None:
    """Random payloads with random bad records: every bad one REJECTED with its code, every good one SUCCESS
    (applied in the CRM) unless so many are bad that every call up to the cap was refused (then REJECTED with a
    note saying so); a refusal on every call costs at most 2*log2(n)+2 extra calls."""
    n = data.draw(st.integers(1, 100), label="records")
    every = data.draw(st.booleans(), label="request-level")
    bad = frozenset() if every else data.draw(st.frozensets(st.integers(0, n - 1), max_size=n), label="bad")
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(_bisect_once, Path(directory), n, bad, every)
