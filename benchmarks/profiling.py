"""Profiles of an engine run: py-spy when it is installed (every thread: the CSV parser and the SQLite
writer run in worker threads), else pyinstrument (the event-loop thread only).

Both are summed the same way: *self* time per function (where the CPU was when sampled) and *total* time
per syncengine function (self plus what it called), as shares of all samples of the run.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Profile", "profiled_command", "read_profile"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Leaf frames where a thread waits rather than works (py-spy's idle filter misses some of these).
_WAITS = (
    "Condition.wait (threading.py)",
    "EpollSelector.select (selectors.py)",
    "Event.wait (threading.py)",
    "epoll.poll (<built-in>)",
)
# The stage a sample belongs to: its innermost syncengine frame's file.
_STAGES = (
    ("syncengine/readers/", "read source (CSV parse)"),
    ("syncengine/mapping.py", "map row -> change"),
    ("syncengine/batcher.py", "batcher"),
    ("syncengine/crm/requests.py", "build request body"),
    ("syncengine/crm/transport.py", "HTTP (aiohttp client)"),
    ("syncengine/crm/auth.py", "HTTP (aiohttp client)"),
    ("syncengine/crm/responses.py", "parse response"),
    ("syncengine/limits.py", "limits"),
    ("syncengine/workers.py", "workers: outcomes"),
    ("syncengine/ledger/", "ledger (SQLite)"),
    ("syncengine/progress.py", "progress"),
    ("syncengine/ledger/checkpoints.py", "checkpoints"),
    ("syncengine/model.py", "change digests (skip-unchanged)"),
    ("syncengine/intake.py", "intake (skip-unchanged lookups)"),
    ("syncengine/pipeline.py", "pipeline"),
)
_ENTRY = ("(syncengine/cli.py)", "(syncengine/runner.py)", "(syncengine/__main__.py)", "(benchmarks/")


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    tool: str
    samples: int
    self_top: list[tuple[str, float]]  # (function, share of samples), highest first
    engine_total_top: list[tuple[str, float]]  # syncengine functions by inclusive share
    threads: dict[str, float]  # share of samples per thread
    stages: list[tuple[str, float]]  # share of samples per pipeline stage
    waiting: float  # share of samples dropped as waiting (not counted in the shares above)


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profiled_command(output: Path, module: str, args: list[str]) -> tuple[str, list[str]]:
    """The command that runs ``python -m module args`` under a profiler writing to ``output``, and the tool."""
    spy = _py_spy()
    if spy is not None:
        prefix = [spy, "record", "--format", "raw", "--threads", "-r", "200", "-o", str(output), "--"]
        return "py-spy", [*prefix, sys.executable, "-m", module, *args]
    return "pyinstrument", [sys.executable, "-m", "pyinstrument", "-r", "json", "-o", str(output), "-m", module, *args]


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    file = m.group("file")
    # Shorten site-packages paths to the package-relative form py-spy already uses for the project.
    file = re.sub(r"^.*?(site-packages|lib/python3\.\d+)/", "", file)
    return f"{m.group('func')} ({file})"


def _stage(frames: list[str]) -> str:
    if any("importlib" in f for f in frames):
        return "start-up (imports)"
    for frame in reversed(frames):
        if any(entry in frame for entry in _ENTRY):
            break
        for prefix, stage in _STAGES:
            if f"({prefix}" in frame:
                return stage
        if "(syncengine/" in frame:  # a module this map does not know yet: name it
            return frame[frame.index("(syncengine/") + 1 : -1]
    return "event loop, sockets (no engine frame)"


def _summarise(tool: str, stacks: Iterable[tuple[str, list[str], int]]) -> Profile:
    self_time: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    samples = waiting = 0
    for thread, frames, weight in stacks:
        if not frames:
            continue
        if frames[-1] in _WAITS:
            waiting += weight
            continue
        samples += weight
        threads[thread] += weight
        self_time[frames[-1]] += weight
        stages[_stage(frames)] += weight
        for name in set(frames):
            if "(syncengine/" in name and not any(entry in name for entry in _ENTRY):
                total[name] += weight

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / samples, 4)) for k, v in counter.most_common(12)] if samples else []

    return Profile(
        tool=tool,
        samples=int(samples),
        self_top=share(self_time),
        engine_total_top=share(total),
        threads={k: round(v / samples, 4) for k, v in threads.most_common()} if samples else {},
        stages=share(stages),
        waiting=round(waiting / (samples + waiting), 4) if samples + waiting else 0.0,
    )


def _py_spy_stacks(text: str) -> Iterable[tuple[str, list[str], int]]:
    parsed = []
    names: dict[str, str] = {}  # thread id -> name, where py-spy knew it
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        ident, name = "?", ""
        if parts[0].startswith("thread ("):
            ident, _, name = parts[0].partition(":")
            parts = parts[1:]
        if name.strip():
            names[ident] = re.sub(r"[ _-]\d+$", "", name.strip())  # pooled worker threads under one name
        parsed.append((ident, [_name(p) for p in parts if p.strip()], int(count)))
    for ident, frames, weight in parsed:
        yield names.get(ident, ident), frames, weight


def _pyinstrument_stacks(doc: dict[str, Any]) -> Iterable[tuple[str, list[str], int]]:
    def walk(frame: dict[str, Any], path: list[str]) -> Iterable[tuple[str, list[str], int]]:
        name = f"{frame.get('function')} ({frame.get('file_path_short', '')})"
        here = [*path, name]
        children = frame.get("children") or []
        own = float(frame.get("time", 0.0)) - sum(float(c.get("time", 0.0)) for c in children)
        if own > 0:
            yield "MainThread", here, round(own * 10_000)  # 0.1 ms units
        for child in children:
            yield from walk(child, here)

    root = doc.get("root_frame")
    return walk(root, []) if isinstance(root, dict) else []


def read_profile(tool: str, output: Path) -> Profile:
    if tool == "py-spy":
        return _summarise(tool, _py_spy_stacks(output.read_text(encoding="utf-8", errors="replace")))
    return _summarise(tool, _pyinstrument_stacks(orjson.loads(output.read_bytes())))
