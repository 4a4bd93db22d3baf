"""The sandbox's history of applied writes: opt-in, in apply order, one entry per applied write, over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.cli import sandbox_command
from tests.sandbox.helpers import CONTACT, CONTACT2, DEAL, DEAL2, ROLE, SEED, TOKEN, Api


@pytest.fixture
async def hsb() -> AsyncIterator[Sandbox]:
    """A running sandbox that records its history, seeded with the doc-sample records."""
    async with Sandbox(SandboxOptions(static_tokens=(TOKEN,), record_history=True)) as sandbox:
        sandbox.state.load(SEED)
        yield sandbox


@pytest.fixture
def hapi(hsb: Sandbox, session: aiohttp.ClientSession) -> Api:
    """The HTTP helper bound to the history-recording sandbox."""
    return Api(sb=hsb, session=session)


def _strip(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["op"], e["module"], e["id"], e["fields"], e["related_module"], e["related_id"]) for e in entries]


async def test_history_is_off_by_default(api: Api, sb: Sandbox) -> None:
    """Without record_history nothing is kept, and the endpoint says how to turn it on."""
    res = await api.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Title": "CEO"}]})
    assert res.status == 200
    assert sb.state.history == []
    res = await api.admin("GET", "history")
    assert res.status == 400 and "--history" in res.body["error"]


async def test_seed_loads_are_not_writes(hsb: Sandbox, hapi: Api) -> None:
    """Seeding (at start or through POST /__sandbox/seed) leaves the history empty."""
    assert hsb.state.history == []
    res = await hapi.admin("POST", "seed", {"records": {"Leads": [{"Last_Name": "Seeded"}]}})
    assert res.status == 200
    assert (await hapi.admin("GET", "history")).body == {"history": []}


async def test_every_applied_record_write_is_one_entry_in_order(hsb: Sandbox, hapi: Api) -> None:
    """Bulk updates, single updates, upserts and inserts: one entry per applied record, numbered from 1."""
    body = {"data": [{"id": CONTACT, "Title": "CEO"}, {"id": CONTACT2, "Title": "CFO", "Nope": 1}]}
    assert (await hapi.call("PUT", "/crm/v7/Contacts", json=body)).status == 200
    ext = {"X-EXTERNAL": "Contacts.External_Contact_ID"}
    body = {"data": [{"External_Contact_ID": "extcontact3", "Department": "Sales"}]}
    assert (await hapi.call("PUT", "/crm/v7/Contacts", json=body, headers=ext)).status == 200
    assert (await hapi.call("PUT", f"/crm/v7/Contacts/{CONTACT2}", json={"data": [{"Phone": "1"}]})).status == 200
    res = await hapi.call("POST", "/crm/v7/Leads", json={"data": [{"Last_Name": "New"}]})
    assert res.status == 201
    lead = res.body["data"][0]["details"]["id"]
    body = {"data": [{"Email": "p@example.com", "Last_Name": "Up"}, {"Email": "n@example.com", "Last_Name": "In"}]}
    res = await hapi.call("POST", "/crm/v7/Contacts/upsert", json=body)
    inserted = res.body["data"][1]["details"]["id"]
    history = hsb.state.history
    assert [e["n"] for e in history] == list(range(1, 8))
    assert _strip(history) == [
        ("update", "Contacts", CONTACT, {"Title": "CEO"}, None, None),
        ("update", "Contacts", CONTACT2, {"Title": "CFO"}, None, None),
        ("update", "Contacts", CONTACT, {"Department": "Sales"}, None, None),
        ("update", "Contacts", CONTACT2, {"Phone": "1"}, None, None),
        ("insert", "Leads", lead, {"Last_Name": "New"}, None, None),
        ("update", "Contacts", CONTACT, {"Email": "p@example.com", "Last_Name": "Up"}, None, None),
        ("insert", "Contacts", inserted, {"Email": "n@example.com", "Last_Name": "In"}, None, None),
    ]


async def test_refused_records_leave_no_entry(hsb: Sandbox, hapi: Api) -> None:
    """A record the CRM refuses (bad value, unknown id, lock) was not applied: no entry, its mates still count."""
    body = {
        "data": [{"id": CONTACT, "Last_Name": "x" * 81}, {"id": "999", "Title": "A"}, {"id": CONTACT2, "Title": "B"}]
    }
    res = await hapi.call("PUT", "/crm/v7/Contacts", json=body)
    assert [d["code"] for d in res.body["data"]] == ["INVALID_DATA", "INVALID_DATA", "SUCCESS"]
    hsb.set_faults(lock_rate=1.0)
    res = await hapi.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Title": "C"}]})
    assert res.body["data"][0]["code"] == "RECORD_LOCKED"
    assert _strip(hsb.state.history) == [("update", "Contacts", CONTACT2, {"Title": "B"}, None, None)]


async def test_links_relinks_and_delinks_are_entries(hsb: Sandbox, hapi: Api) -> None:
    """A link, an edit of a link's fields (op link too) and a delink that removed something are entries."""
    rel = {"data": [{"id": DEAL, "Contact_Role": ROLE}]}
    assert (await hapi.call("PUT", f"/crm/v7/Contacts/{CONTACT}/Deals", json=rel)).status == 200
    assert (await hapi.call("PUT", f"/crm/v7/Contacts/{CONTACT}/Deals", json=rel)).status == 200
    ext = {"X-EXTERNAL": "Deals.External_Deal_ID,Contacts.External_Contact_ID"}
    body = {"data": [{"External_Contact_ID": "extcontact4", "Contact_Role": ROLE}]}
    assert (await hapi.call("PUT", "/crm/v7/Deals/extdeal2/Contacts", json=body, headers=ext)).status == 200
    res = await hapi.call("DELETE", f"/crm/v7/Deals/{DEAL}/Contacts?ids={CONTACT},{CONTACT2}")
    assert [d["code"] for d in res.body["data"]] == ["SUCCESS", "INVALID_DATA"]
    role = {"id": ROLE}
    assert _strip(hsb.state.history) == [
        ("link", "Contacts", CONTACT, {"Contact_Role": role}, "Deals", DEAL),
        ("link", "Contacts", CONTACT, {"Contact_Role": role}, "Deals", DEAL),
        ("link", "Deals", DEAL2, {"Contact_Role": role}, "Contacts", CONTACT2),
        ("unlink", "Deals", DEAL, {}, "Contacts", CONTACT),
    ]


