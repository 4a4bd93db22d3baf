"""The simulation suite's figures: scenarios, runs, kills and faults injected, printed under the summary."""

from __future__ import annotations

import pytest

from tests.sim.totals import TOTALS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures under the test summary."""
    if TOTALS.scenarios:
        terminalreporter.write_line(TOTALS.line())
