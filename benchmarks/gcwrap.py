"""``python -m benchmarks.gcwrap ARGS…`` runs ``syncengine ARGS…`` with two probes a sampler cannot give.

- The garbage collector: a sampling profiler charges a collection to whichever line allocated the object
  that triggered it, so the collector's own cost is invisible in a profile. A ``gc.callbacks`` hook times
  every collection.
- Event-loop stalls: every asyncio callback is timed; those of 1 ms or more are summed per task (named
  by the task's own coroutine, e.g. ``Worker.run``). While one runs, no response is read and no call is
  sent: this is what turns into idle concurrency slots under latency.

On exit it writes one JSON line to stderr (``"event": "bench.probe"``). Used for the profiled run only;
measured runs are plain ``python -m syncengine``.
"""

from __future__ import annotations

import asyncio.events
import gc
import sys
import time
from collections import defaultdict
from typing import Any

import orjson

__all__ = ["main"]

STALL = 0.001  # seconds: a callback at least this long counts as a stall


def _task_name(handle: asyncio.events.Handle) -> str:
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    get_coro = getattr(owner, "get_coro", None)
    if get_coro is None:
        callback = getattr(handle, "_callback", None)
        return str(getattr(callback, "__qualname__", type(callback).__name__))
    chain: list[str] = []
    coro: Any = get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        chain.append(coro.__qualname__)
        coro = coro.cr_await
    chain = [name for name in chain if name != "TaskHandle._run_coro"]  # anyio's wrapper
    return chain[0] if chain else "?"


def main() -> None:
    spent = [0.0, 0.0, 0.0]
    runs = [0, 0, 0]
    started: list[float] = []

    def hook(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            generation = info.get("generation", 0)
            spent[generation] += time.perf_counter() - started.pop()
            runs[generation] += 1

    stalls: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, seconds, longest
    busy = [0, 0.0]  # callbacks, seconds
    original = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        t0 = time.perf_counter()
        original(handle)
        took = time.perf_counter() - t0
        busy[0] += 1
        busy[1] += took
        if took >= STALL:
            entry = stalls[_task_name(handle)]
            entry[0] += 1
            entry[1] += took
            entry[2] = max(entry[2], took)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
    gc.callbacks.append(hook)
    from syncengine.cli import main as syncengine_main

    try:
        syncengine_main(sys.argv[1:])
    finally:
        gc.callbacks.remove(hook)
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
        top = sorted(stalls.items(), key=lambda kv: -kv[1][1])[:8]
        line = {
            "event": "bench.probe",
            "gc_s": round(sum(spent), 4),
            "gc_s_by_generation": [round(x, 4) for x in spent],
            "collections": runs,
            "loop_busy_s": round(busy[1], 3),
            "loop_callbacks": busy[0],
            "stalls": [
                {"task": name, "count": int(n), "seconds": round(s, 3), "longest_ms": round(m * 1000, 1)}
                for name, (n, s, m) in top
            ],
        }
        sys.stderr.write(orjson.dumps(line).decode() + "\n")


if __name__ == "__main__":
    main()
