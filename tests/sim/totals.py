"""The simulation suite's figures: scenarios, runs, kills and faults injected (``conftest.py`` prints them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

__all__ = ["TOTALS", "Totals"]

if TYPE_CHECKING:
    from tests.sim.driver import Outcome


@dataclass(slots=True)
class Totals:
    """What every scenario of the session added up to."""

    scenarios: int = 0
    failing: int = 0
    runs: int = 0
    kills: int = 0
    calls: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)

    def add(self, out: Outcome, seconds: float) -> None:
        self.scenarios += 1
        self.failing += bool(out.violations)
        self.runs += out.runs
        self.kills += out.kills
        self.calls += out.calls
        self.seconds += seconds
        self.faults.update(out.faults)

    def line(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (
            f"sim: {self.scenarios} scenarios ({self.failing} failing), {self.runs} runs, {self.kills} SIGKILLs, "
            f"{self.calls} calls, {self.seconds:.0f} s; faults: {faults}"
        )


TOTALS = Totals()
