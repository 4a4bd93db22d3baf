"""The command line as a user runs it: `python -m syncengine` in a real subprocess, a real sandbox, real files."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import click
import orjson
import pytest

from syncengine.cli import cli
from syncengine.ledger import SqliteLedger
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.cli import sandbox_command
from tests.conftest import write_config, write_csv

# The subprocess sees no credentials and no terminal width unless a test gives them.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_") and k not in ("COLUMNS", "LINES")}
CREDENTIALS = {
    "ZOHO_CLIENT_ID": "sandbox-client-id",
    "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
    "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
}
WIDE = {"COLUMNS": "200"}  # for tests that parse a table rather than judge how it looks when piped
NOWHERE = "http://127.0.0.1:9"  # a loopback URL nothing listens on: for runs that must never call out


@dataclass(frozen=True)
class Ran:
    """A finished `syncengine` process."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout with every run of whitespace made one space: rich wraps long lines at 80 columns when piped."""
        return " ".join(self.out.split())


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**BASE_ENV, **(env or {})}


def syncengine(*args: object, cwd: Path, env: Mapping[str, str] | None = None) -> Ran:
    """Run the CLI to completion (for commands that need no in-process sandbox)."""
    done = subprocess.run(
        [sys.executable, "-m", "syncengine", *map(str, args)],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


async def asyncengine(*args: object, cwd: Path, env: Mapping[str, str] | None = None) -> Ran:
    """Run the CLI while an in-process sandbox keeps serving in this event loop."""
    done = await anyio.run_process(
        [sys.executable, "-m", "syncengine", *map(str, args)], cwd=cwd, env=_env(env), check=False
    )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


def contacts_stream(source: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(source)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name", "Email": "email"},
        **extra,
    }


def seed(prefix: str, n: int) -> dict[str, Any]:
    return {"records": {"Contacts": [{"External_Contact_ID": f"{prefix}{i}", "Last_Name": f"L{i}"} for i in range(n)]}}


# Two good rows, one unknown external ID (REJECTED), one without a key (INVALID).
MIXED = [["C0", "Ada", "ada@example.com"], ["C1", "Bob", "bob@example.com"], ["C404", "Ghost", "g@example.com"],
         ["", "Nokey", "n@example.com"]]  # fmt: skip
HEADER = ["erp_id", "last_name", "email"]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Help


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            [], ["--json-logs", "--version", "run", "report", "runs", "retry", "sandbox", "demo"], id="syncengine"
        ),
        pytest.param(["run"], ["CONFIG_FILE", "--stream", "--dry-run", "--requests-out"], id="run"),
        pytest.param(
            ["report"],
            ["RUN_ID", "--config", "--ledger", "--status", "--errors", "--code", "--stream", "--format", "--output"],
            id="report",
        ),
        pytest.param(["runs"], ["--config", "--ledger", "--limit"], id="runs"),
        pytest.param(["retry"], ["RUN_ID", "--config", "--stream"], id="retry"),
        pytest.param(["sandbox"], ["--port", "--data", "--client-secret", "--refresh-token", "--seed"], id="sandbox"),
        pytest.param(["demo"], ["--dir", "--config", "--contacts", "--strict"], id="demo"),
    ],
)
def test_help_describes_the_options(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    """`--help` of the program and of every command exits 0 and names its options."""
    ran = syncengine(*args, "--help", cwd=tmp_path)
    assert ran.code == 0, ran.err
    assert ran.out.startswith("Usage: syncengine")
    assert [word for word in expected if word not in ran.out] == []


def test_version(tmp_path: Path) -> None:
    """`--version` prints the package version."""
    ran = syncengine("--version", cwd=tmp_path)
    assert ran.code == 0 and "0.1.0" in ran.out


def test_every_option_has_help_text() -> None:
    """Every option of every command says what it does in --help."""
    commands: dict[str, click.Command] = {**cli.commands, "sandbox": sandbox_command}
    bare = [
        f"{name} {param.opts[-1]}"
        for name, command in commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not param.help and param.name != "help"
    ]
    assert bare == []


# --------------------------------------------------------------------------------------------------
# run: exit codes


async def test_run_exits_0_when_every_change_succeeds(tmp_path: Path, sandbox: Sandbox) -> None:
    """Every row applied: exit 0, the summary adds up, the CRM holds the new values."""
    sandbox.state.load(seed("C", 3))
    src = write_csv(tmp_path / "c.csv", HEADER, [[f"C{i}", f"New{i}", f"c{i}@example.com"] for i in range(3)])
    write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    ran = await asyncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
    assert ran.code == 0, ran.out + ran.err
    assert "read 3 = succeeded 3 + rejected 0 + failed 0 + invalid 0 + skipped 0 + pending 0: adds up" in ran.text
    assert (sandbox.state.find_by_field("Contacts", "External_Contact_ID", "C2") or {})["Last_Name"] == "New2"


@pytest.mark.parametrize(
    ("env", "where"),
    [
        pytest.param({}, "syncengine-tokens.json", id="default-beside-the-ledger"),
        pytest.param({"SYNCENGINE_TOKEN_CACHE": "cache/t.json"}, "cache/t.json", id="from-the-environment"),
        pytest.param({"SYNCENGINE_TOKEN_CACHE": "off"}, None, id="off"),
    ],
)
async def test_the_token_cache_file(tmp_path: Path, sandbox: Sandbox, env: dict[str, str], where: str | None) -> None:
    """The token is kept in a 0600 file beside the ledger, or where SYNCENGINE_TOKEN_CACHE says, or nowhere (off);
    a second run with the cache makes no token request."""
    sandbox.state.load(seed("C", 1))
    src = write_csv(tmp_path / "c.csv", HEADER, [["C0", "Ada", "a@example.com"]])
    write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    for _ in range(2):
        ran = await asyncengine("run", "sync.toml", "--full", cwd=tmp_path, env={**CREDENTIALS, **env})
        assert ran.code == 0, ran.out + ran.err
    cached = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")]
    assert cached == ([] if where is None else [where])
    if where is not None:
        assert (tmp_path / where).stat().st_mode & 0o777 == 0o600
    assert sandbox.stats.token_requests == (2 if where is None else 1)


async def test_run_exits_1_when_some_changes_are_rejected_or_invalid(tmp_path: Path, sandbox: Sandbox) -> None:
    """An unknown external ID (REJECTED) and a row without a key (INVALID): exit 1, and the summary adds up."""
    sandbox.state.load(seed("C", 2))
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED)
    write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    ran = await asyncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
    assert ran.code == 1, ran.out + ran.err
    assert "read 4 = succeeded 2 + rejected 1 + failed 0 + invalid 1 + skipped 0 + pending 0: adds up" in ran.text
    assert "MISSING_KEY" in ran.out and "Top errors" in ran.out


