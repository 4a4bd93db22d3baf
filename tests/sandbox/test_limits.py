"""Limits: concurrency, sub-concurrency, credits, and key overlaps, on real sockets.

Calls are held in flight with ``Sandbox.pause`` and counted with ``wait_in_flight``, so each limit is
hit exactly, never by timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import SEED, TOKEN, Api, Res


def _leads(n: int) -> list[dict[str, Any]]:
    return [{"Last_Name": f"L{i}", "External_Lead_ID": f"LX{i}"} for i in range(n)]


async def _sandbox_api(session: aiohttp.ClientSession, **options: Any) -> tuple[Sandbox, Api]:
    sb = Sandbox(SandboxOptions(static_tokens=(TOKEN,), **options))
    await sb.start()
    sb.state.load(SEED)
    sb.state.load({"records": {"Leads": _leads(2000)}})
    return sb, Api(sb=sb, session=session)


def _batch(start: int, n: int) -> dict[str, Any]:
    return {"data": [{"External_Lead_ID": f"LX{i}", "Company": "C"} for i in range(start, start + n)]}


EXT = {"X-EXTERNAL": "Leads.External_Lead_ID"}


def _assert_429(res: Res) -> None:
    assert res.status == 429
    assert res.body["code"] == "TOO_MANY_REQUESTS" and res.body["status"] == "error"
    assert "Retry-After" not in res.headers
    assert not any(h.lower().startswith("x-ratelimit") for h in res.headers)


async def test_eleventh_concurrent_complex_call_is_refused(session: aiohttp.ClientSession) -> None:
    """Ten writes of 11 records are in flight; the 11th gets 429 at once, a small write still passes."""
    sb, api = await _sandbox_api(session)
    try:
        sb.pause()
        held = [
            asyncio.create_task(api.call("PUT", "/crm/v7/Leads", json=_batch(k * 11, 11), headers=EXT))
            for k in range(10)
        ]
        await sb.wait_in_flight(10, complex_calls=True)
        _assert_429(await api.call("PUT", "/crm/v7/Leads", json=_batch(500, 11), headers=EXT))
        small = asyncio.create_task(api.call("PUT", "/crm/v7/Leads", json=_batch(600, 10), headers=EXT))
        await sb.wait_in_flight(11)
        sb.resume()
        results = await asyncio.gather(*held, small)
        assert all(r.status == 200 for r in results)
        assert sb.stats.throttled_429["sub_concurrency"] == 1
        assert sb.stats.max_in_flight_complex == 10
    finally:
        await sb.stop()


async def test_concurrency_limit(session: aiohttp.ClientSession) -> None:
    """With concurrency=3, a 4th call while three are in flight gets 429 with no latency and no cost."""
    sb, api = await _sandbox_api(session, concurrency=3, credits=100)
    try:
        sb.pause()
        held = [asyncio.create_task(api.call("GET", "/crm/v7/Leads?per_page=1")) for _ in range(3)]
        await sb.wait_in_flight(3)
        used = sb.stats.credits_used
        _assert_429(await api.call("GET", "/crm/v7/Leads?per_page=1"))
        assert sb.stats.credits_used == used
        sb.resume()
        assert [r.status for r in await asyncio.gather(*held)] == [200, 200, 200]
        assert sb.stats.throttled_429["concurrency"] == 1 and sb.stats.max_in_flight == 3
        assert (await api.call("GET", "/crm/v7/Leads?per_page=1")).status == 200
    finally:
        await sb.stop()


async def test_credits_run_out_then_every_call_is_429(session: aiohttp.ClientSession) -> None:
    """Writes cost ceil(records/10): 25 records cost 3 of 4 credits; then any call is 429 once spent."""
    sb, api = await _sandbox_api(session, credits=4)
    try:
        first = await api.call("PUT", "/crm/v7/Leads", json=_batch(0, 25), headers=EXT)
        assert first.status == 200 and sb.stats.credits_used == 3
        assert first.headers["X-API-CREDITS-REMAINING"] == "1"
        assert (await api.call("GET", "/crm/v7/Leads?per_page=1")).status == 200
        for method, path in (
            ("GET", "/crm/v7/Leads?per_page=1"),
            ("DELETE", "/crm/v7/Leads/1/Campaigns?ids=1"),
        ):
            res = await api.call(method, path)
            _assert_429(res)
            assert "daily limit" in res.body["message"]
        assert sb.stats.throttled_429["credits"] == 2 and sb.stats.credits_used == 4
        sb.set_faults(credits=None)
        assert (await api.call("GET", "/crm/v7/Leads?per_page=1")).status == 200
    finally:
        await sb.stop()


async def test_credit_header_absent_below_half(session: aiohttp.ClientSession) -> None:
    """X-API-CREDITS-REMAINING appears only once half the budget is used."""
    sb, api = await _sandbox_api(session, credits=10)
    try:
        res = await api.call("GET", "/crm/v7/Leads?per_page=1")
        assert "X-API-CREDITS-REMAINING" not in res.headers
    finally:
        await sb.stop()


async def test_key_overlap_is_counted(session: aiohttp.ClientSession) -> None:
    """Two calls in flight touching the same record key bump key_overlaps; distinct keys do not."""
    sb, api = await _sandbox_api(session)
    try:
        sb.pause()
        held = [
            asyncio.create_task(api.call("PUT", "/crm/v7/Leads", json=_batch(0, 2), headers=EXT)),
            asyncio.create_task(api.call("PUT", "/crm/v7/Leads", json=_batch(5, 2), headers=EXT)),
        ]
        await sb.wait_in_flight(2)
        assert sb.stats.key_overlaps == 0
        held.append(asyncio.create_task(api.call("PUT", "/crm/v7/Leads", json=_batch(1, 1), headers=EXT)))
        await sb.wait_in_flight(3)
        sb.resume()
        await asyncio.gather(*held)
        assert sb.stats.key_overlaps == 1
    finally:
        await sb.stop()


async def test_sub_concurrency_off(session: aiohttp.ClientSession) -> None:
    """sub_concurrency=0 turns the complex-call limit off."""
    sb, api = await _sandbox_api(session, sub_concurrency=0)
    try:
        sb.pause()
        held = [
            asyncio.create_task(api.call("PUT", "/crm/v7/Leads", json=_batch(k * 11, 11), headers=EXT))
            for k in range(12)
        ]
        await sb.wait_in_flight(12, complex_calls=True)
        sb.resume()
        assert {r.status for r in await asyncio.gather(*held)} == {200}
    finally:
        await sb.stop()
