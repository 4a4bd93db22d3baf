"""A payload refused as a whole for one record's sake is split until the record is isolated.

The sandbox never refuses a whole call because of one record (Zoho does, for a body it cannot parse), so
this test runs against a small Zoho-shaped server on a real socket that refuses any body holding a
poisoned value with a request-level 400, and answers every other record SUCCESS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from tests.conftest import run, write_config, write_csv


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
