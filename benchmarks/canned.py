"""The canned-answer server: as cheap as an HTTP server that speaks Zoho can be.

``python -m benchmarks.canned --port N`` answers every CRM write (``PUT``/``POST``/``DELETE`` under
``/crm/v7/``) with a prebuilt 200 body of one SUCCESS entry per record sent, and the token endpoint with
a token. It keeps no state and adds no latency: against it the client's own CPU is the only limit, which
is what the engine-overhead and memory scenarios measure. ``GET /__sandbox/stats`` counts calls and
records, so the harness can treat it like the sandbox.
"""

from __future__ import annotations

import argparse
from functools import cache

import orjson
from aiohttp import web

__all__ = ["app", "main"]

_DETAILS = {
    "Modified_Time": "2024-05-01T10:00:00+00:00",
    "Modified_By": {"name": "Bench User", "id": "111111000000000001"},
    "Created_Time": "2024-01-01T10:00:00+00:00",
    "id": "111111000000100001",
    "Created_By": {"name": "Bench User", "id": "111111000000000001"},
}
_ENTRY = {"code": "SUCCESS", "details": _DETAILS, "message": "record updated", "status": "success"}
_TOKEN = orjson.dumps({"access_token": "canned-token", "api_domain": "", "token_type": "Bearer", "expires_in": 3600})


@cache
def _answer(records: int) -> bytes:
    return orjson.dumps({"data": [_ENTRY] * records})


def app() -> web.Application:
    counts = {"calls": 0, "records": 0}

    async def crm(request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "DELETE":
            ids = request.query.get("ids")
            records = len(ids.split(",")) if ids else 1
        else:
            records = len(orjson.loads(body)["data"])
        counts["calls"] += 1
        counts["records"] += records
        return web.Response(body=_answer(records), content_type="application/json")

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=_TOKEN, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def reset(request: web.Request) -> web.Response:
        counts.update(calls=0, records=0)
        return web.json_response(counts)

    application = web.Application(client_max_size=16 * 1024 * 1024)
    application.router.add_post("/oauth/v2/token", token)
    application.router.add_get("/__sandbox/stats", stats)
    application.router.add_post("/__sandbox/reset", reset)
    application.router.add_route("*", "/crm/v7/{tail:.*}", crm)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.canned")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
