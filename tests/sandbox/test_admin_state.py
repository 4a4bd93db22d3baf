"""The admin API under /__sandbox/, the state API, seed and dump round trips, and scale."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import CAMPAIGNS, CONTACT, DEAL, LEAD, Api


async def test_stats_endpoint_has_every_counter(api: Api) -> None:
    """GET /__sandbox/stats serves every documented counter, with records per module."""
    await api.call("GET", f"/crm/v7/Contacts/{CONTACT}")
    res = await api.admin("GET", "stats")
    assert res.status == 200
    expected = {
        "calls", "in_flight", "max_in_flight", "max_in_flight_complex", "throttled_429", "credits_used",
        "refreshes", "max_concurrent_refreshes", "tokens_expired_401", "errors_500", "drops_before",
        "drops_after", "locks_injected", "key_overlaps", "records", "credits_remaining",
    }  # fmt: skip
    assert expected <= set(res.body)
    assert res.body["calls"] == {"get_record": 1}
    assert set(res.body["throttled_429"]) == {"concurrency", "sub_concurrency", "credits", "random"}
    assert res.body["records"]["Contacts"] == 2


async def test_faults_endpoint_changes_options(api: Api, sb: Sandbox) -> None:
    """POST /__sandbox/faults changes options at runtime; unknown or fixed options are a 400."""
    res = await api.admin("POST", "faults", {"error_rate": 1.0, "latency_ms": [0, 1]})
    assert res.status == 200 and res.body["error_rate"] == 1.0
    assert sb.options.latency_ms == (0, 1)
    assert (await api.call("GET", f"/crm/v7/Contacts/{CONTACT}")).status == 500
    assert (await api.admin("POST", "faults", {"port": 1})).status == 400
    assert (await api.admin("POST", "faults", {"nope": 1})).status == 400
    assert (await api.admin("GET", "faults")).body["error_rate"] == 1.0


async def test_expire_tokens_endpoint(api: Api, sb: Sandbox) -> None:
    """POST /__sandbox/expire-tokens invalidates issued tokens (static tokens stay valid)."""
    res = await api.token_request(
        {
            "grant_type": "refresh_token",
            "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
            "refresh_token": "sandbox-refresh-token",
        }
    )
    token = res.body["access_token"]
    assert (await api.admin("POST", "expire-tokens")).status == 200
    assert (await api.call("GET", f"/crm/v7/Contacts/{CONTACT}", token=token)).status == 401
    assert (await api.call("GET", f"/crm/v7/Contacts/{CONTACT}")).status == 200


async def test_seed_dump_round_trip(api: Api, sb: Sandbox, tmp_path: Path) -> None:
    """GET /__sandbox/dump gives the seed format; loading it into a new sandbox reproduces the state."""
    await api.call("PUT", f"/crm/v7/Contacts/{CONTACT}/Deals", json={"data": [{"id": DEAL, "Contact_Role": "7"}]})
    await api.call(
        "PUT",
        f"/crm/v7/Leads/{LEAD}/Campaigns",
        json={"data": [{"id": CAMPAIGNS[0], "Member_Status": "Sent"}]},
    )
    dump = (await api.admin("GET", "dump")).body
    assert dump == orjson.loads(sb.state.dump_bytes())
    path = tmp_path / "seed.json"
    path.write_bytes(orjson.dumps(dump))
    async with Sandbox(SandboxOptions(data_file=path)) as other:
        assert other.state.dump() == dump
        assert other.state.related("Deals", DEAL, "Contacts") == {CONTACT: {"Contact_Role": {"id": "7"}}}


async def test_seed_endpoint_and_reset(api: Api, sb: Sandbox) -> None:
    """POST /__sandbox/seed adds records; ?replace=1 replaces; POST /__sandbox/reset restores the start."""
    res = await api.admin("POST", "seed", {"records": {"Accounts": [{"id": "5", "Account_Name": "A"}]}})
    assert res.status == 200 and res.body["records"]["Accounts"] == 1
    assert (await api.admin("POST", "seed?replace=1", {"records": {"Leads": [{"Last_Name": "X"}]}})).status == 200
    assert sb.state.counts()["Contacts"] == 0 and sb.state.counts()["Leads"] == 1
    assert (await api.admin("POST", "seed", {"records": {"Nope": []}})).status == 400
    await api.call("GET", "/crm/v7/Leads")
    assert (await api.admin("POST", "reset")).status == 200
    assert sb.state.counts()["Leads"] == 0  # no data_file: reset means empty
    assert sb.stats.snapshot()["calls"] == {}


async def test_jsonl_seed(tmp_path: Path) -> None:
    """A .jsonl seed holds one record or relation per line."""
    path = tmp_path / "seed.jsonl"
    lines = [
        {"module": "Contacts", "record": {"id": "11", "Last_Name": "A", "External_Contact_ID": "c1"}},
        {"module": "Deals", "record": {"id": "22", "Deal_Name": "D"}},
        {
            "relation": {
                "module": "Deals",
                "id": "22",
                "related_list": "Contacts",
                "related_id": "11",
                "fields": {},
            }
        },
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    async with Sandbox(SandboxOptions(data_file=path)) as sb:
        assert (sb.state.find_by_field("Contacts", "External_Contact_ID", "c1") or {})["id"] == "11"
        assert sb.state.related("Contacts", "11", "Deals") == {"22": {}}


def test_state_holds_100k_records_with_indexed_lookups() -> None:
    """100k records load in well under the suite's budget and external lookups stay O(1)."""
    sb = Sandbox(SandboxOptions())
    started = time.monotonic()
    sb.state.load(
        {"records": {"Contacts": [{"Last_Name": f"L{i}", "External_Contact_ID": f"E{i}"} for i in range(100_000)]}}
    )
    assert sb.state.count("Contacts") == 100_000
    assert (sb.state.find_by_field("Contacts", "External_Contact_ID", "E99999") or {})["Last_Name"] == "L99999"
    assert time.monotonic() - started < 10


async def test_several_sandboxes_in_one_process(api: Api) -> None:
    """Two sandboxes run side by side with separate state, counters and ports."""
    async with Sandbox(SandboxOptions()) as other:
        assert other.url != api.sb.url
        assert other.state.count("Contacts") == 0 and api.sb.state.count("Contacts") == 2