def test_run_against_a_sandbox_process(history: History) -> None:
    """A sandbox started as `syncengine sandbox --port P --data seed.json` serves a whole run (exit codes 1, 0)."""
    assert history.codes == (1, 0)


def _broken(tmp_path: Path, mutate: str) -> Path:
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED)
    write_config(tmp_path / "sync.toml", NOWHERE, [contacts_stream(src)])
    text = (tmp_path / "sync.toml").read_text(encoding="utf-8")
    old, new = mutate.split(" => ")
    assert old in text
    (tmp_path / "sync.toml").write_text(text.replace(old, new, 1), encoding="utf-8")
    return tmp_path / "sync.toml"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            'name = "contacts" => name = "contacts"\nbatchsize = 5',
            ["streams[0] (contacts).batchsize", "unknown key", "batch_size"],
            id="unknown-stream-key",
        ),
        pytest.param(
            'operation = "update" => operation = "updat"',
            ["streams[0] (contacts).operation", "'update'", "'updat'"],
            id="bad-operation",
        ),
        pytest.param(
            "concurrency = 10 => concurency = 10",
            ["crm.concurency", "unknown key", "concurrency"],
            id="unknown-crm-key",
        ),
        pytest.param("concurrency = 10 => concurrency = 99", ["crm.concurrency", "25"], id="concurrency-too-high"),
        pytest.param('"erp_id" => 7', ["streams[0] (contacts).match.column", "string"], id="wrong-type"),
        pytest.param(
            "concurrency = 10 => concurrency = 10\nclient_secret = 'hunter2-in-config'",
            ["crm.client_secret", "ZOHO_CLIENT_SECRET"],
            id="secret-in-config",
        ),
        pytest.param("[crm] => [crm", ["line 1", "TOML"], id="toml-syntax"),
    ],
)
def test_broken_config_exits_2_naming_file_and_key(tmp_path: Path, mutate: str, expected: list[str]) -> None:
    """A config mistake exits 2 before anything runs, naming the file, the key path and what was expected."""
    path = _broken(tmp_path, mutate)
    ran = syncengine("run", path.name, cwd=tmp_path, env=CREDENTIALS)
    assert ran.code == 2
    assert ran.err.startswith(f"syncengine: {path.name}: "), ran.err
    assert [word for word in expected if word not in ran.err] == []
    assert "Traceback" not in ran.err and "hunter2" not in ran.err + ran.out
    assert not (tmp_path / "ledger.db").exists()


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A config path that does not exist exits 2 and says so."""
    ran = syncengine("run", "nope.toml", cwd=tmp_path, env=CREDENTIALS)
    assert ran.code == 2 and "nope.toml" in ran.err and "No such file" in ran.err


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        pytest.param({}, ["ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET", "ZOHO_REFRESH_TOKEN"], id="none"),
        pytest.param(
            {"ZOHO_CLIENT_ID": "cid-visible", "ZOHO_CLIENT_SECRET": "S3CRET-only-half"},
            ["ZOHO_REFRESH_TOKEN"],
            id="no-refresh-token",
        ),
        pytest.param({"ZOHO_REFRESH_TOKEN": "R3FRESH-only"}, ["ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET"], id="no-client"),
    ],
)
def test_missing_secrets_exit_2_naming_variables_not_values(
    tmp_path: Path, env: dict[str, str], missing: list[str]
) -> None:
    """Without usable credentials the run exits 2, names the missing variables, and never echoes a value."""
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED)
    write_config(tmp_path / "sync.toml", NOWHERE, [contacts_stream(src)])
    ran = syncengine("run", "sync.toml", cwd=tmp_path, env=env)
    assert ran.code == 2
    assert "missing: " + ", ".join(missing) in ran.err
    for value in env.values():
        assert value not in ran.err + ran.out
    assert not (tmp_path / "ledger.db").exists()


async def test_secrets_file_supplies_credentials(tmp_path: Path, sandbox: Sandbox) -> None:
    """With no environment, crm.secrets_file (KEY=value lines) supplies the credentials."""
    sandbox.state.load(seed("C", 2))
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED[:2])
    (tmp_path / "zoho.env").write_text("\n".join(f"export {k}={v}" for k, v in CREDENTIALS.items()) + "\n")
    write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)], secrets_file="zoho.env")
    ran = await asyncengine("run", "sync.toml", cwd=tmp_path)
    assert ran.code == 0, ran.out + ran.err


async def test_wrong_credentials_exit_2_without_echoing_them(tmp_path: Path, sandbox: Sandbox) -> None:
    """Credentials the CRM refuses stop the run with exit 2; neither value appears in the output."""
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED)
    write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    wrong = {**CREDENTIALS, "ZOHO_CLIENT_SECRET": "WR0NG-secret-q1", "ZOHO_REFRESH_TOKEN": "WR0NG-refresh-q2"}
    ran = await asyncengine("run", "sync.toml", cwd=tmp_path, env=wrong)
    assert ran.code == 2
    assert "invalid_client" in ran.out
    assert "WR0NG" not in ran.out + ran.err + (tmp_path / "ledger.db").read_bytes().decode("latin-1")
    assert sandbox.stats.snapshot()["calls_total"] == 0


@pytest.mark.parametrize(
    "streams", [pytest.param(["nope"], id="unknown"), pytest.param(["contacts", "nope"], id="one-of-two-unknown")]
)
def test_unknown_stream_exits_2(tmp_path: Path, streams: list[str]) -> None:
    """`--stream NAME` that the config does not have exits 2, names it and lists the streams; nothing runs."""
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED)
    write_config(tmp_path / "sync.toml", NOWHERE, [contacts_stream(src)])
    ran = syncengine("run", "sync.toml", *(a for s in streams for a in ("--stream", s)), cwd=tmp_path, env=CREDENTIALS)
    assert ran.code == 2
    assert "sync.toml" in ran.err and "'nope'" in ran.err and "contacts" in ran.err
    assert not (tmp_path / "ledger.db").exists()


# --------------------------------------------------------------------------------------------------
# Logs


def _dry_config(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "c.csv", HEADER, MIXED[:2])
    write_config(tmp_path / "sync.toml", NOWHERE, [contacts_stream(src)])


@pytest.mark.parametrize("flags", [pytest.param([], id="default"), pytest.param(["--json-logs"], id="json-logs")])
def test_logs_are_json_when_stderr_is_not_a_terminal(tmp_path: Path, flags: list[str]) -> None:
    """Piped stderr gets one JSON object per line, every event named `syncengine.*`."""
    _dry_config(tmp_path)
    ran = syncengine(*flags, "run", "sync.toml", "--dry-run", cwd=tmp_path)
    assert ran.code == 0, ran.err
    events = json_lines(ran.err)
    assert events and all(e["event"].startswith("syncengine.") for e in events)
    assert {"syncengine.run_started", "syncengine.run_finished"} <= {e["event"] for e in events}
    assert all("level" in e and "timestamp" in e for e in events)


def _stderr_on_a_terminal(cwd: Path, *args: str) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; returns the exit code and what the terminal showed."""
    master, slave = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "syncengine", *args],
        cwd=cwd,
        env=_env(None),
        stdout=subprocess.DEVNULL,
        stderr=slave,
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=60)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize(
    ("flags", "is_json"),
    [pytest.param([], False, id="terminal-default"), pytest.param(["--json-logs"], True, id="json-logs-forced")],
)
def test_json_logs_flag_forces_json_on_a_terminal(tmp_path: Path, flags: list[str], is_json: bool) -> None:
    """On a terminal the logs are readable lines, unless `--json-logs` forces JSON."""
    _dry_config(tmp_path)
    code, shown = _stderr_on_a_terminal(tmp_path, *flags, "run", "sync.toml", "--dry-run")
    assert code == 0, shown
    lines = [line for line in shown.splitlines() if "syncengine.run_started" in line]
    assert len(lines) == 1
    assert lines[0].lstrip().startswith("{") is is_json


