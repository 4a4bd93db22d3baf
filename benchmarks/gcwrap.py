"""``python -m benchmarks.gcwrap ARGS…`` runs ``syncengine ARGS…`` and times its garbage collector.

A sampling profiler charges a collection to whichever line allocated the object that triggered it, so
the collector's own cost is invisible in a profile. This wrapper (used for the profiled run only) adds a
``gc.callbacks`` hook and writes, on exit, one JSON line to stderr: seconds spent in collections and how
many ran per generation.
"""

from __future__ import annotations

import gc
import sys
import time

import orjson

__all__ = ["main"]


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

    gc.callbacks.append(hook)
    from syncengine.cli import main as syncengine_main

    try:
        syncengine_main(sys.argv[1:])
    finally:
        gc.callbacks.remove(hook)
        line = {"event": "bench.gc", "gc_s": round(sum(spent), 4), "gc_s_by_generation": spent, "collections": runs}
        sys.stderr.write(orjson.dumps(line).decode() + "\n")


if __name__ == "__main__":
    main()