async def test_a_delink_that_removed_nothing_is_not_an_entry(hsb: Sandbox, hapi: Api) -> None:
    """Delinking a relation that does not exist (or twice) applies nothing, so it records nothing."""
    res = await hapi.call("DELETE", f"/crm/v7/Deals/{DEAL}/Contacts?ids={CONTACT}")
    assert res.body["data"][0]["code"] == "INVALID_DATA"
    ext = {"X-EXTERNAL": "Deals.External_Deal_ID,Contacts.External_Contact_ID"}
    res = await hapi.call("DELETE", "/crm/v7/Deals/extdeal3/Contacts/extcontact3", headers=ext)
    assert res.body["data"][0]["code"] == "INVALID_DATA"
    assert hsb.state.history == []


async def test_a_write_dropped_after_apply_is_in_the_history(hsb: Sandbox, hapi: Api) -> None:
    """The history is what the CRM applied, not what the client heard: a drop after the apply still counts."""
    hsb.set_faults(drop_rate=1.0, seed=1)
    for _ in range(8):
        with contextlib.suppress(aiohttp.ClientError):
            await hapi.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Title": "X"}]})
    drops = hsb.stats.snapshot()
    assert drops["drops_after"] and drops["drops_before"]
    assert len(hsb.state.history) == drops["drops_after"]


async def test_endpoint_serves_since_and_reset_clears(hsb: Sandbox, hapi: Api) -> None:
    """GET /__sandbox/history?since=N serves the entries after N, each stamped with when it was applied; POST
    /__sandbox/reset empties it."""
    before = time.time()
    for title in ("A", "B", "C"):
        await hapi.call("PUT", "/crm/v7/Contacts", json={"data": [{"id": CONTACT, "Title": title}]})
    after = time.time()
    res = await hapi.admin("GET", "history")
    assert res.status == 200 and [e["fields"]["Title"] for e in res.body["history"]] == ["A", "B", "C"]
    first = res.body["history"][0]
    assert first == {
        "n": 1,
        "op": "update",
        "module": "Contacts",
        "id": CONTACT,
        "fields": {"Title": "A"},
        "related_module": None,
        "related_id": None,
        "at": first["at"],
    }
    stamps = [e["at"] for e in res.body["history"]]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after  # when each was applied, in Unix seconds
    since = (await hapi.admin("GET", "history?since=2")).body["history"]
    assert [e["n"] for e in since] == [3]
    assert (await hapi.admin("GET", "history?since=9")).body == {"history": []}
    assert (await hapi.admin("GET", "history?since=x")).status == 400
    assert (await hapi.admin("POST", "reset")).status == 200
    assert (await hapi.admin("GET", "history")).body == {"history": []}
    await hapi.call("POST", "/crm/v7/Leads", json={"data": [{"Last_Name": "After"}]})
    assert [e["n"] for e in hsb.state.history] == [1]


def test_record_history_is_fixed_at_start() -> None:
    """record_history cannot be switched while the sandbox runs (the state was built with or without it)."""
    with pytest.raises(ValueError, match="fixed at start"):
        SandboxOptions().replace({"record_history": True})


def test_cli_help_documents_history() -> None:
    """syncengine sandbox --help lists --history."""
    result = CliRunner().invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0 and "--history" in result.output


def test_cli_flag_turns_history_on() -> None:
    """A sandbox process started with --history serves every applied write at /__sandbox/history."""
    cmd = [sys.executable, "-m", "syncengine.sandbox", "--port", "0", "--history", "--static-token", TOKEN]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if "listening on " in line:
                url = line.split("listening on ")[1].strip()
            if line.startswith("Press Ctrl-C"):
                break
        try:
            headers = {"Authorization": f"Zoho-oauthtoken {TOKEN}"}
            body = orjson.dumps({"data": [{"Last_Name": "Cli"}]})
            post = urllib.request.Request(f"{url}/crm/v7/Leads", data=body, headers=headers, method="POST")
            with urllib.request.urlopen(post, timeout=10) as resp:
                assert resp.status == 201
            with urllib.request.urlopen(f"{url}/__sandbox/history", timeout=10) as resp:
                history = orjson.loads(resp.read())["history"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    assert proc.returncode == 0
    entries = [(e["n"], e["op"], e["module"], e["fields"]) for e in history]
    assert entries == [(1, "insert", "Leads", {"Last_Name": "Cli"})]