# --------------------------------------------------------------------------------------------------
# Secrets


TOKEN_SHAPE = re.compile(r"1000\.[0-9a-f]{16,}\.[0-9a-f]{16,}")


async def test_secrets_never_leak(tmp_path: Path) -> None:
    """A whole run, its ledger and every report never show the client secret, refresh token or access token."""
    secret, refresh = "S3CRET-xyz", "R3FRESH-abc"
    options = SandboxOptions(client_secret=secret, refresh_token=refresh)
    async with Sandbox(options) as sb:
        sb.state.load(seed("C", 2))
        src = write_csv(tmp_path / "c.csv", HEADER, MIXED)
        write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)])
        env = {**CREDENTIALS, "ZOHO_CLIENT_SECRET": secret, "ZOHO_REFRESH_TOKEN": refresh}
        ran = await asyncengine("--json-logs", "run", "sync.toml", cwd=tmp_path, env=env)
        issued = list(sb._tokens._issued)  # the access tokens the sandbox handed out
    assert ran.code == 1, ran.out + ran.err
    assert sb.stats.refreshes == 1 and len(issued) == 1

    outputs = {"run": ran.out + ran.err}
    for args in (
        ["runs", "-c", "sync.toml"],
        ["report", "-c", "sync.toml"],
        ["report", "-c", "sync.toml", "--format", "csv"],
        ["report", "-c", "sync.toml", "--format", "jsonl"],
        ["report", "-c", "sync.toml", "--errors", "--format", "csv"],
    ):
        done = await asyncengine(*args, cwd=tmp_path, env=env)
        assert done.code == 0, done.err
        outputs[" ".join(args)] = done.out + done.err
    async for ledger_file in anyio.Path(tmp_path).glob("ledger.db*"):  # the database, any -wal / -journal
        outputs[ledger_file.name] = (await ledger_file.read_bytes()).decode("latin-1")
    assert "ledger.db" in outputs
    for name, text in outputs.items():
        for value in (secret, refresh, *issued):
            assert value not in text, f"{value[:6]}… leaked in {name}"
        assert not TOKEN_SHAPE.search(text), f"an access token leaked in {name}"


