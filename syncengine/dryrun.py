"""A dry run's sender: the same ``send`` as ``Sender``, but the call is written to a JSONL file, not sent.

The Worker cannot tell the two apart until the answer: ``Planned`` says the call was written and what it would
cost, and every change of it ends ``SKIPPED``/``DRY_RUN``. Everything up to the HTTP call (reading, mapping,
skip-unchanged, batching, building the request) is the real code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import anyio
import orjson

from syncengine.crm.requests import Call, write_credits
from syncengine.model import Payload
from syncengine.sender import CallStats

__all__ = ["DryRunSender", "Planned"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """A dry run's answer: the call was written, not sent."""

    calls: int = 0


class DryRunSender:
    """Writes each call as one JSON line: method, url, params, headers (no Authorization) and body."""

    def __init__(self, out: IO[bytes], stats: CallStats) -> None:
        self._out = out
        self.stats = stats
        self.stopping: anyio.Event | None = None

    async def send(
        self, payload: Payload, call: Call, stream: str, *, journal: Callable[[], object] | None = None
    ) -> Planned:
        line = {
            "method": call.method,
            "url": call.url,
            "params": dict(call.params),
            "headers": dict(call.headers),
            "body": orjson.loads(call.body) if call.body else None,
        }
        self._out.write(orjson.dumps(line) + b"\n")
        self.stats.planned_calls += 1
        self.stats.planned_credits += write_credits(payload.target, len(payload.items))
        return Planned()

    async def pause(self, seconds: float) -> None:
        """Nothing is ever retried in a dry run."""
