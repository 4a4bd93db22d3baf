"""Run progress: counters fed by the stages, shown as a live line on a terminal or JSON log events."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog
from rich.console import Console
from rich.live import Live
from rich.text import Text

from syncengine.model import Outcome, Status

__all__ = ["RunProgress", "count_lines", "show_progress"]

_log = structlog.get_logger("syncengine.progress")


@dataclass(slots=True)
class RunProgress:
    """What the run has done so far. Terminal counts move only when the ledger has committed them."""

    total: int | None = None  # estimated number of input changes, for the ETA
    read: Counter[str] = field(default_factory=Counter)  # per stream
    done: Counter[Status] = field(default_factory=Counter)
    codes: Counter[tuple[str, Status, str]] = field(default_factory=Counter)  # (stream, status, code)
    started: float = field(default_factory=time.monotonic)
    # When each change not yet terminal was read, oldest first (outcomes come back roughly in read
    # order): the lag gauge. Bounded by what the pipeline holds.
    _read_at: deque[float] = field(default_factory=deque)

    def on_read(self, stream: str) -> None:
        self.read[stream] += 1
        self._read_at.append(time.monotonic())

    def on_flush(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.done[outcome.status] += 1
            self.codes[(outcome.change.stream, outcome.status, outcome.code or "")] += 1
        for _ in range(min(len(outcomes), len(self._read_at))):
            self._read_at.popleft()

    def lag(self) -> float:
        """Seconds the oldest change read and not yet terminal has waited (0 when caught up)."""
        return time.monotonic() - self._read_at[0] if self._read_at else 0.0

    @property
    def finished(self) -> int:
        return sum(self.done.values())

    @property
    def errors(self) -> int:
        return self.done[Status.REJECTED] + self.done[Status.FAILED] + self.done[Status.INVALID]

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.finished / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0.0, (max(self.total, sum(self.read.values())) - self.finished) / rate)

    def fields(self) -> dict[str, object]:
        eta = self.eta()
        return {
            "read": sum(self.read.values()),
            "done": self.finished,
            "total": self.total,
            "rate": round(self.rate(), 1),
            "errors": self.errors,
            "eta_s": None if eta is None else round(eta),
        }

    def line(self) -> Text:
        f = self.fields()
        total = f"/{f['total']:,}" if isinstance(f["total"], int) else ""
        eta = f["eta_s"]
        eta_text = "--:--" if not isinstance(eta, int) else f"{eta // 60:d}:{eta % 60:02d}"
        return Text.assemble(
            ("syncengine ", "bold"),
            f"{f['done']:,}{total} done · {f['rate']:,.0f} rec/s · ",
            (f"{f['errors']:,} errors", "red" if f["errors"] else "green"),
            f" · ETA {eta_text}",
        )


def count_lines(paths: Iterable[Path]) -> int:
    """A fast estimate of the input size (data rows ≈ newlines), for the ETA only."""
    total = 0
    for path in paths:
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    total += chunk.count(b"\n")
        except OSError:
            continue
    return total


async def show_progress(progress: RunProgress, console: Console | None, *, interval: float = 10.0) -> None:
    """Until cancelled: a live line on a terminal, or a ``syncengine.progress`` log event every ``interval``."""
    if console is not None and console.is_terminal:
        with Live(progress.line(), console=console, refresh_per_second=4, transient=True) as live:
            while True:
                await anyio.sleep(0.25)
                live.update(progress.line())
    while True:
        await anyio.sleep(interval)
        _log.info("syncengine.progress", **progress.fields())