# --------------------------------------------------------------------------------------------------
# Dry run


@pytest.mark.parametrize(
    "requests_out",
    [pytest.param(None, id="default-path"), pytest.param("would-be.jsonl", id="requests-out")],
)
async def test_dry_run_sends_nothing_and_writes_the_requests(
    tmp_path: Path, sandbox: Sandbox, requests_out: str | None
) -> None:
    """`--dry-run` needs no secrets, calls nothing, creates no ledger, and writes one request per line."""
    sandbox.state.load(seed("C", 3))
    src = write_csv(tmp_path / "c.csv", HEADER, [[f"C{i}", f"New{i}", f"c{i}@example.com"] for i in range(3)])
    write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src, batch_size=2)])
    before = sandbox.stats.snapshot()
    extra = ["--requests-out", requests_out] if requests_out else []
    ran = await asyncengine("run", "sync.toml", "--dry-run", *extra, cwd=tmp_path)  # no credentials at all
    assert ran.code == 0, ran.out + ran.err
    after = sandbox.stats.snapshot()
    assert (
        (after["calls_total"], after["token_requests"]) == (before["calls_total"], before["token_requests"]) == (0, 0)
    )
    assert (sandbox.state.find_by_field("Contacts", "External_Contact_ID", "C0") or {})["Last_Name"] == "L0"
    assert [p async for p in anyio.Path(tmp_path).glob("ledger.db*")] == []

    out = tmp_path / (requests_out or "sync.dry-run.jsonl")
    assert f"Would-be requests: {out.name}" in ran.out
    requests = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(requests) == 2  # batch_size 2: three records in two calls
    assert all(r["method"] == "PUT" and r["url"] == f"{sandbox.url}/crm/v7/Contacts" for r in requests)
    sent = [record for r in requests for record in r["body"]["data"]]
    assert sorted(rec["External_Contact_ID"] for rec in sent) == ["C0", "C1", "C2"]
    assert {"Last_Name": "New1", "Email": "c1@example.com", "External_Contact_ID": "C1"} in sent
    assert all("authorization" not in {h.lower() for h in r["headers"]} for r in requests)
    assert b"oauthtoken" not in out.read_bytes().lower()


