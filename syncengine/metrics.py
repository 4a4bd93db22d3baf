"""Health and Prometheus metrics over HTTP, for `syncengine watch` (GET /healthz, GET /metrics).

The numbers are read from the live run when Prometheus scrapes (a custom collector), so the hot path
pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from syncengine.limits import Limits
from syncengine.progress import RunProgress
from syncengine.sender import CallStats

__all__ = ["Telemetry", "serve_metrics"]


@dataclass(slots=True)
class Telemetry:
    """The live objects of a run that the metrics read; the pipeline fills them in as it starts."""

    progress: RunProgress | None = None
    stats: CallStats | None = None
    limits: Limits | None = None
    refreshes: Callable[[], int] = lambda: 0
    run_id: int | None = None
    state: str = "starting"
    started: float = field(default_factory=time.time)


class _Collector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self._t
        read = CounterMetricFamily("syncengine_changes_read", "Changes read from the sources.", labels=["stream"])
        outcomes = CounterMetricFamily(
            "syncengine_outcomes", "Terminal outcomes committed to the ledger.", labels=["stream", "status", "code"]
        )
        if t.progress is not None:
            for stream, count in t.progress.read.items():
                read.add_metric([stream], count)
            for (stream, status, code), count in t.progress.codes.items():
                outcomes.add_metric([stream, status.value, code], count)
        yield read
        yield outcomes
        stats = t.stats
        yield CounterMetricFamily("syncengine_calls", "CRM calls sent.", value=stats.calls if stats else 0)
        yield CounterMetricFamily(
            "syncengine_throttled", "429 answers received.", value=stats.throttled if stats else 0
        )
        yield CounterMetricFamily(
            "syncengine_transport_errors",
            "Calls that failed on the network.",
            value=stats.transport_errors if stats else 0,
        )
        yield CounterMetricFamily("syncengine_token_refreshes", "Access token refreshes.", value=t.refreshes())
        limits = t.limits
        yield GaugeMetricFamily(
            "syncengine_calls_in_flight", "CRM calls in flight.", value=limits.general.in_flight if limits else 0
        )
        yield GaugeMetricFamily(
            "syncengine_concurrency_limit",
            "Calls allowed in flight now (AIMD).",
            value=limits.general.limit if limits else 0,
        )
        progress = t.progress
        pending = (sum(progress.read.values()) - progress.finished) if progress else 0
        yield GaugeMetricFamily("syncengine_pending_changes", "Changes read and not yet terminal.", value=pending)
        yield GaugeMetricFamily(
            "syncengine_lag_seconds",
            "How long the oldest change not yet terminal has waited since it was read.",
            value=progress.lag() if progress else 0.0,
        )


@asynccontextmanager
async def serve_metrics(telemetry: Telemetry, *, host: str, port: int) -> AsyncIterator[str]:
    """Serve /healthz and /metrics while the block runs; yields the base URL."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(telemetry))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def health(request: web.Request) -> web.Response:
        ok = telemetry.state in ("starting", "running")
        body = {
            "status": "ok" if ok else telemetry.state,
            "run_id": telemetry.run_id,
            "uptime_s": round(time.time() - telemetry.started, 1),
        }
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or ()
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
