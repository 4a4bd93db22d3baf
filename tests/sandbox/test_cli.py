"""``syncengine sandbox``: every option is documented, and the server starts, prints, dumps and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from syncengine.sandbox.cli import parse_latency, sandbox_command

OPTIONS = (
    "--host", "--port", "--seed", "--data", "--dump", "--concurrency", "--sub-concurrency", "--credits",
    "--token-ttl", "--latency-ms", "--error-rate", "--drop-rate", "--throttle-rate", "--lock-rate",
    "--refresh-limit", "--client-id", "--client-secret", "--refresh-token", "--static-token",
    "--scoped-token", "--no-permission",
)  # fmt: skip


def test_help_lists_every_option() -> None:
    """--help documents every option."""
    result = CliRunner().invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0
    missing = [o for o in OPTIONS if o not in result.output]
    assert not missing


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param("50", (50.0, 50.0), id="fixed"), pytest.param("10,80", (10.0, 80.0), id="range")],
)
def test_parse_latency(text: str, expected: tuple[float, float]) -> None:
    """--latency-ms takes MIN or MIN,MAX."""
    assert parse_latency(text) == expected


def test_bad_rate_is_a_usage_error() -> None:
    """A rate outside 0..1 is refused before anything starts."""
    result = CliRunner().invoke(sandbox_command, ["--error-rate", "2"])
    assert result.exit_code == 2 and "error_rate" in result.output


def test_serves_then_stops_on_sigterm_and_dumps(tmp_path: Path) -> None:
    """The process prints its URL and credentials, stops cleanly on SIGTERM, and writes --dump."""
    seed = tmp_path / "seed.json"
    seed.write_bytes(orjson.dumps({"records": {"Leads": [{"id": "1", "Last_Name": "A"}]}}))
    dump = tmp_path / "out.json"
    cmd = [
        sys.executable,
        "-m",
        "syncengine.sandbox",
        "--port",
        "0",
        "--data",
        str(seed),
        "--dump",
        str(dump),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # read until the server says it is ready
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
    out = "".join(lines) + rest
    assert proc.returncode == 0
    assert "listening on http://127.0.0.1:" in out and "sandbox-refresh-token" in out
    assert orjson.loads(dump.read_bytes())["records"]["Leads"][0]["Last_Name"] == "A"