def test_dry_run_summary_does_not_point_at_the_real_ledger(tmp_path: Path) -> None:
    """A dry run's last line does not send the user to `ledger <config's ledger> (run N)`, where nothing is."""
    _dry_config(tmp_path)
    ran = syncengine("run", "sync.toml", "--dry-run", cwd=tmp_path, env=WIDE)
    assert ran.code == 0
    assert str(tmp_path / "ledger.db") not in ran.text


# --------------------------------------------------------------------------------------------------
# runs and report, on a history made by a sandbox process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(f"{url}/__sandbox/stats", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox at {url} did not come up (exit {proc.poll()})") from None
        time.sleep(0.02)  # polling a condition with a deadline, not waiting for time to pass


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`syncengine sandbox` as its own process, seeded with contacts C0..C9 and R0..R9."""
    where = tmp_path_factory.mktemp("sandbox")
    data = where / "seed.json"
    records = seed("C", 10)["records"]["Contacts"] + seed("R", 10)["records"]["Contacts"]
    data.write_bytes(orjson.dumps({"records": {"Contacts": records}}))
    port = _free_port()
    cmd = [sys.executable, "-m", "syncengine", "sandbox", "--port", str(port), "--data", str(data)]
    with (where / "sandbox.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(None))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, time.monotonic() + 15)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sandbox_record(url: str, external_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/__sandbox/dump", timeout=5) as reply:
        contacts = orjson.loads(reply.read())["records"]["Contacts"]
    return next(c for c in contacts if c.get("External_Contact_ID") == external_id)


@dataclass(frozen=True)
class History:
    """A ledger with two runs: run 1 (2 ok, 1 REJECTED, 1 INVALID), then run 2 (C2, C3 ok)."""

    dir: Path
    codes: tuple[int, int]


@pytest.fixture(scope="module")
def history(sandbox_url: str, tmp_path_factory: pytest.TempPathFactory) -> History:
    where = tmp_path_factory.mktemp("history")
    first = write_csv(where / "mixed.csv", HEADER, MIXED)
    second = write_csv(where / "good.csv", HEADER, [["C2", "Cy", "cy@example.com"], ["C3", "Di", "di@example.com"]])
    write_config(where / "sync.toml", sandbox_url, [contacts_stream(first)])
    write_config(where / "good.toml", sandbox_url, [contacts_stream(second)])
    codes = (
        syncengine("run", "sync.toml", cwd=where, env=CREDENTIALS).code,
        syncengine("run", "good.toml", cwd=where, env=CREDENTIALS).code,
    )
    return History(dir=where, codes=codes)


def runs_rows(out: str) -> dict[int, list[str]]:
    """The rows of `syncengine runs`, by run id: the cells split on runs of two or more spaces."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


