"""``syncengine sandbox --strict``: documented in --help, and a real process serves the strict profile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

from click.testing import CliRunner

from syncengine.sandbox.cli import PROFILE_FLAGS, sandbox_command

NEW_OPTIONS = (
    "--strict", "--refresh-lockout-minutes", "--api-domain", "--token-scope", "--persistent-lock-rate",
    "--locked-record", "--authorization-failed",
)  # fmt: skip


def test_help_documents_the_profile_and_each_reading() -> None:
    """--help lists --strict and a --X/--no-X flag for each reading, saying it is on with --strict."""
    result = CliRunner().invoke(sandbox_command, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    flags = [f"--{name.replace('_', '-')}" for name in PROFILE_FLAGS]
    missing = [
        o for o in (*NEW_OPTIONS, *flags, *(f.replace("--", "--no-", 1) for f in flags)) if o not in result.output
    ]
    assert not missing
    assert result.output.count("On with --strict") == len(PROFILE_FLAGS)
    assert "zia_vision_processing" in result.output and "record_locking" in result.output


def test_bad_persistent_lock_rate_is_a_usage_error() -> None:
    """A rate outside 0..1 is refused before anything starts."""
    result = CliRunner().invoke(sandbox_command, ["--persistent-lock-rate", "3"])
    assert result.exit_code == 2 and "persistent_lock_rate" in result.output


def _options_of(args: list[str]) -> tuple[str, dict[str, object]]:
    cmd = [sys.executable, "-m", "syncengine.sandbox", "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split("listening on ", 1)[1].split()[0]
        for line in proc.stdout:
            if line.startswith("Press Ctrl-C"):
                break
        with urllib.request.urlopen(url + "/__sandbox/faults", timeout=10) as resp:
            options = json.loads(resp.read())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    return first, options


def test_strict_process_serves_the_profile_and_a_flag_wins() -> None:
    """`--strict --no-shuffle-related --refresh-lockout-minutes 2`: every reading on but that one, lockout 120 s."""
    first, options = _options_of(["--strict", "--no-shuffle-related", "--refresh-lockout-minutes", "2"])
    assert "strict: the real-Zoho profile" in first
    assert options["strict"] is True and options["shuffle_related"] is False and options["refresh_lockout"] == 120.0
    assert all(options[name] is True for name in PROFILE_FLAGS if name != "shuffle_related")
    _, default = _options_of(["--locked-record", "42", "--authorization-failed", "Leads"])
    assert default["strict"] is False and not any(default[name] for name in PROFILE_FLAGS)
    assert default["locked_records"] == ["42"] and default["authorization_failed_modules"] == ["Leads"]
