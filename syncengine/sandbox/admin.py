"""The admin API under ``/__sandbox/``: clearly not Zoho's, never authenticated, for tests and operators.

- ``GET  /__sandbox/stats``          the counters (``Sandbox.stats_json``)
- ``POST /__sandbox/reset``          back to the seed data, counters at zero, random stream restarted
- ``GET  /__sandbox/dump``           the whole state, in the seed format
- ``POST /__sandbox/seed``           load a seed document (JSON body); ``?replace=1`` clears first
- ``POST /__sandbox/faults``         change options (JSON object of option -> value); answers the options
- ``GET  /__sandbox/faults``         the options in force
- ``POST /__sandbox/expire-tokens``  invalidate every issued access token
- ``GET  /__sandbox/history``        ``{"history": [...]}``: every applied write, in order (``?since=N``: the
  entries after entry N); needs ``record_history`` (``syncengine sandbox --history``), else a 400
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from syncengine.model import JSON

if TYPE_CHECKING:
    from syncengine.sandbox.server import Sandbox

__all__ = ["ADMIN_PREFIX", "add_admin_routes", "options_json"]

ADMIN_PREFIX = "/__sandbox"


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def options_json(sb: Sandbox) -> dict[str, JSON]:
    """The changeable options as JSON (secrets included: the sandbox's credentials are not secret)."""
    out: dict[str, JSON] = {}
    for f in dataclasses.fields(sb.options):
        if f.name in ("schema", "data_file"):
            continue
        value = getattr(sb.options, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def add_admin_routes(app: web.Application, sb: Sandbox) -> None:
    """Register the admin endpoints of ``sb`` on ``app``."""

    async def stats(_: web.Request) -> web.Response:
        return _ok(sb.stats_json())

    async def reset(_: web.Request) -> web.Response:
        sb.reset()
        return _ok({"status": "reset"})

    async def dump(_: web.Request) -> web.Response:
        return web.Response(body=sb.state.dump_bytes(), content_type="application/json")

    async def seed(request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
            if request.query.get("replace") in ("1", "true"):
                sb.state.clear()
            sb.state.load(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _ok({"error": f"bad seed document: {exc}"}, status=400)
        return _ok({"status": "seeded", "records": sb.state.counts()})

    async def get_faults(_: web.Request) -> web.Response:
        return _ok(options_json(sb))

    async def set_faults(request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of option -> value")
            sb.set_faults(**changes)
        except (ValueError, TypeError) as exc:
            return _ok({"error": str(exc)}, status=400)
        return _ok(options_json(sb))

    async def expire(_: web.Request) -> web.Response:
        sb.expire_tokens()
        return _ok({"status": "expired"})

    async def history(request: web.Request) -> web.Response:
        if not sb.state.record_history:
            return _ok({"error": "history is off: start the sandbox with --history (record_history)"}, status=400)
        raw = request.query.get("since", "0")
        if not raw.isdigit():
            return _ok({"error": f"since must be a non-negative integer, not {raw!r}"}, status=400)
        return _ok({"history": sb.state.history_since(int(raw))})

    app.router.add_get(f"{ADMIN_PREFIX}/stats", stats)
    app.router.add_get(f"{ADMIN_PREFIX}/history", history)
    app.router.add_post(f"{ADMIN_PREFIX}/reset", reset)
    app.router.add_get(f"{ADMIN_PREFIX}/dump", dump)
    app.router.add_post(f"{ADMIN_PREFIX}/seed", seed)
    app.router.add_get(f"{ADMIN_PREFIX}/faults", get_faults)
    app.router.add_post(f"{ADMIN_PREFIX}/faults", set_faults)
    app.router.add_post(f"{ADMIN_PREFIX}/expire-tokens", expire)