@pytest.mark.parametrize(
    "where", [pytest.param(["-c", "sync.toml"], id="config"), pytest.param(["--ledger", "ledger.db"], id="ledger")]
)
def test_runs_lists_the_runs_with_counts(history: History, where: list[str]) -> None:
    """`runs` lists every run, newest first, with read, ok, errors, skipped and pending."""
    ran = syncengine("runs", *where, cwd=history.dir, env=WIDE)
    assert ran.code == 0, ran.err
    rows = runs_rows(ran.out)
    assert list(rows) == [2, 1]
    # run, started, took, state, streams, read, ok, errors, skipped, pending
    assert rows[1][3:] == ["completed", "contacts", "4", "2", "2", "0", "0"]
    assert rows[2][3:] == ["completed", "contacts", "2", "2", "0", "0", "0"]
    limited = syncengine("runs", *where, "-n", "1", cwd=history.dir, env=WIDE)
    assert list(runs_rows(limited.out)) == [2]


def test_runs_is_readable_when_piped(history: History) -> None:
    """`syncengine runs | cat` shows whole states and stream names, not `comp…` and `cont…`."""
    ran = syncengine("runs", "-c", "sync.toml", cwd=history.dir)
    assert ran.code == 0
    assert "completed" in ran.out and "contacts" in ran.out and "…" not in ran.out


def report_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize(
    ("run", "keys"),
    [
        pytest.param([], ["C2", "C3"], id="latest"),
        pytest.param(["1"], ["C0", "C1", "C404", ""], id="run-1"),
        pytest.param(["2"], ["C2", "C3"], id="run-2"),
    ],
)
@pytest.mark.parametrize("fmt", ["table", "csv", "jsonl"])
def test_report_in_every_format(history: History, run: list[str], keys: list[str], fmt: str) -> None:
    """`report [RUN]` shows one row per change of that run (latest by default) as a table, CSV or JSONL."""
    ran = syncengine("report", *run, "-c", "sync.toml", "--format", fmt, cwd=history.dir)
    assert ran.code == 0, ran.err
    if fmt == "csv":
        rows = report_csv(ran.out)
        assert [r["_key"] for r in rows] == keys
        assert list(rows[0])[:9] == ["_status", "_code", "_message", "_stream", "_seq", "_key", "_crm_id", *HEADER[:2]]
    elif fmt == "jsonl":
        assert [r["_key"] for r in json_lines(ran.out)] == keys
    else:
        body = ran.out.splitlines()[2:]  # header and rule
        assert [re.split(r"\s+", line.strip())[2] for line in body if line.strip()] == [k or "INVALID" for k in keys]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param(["--errors"], [("C404", "REJECTED", "INVALID_DATA"), ("", "INVALID", "MISSING_KEY")], id="errors"),
        pytest.param(["--status", "SUCCESS"], [("C0", "SUCCESS", "SUCCESS"), ("C1", "SUCCESS", "SUCCESS")], id="ok"),
        pytest.param(
            ["--status", "INVALID", "--status", "REJECTED"],
            [("C404", "REJECTED", "INVALID_DATA"), ("", "INVALID", "MISSING_KEY")],
            id="two-statuses",
        ),
        pytest.param(["--code", "MISSING_KEY"], [("", "INVALID", "MISSING_KEY")], id="code"),
        pytest.param(["--errors", "--code", "INVALID_DATA"], [("C404", "REJECTED", "INVALID_DATA")], id="errors-code"),
        pytest.param(["--code", "NO_SUCH_CODE"], [], id="nothing-matches"),
    ],
)
def test_report_filters(history: History, filters: list[str], expected: list[tuple[str, str, str]]) -> None:
    """`--errors`, `--status` and `--code` keep only the matching outcomes."""
    ran = syncengine("report", "1", "--ledger", "ledger.db", *filters, "--format", "jsonl", cwd=history.dir)
    assert ran.code == 0, ran.err
    assert [(r["_key"], r["_status"], r["_code"]) for r in json_lines(ran.out)] == expected


def test_report_to_a_file(history: History) -> None:
    """`-o FILE` writes the report there, prints nothing on stdout, and says how many rows it wrote."""
    ran = syncengine(
        "report", "1", "-c", "sync.toml", "--errors", "--format", "csv", "-o", "errors.csv", cwd=history.dir
    )
    assert ran.code == 0 and ran.out == ""
    assert "2 rows written to errors.csv" in ran.err
    rows = report_csv((history.dir / "errors.csv").read_text(encoding="utf-8"))
    assert [(r["_status"], r["erp_id"], r["last_name"]) for r in rows] == [
        ("REJECTED", "C404", "Ghost"),
        ("INVALID", "", "Nokey"),
    ]


def test_csv_error_export_round_trip(sandbox_url: str, tmp_path: Path) -> None:
    """Fix the bad cells of the CSV error export, feed it back as a source: the failing rows now succeed."""
    mixed = [["R0", "Ok", "r0@example.com"], ["R1", "BadMail", "not-an-email"], ["R404", "Ghost", "g@example.com"],
             ["", "Nokey", "nk@example.com"]]  # fmt: skip
    src = write_csv(tmp_path / "export.csv", HEADER, mixed)
    write_config(tmp_path / "sync.toml", sandbox_url, [contacts_stream(src)])
    first = syncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
    assert first.code == 1
    assert "read 4 = succeeded 1 + rejected 2 + failed 0 + invalid 1" in first.text

    exported = syncengine("report", "-c", "sync.toml", "--errors", "--format", "csv", "-o", "errors.csv", cwd=tmp_path)
    assert exported.code == 0, exported.err
    with (tmp_path / "errors.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    assert sorted(r["_code"] for r in rows) == ["INVALID_DATA", "INVALID_DATA", "MISSING_KEY"]
    fixes = {"not-an-email": ("email", "r1@example.com"), "Ghost": ("erp_id", "R4"), "Nokey": ("erp_id", "R5")}
    for row in rows:
        column, value = fixes.get(row["email"]) or fixes[row["last_name"]]
        row[column] = value
    with (tmp_path / "errors.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)

    write_config(tmp_path / "fixed.toml", sandbox_url, [contacts_stream(tmp_path / "errors.csv", name="fixed")])
    second = syncengine("run", "fixed.toml", cwd=tmp_path, env=CREDENTIALS)
    assert second.code == 0, second.out + second.err
    assert "read 3 = succeeded 3 + rejected 0 + failed 0 + invalid 0 + skipped 0 + pending 0: adds up" in second.text
    assert sandbox_record(sandbox_url, "R1")["Email"] == "r1@example.com"
    assert sandbox_record(sandbox_url, "R4")["Last_Name"] == "Ghost"
    assert sandbox_record(sandbox_url, "R5")["Last_Name"] == "Nokey"
    assert "_status" not in sandbox_record(sandbox_url, "R4")


def _empty_ledger(path: Path) -> None:
    async def make() -> None:
        async with SqliteLedger(path):
            pass

    anyio.run(make)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        pytest.param(None, ["--ledger", "missing.db"], "missing.db", id="no-such-ledger"),
        pytest.param(_empty_ledger, ["--ledger", "empty.db"], "no runs recorded yet", id="no-runs"),
        pytest.param(_empty_ledger, ["7", "--ledger", "empty.db"], "no run 7", id="no-such-run"),
    ],
)
def test_report_without_a_run_exits_2(tmp_path: Path, setup: Any, args: Sequence[str], message: str) -> None:
    """`report` on a ledger that does not exist, has no runs, or lacks the run exits 2 and says why."""
    if setup is not None:
        setup(tmp_path / "empty.db")
    ran = syncengine("report", *args, cwd=tmp_path)
    assert ran.code == 2
    assert ran.err.startswith("syncengine: ledger ") and message in ran.err and "Traceback" not in ran.err


def test_report_on_a_missing_ledger_creates_nothing(tmp_path: Path) -> None:
    """Reading a report from a mistyped ledger path leaves no empty database behind."""
    ran = syncengine("report", "--ledger", "typo.db", cwd=tmp_path)
    assert ran.code == 2
    assert not (tmp_path / "typo.db").exists()


def test_missing_source_file_is_not_recorded_as_interrupted(tmp_path: Path) -> None:
    """A source file that does not exist exits 2; the ledger does not call that run an interruption."""
    write_config(tmp_path / "sync.toml", NOWHERE, [contacts_stream(tmp_path / "gone.csv")])
    ran = syncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
    assert ran.code == 2 and "gone.csv" in ran.out + ran.err
    listed = syncengine("runs", "-c", "sync.toml", cwd=tmp_path, env=WIDE)
    assert "interrupted" not in listed.out
