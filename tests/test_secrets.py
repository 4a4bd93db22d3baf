"""Promise 6, end to end: tokens and client secrets never appear in logs, the ledger, reports, exceptions or reprs.

A whole sync through the CLI with distinctive credentials, faults on every path that logs (500s, dropped
connections, expired tokens, a token refresh mid-run), a dry run, every report format, the run history, a
re-drive and runs with wrong credentials; then every byte they wrote is searched for every secret.
tests/test_cli.py has the plain-run version of this; this one adds the error paths and the in-process reprs.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from syncengine.config import Secrets, load_config, load_secrets
from syncengine.crm.auth import TokenProvider
from syncengine.crm.transport import HttpResponse, Transport
from syncengine.errors import AuthError, SecretsError
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import stat, write_config, write_csv

CLIENT_ID = "1000.CLIENTID7Q2W"
CLIENT_SECRET = "csec-Zx81Qm3vTq7Lp0wE9rYu"
REFRESH_TOKEN = "1000.rtok4c1d2e3f4a5b6c7d.9f8e7d6c5b4a3f2e1d0c"
STATIC_TOKEN = "1000.stat1c0ffee0ddba11.5ca1ab1edeadbeef5eed"  # a ready ZOHO_ACCESS_TOKEN
WRONG_SECRET = "csec-WRONG-Hh4Jk8Ll2Nn6"
WRONG_REFRESH = "1000.wrongrefresh9a8b7c.6d5e4f3a2b1c0d9e8f7a"
TOKEN_SHAPE = re.compile(r"1000\.[0-9a-f]{16,}\.[0-9a-f]{16,}")  # what the sandbox's access tokens look like

BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_") and k not in ("COLUMNS", "LINES")}
CREDENTIALS = {"ZOHO_CLIENT_ID": CLIENT_ID, "ZOHO_CLIENT_SECRET": CLIENT_SECRET, "ZOHO_REFRESH_TOKEN": REFRESH_TOKEN}
HEADER = ["erp_id", "last_name", "email"]


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The secrets found in ``text``, whole or by a distinctive middle part (a truncated value leaks too)."""
    found = []
    for secret in secrets:
        middle = secret[len(secret) // 4 : len(secret) // 4 + 12]
        if secret in text or middle in text:
            found.append(secret[:8] + "…")
    if TOKEN_SHAPE.search(text):
        found.append("an access token")
    return found


async def syncengine(*args: object, cwd: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """The CLI in a subprocess (waited for in a thread: the sandbox serves in this loop); exit code, all output."""
    # Annotated: mypy would pick subprocess.run's text=True overload for the partial.
    run: functools.partial[subprocess.CompletedProcess[bytes]] = functools.partial(
        subprocess.run,
        [sys.executable, "-m", "syncengine", *map(str, args)],
        cwd=cwd,
        env={**BASE_ENV, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    done = await anyio.to_thread.run_sync(run)
    return done.returncode, (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace")


async def expire_now_and_then(sb: Sandbox, done: anyio.Event) -> None:
    """Invalidate every issued token every 150 ms, so calls meet INVALID_TOKEN and the run refreshes mid-run."""
    while not done.is_set():
        with anyio.move_on_after(0.15):
            await done.wait()
        sb.expire_tokens()


async def test_no_secret_in_any_output_of_a_faulty_run(tmp_path: Path) -> None:
    """Runs with 500s, drops, expiring tokens, a dry run, reports, history, a re-drive, wrong credentials: no secret."""
    options = SandboxOptions(
        seed=11,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        static_tokens=(STATIC_TOKEN,),
        token_ttl=2.0,
        refresh_limit=0,
        latency_ms=(2.0, 6.0),
        error_rate=0.15,
        drop_rate=0.1,
    )
    outputs: dict[str, str] = {}
    async with Sandbox(options) as sb:
        issued: list[str] = []  # every access token the sandbox handed out, even those since expired
        grant = sb._tokens.grant

        def recording_grant(params: Mapping[str, str], api_domain: str) -> tuple[dict[str, Any], bool]:
            body, ok = grant(params, api_domain)
            if ok:
                issued.append(str(body["access_token"]))
            return body, ok

        sb._tokens.grant = recording_grant  # type: ignore[method-assign]
        n = 300
        sb.state.load({"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "L"} for i in range(n)]}})
        rows = [[f"C{i}", f"N{i}", f"c{i}@example.com"] for i in range(n)]
        rows += [["C404", "Ghost", "g@example.com"], ["", "Nokey", "n@example.com"], ["C1", "Bad", "not-an-email"]]
        src = write_csv(tmp_path / "c.csv", HEADER, rows)
        stream = {
            "name": "contacts",
            "operation": "update",
            "module": "Contacts",
            "source": {"kind": "csv", "path": str(src)},
            "match": {"column": "erp_id", "field": "External_Contact_ID"},
            "fields": {"Last_Name": "last_name", "Email": "email"},
            "batch_size": 10,
        }
        write_config(tmp_path / "sync.toml", sb.url, [stream], concurrency=4, sub_concurrency=4)
        write_config(tmp_path / "static.toml", sb.url, [{**stream, "name": "static"}], concurrency=4)

        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(expire_now_and_then, sb, done)
            code, outputs["run --json-logs"] = await syncengine(
                "--json-logs", "run", "sync.toml", cwd=tmp_path, env=CREDENTIALS
            )
            done.set()
        assert code == 1, outputs["run --json-logs"]  # some rows REJECTED / INVALID (and maybe FAILED)
        refreshes_in_run = sb.stats.refreshes
        stats = sb.stats.snapshot()
        code, outputs["run (console logs)"] = await syncengine("run", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
        code, outputs["retry 1"] = await syncengine("retry", "1", "-c", "sync.toml", cwd=tmp_path, env=CREDENTIALS)
        code, outputs["run static token"] = await syncengine(
            "--json-logs", "run", "static.toml", cwd=tmp_path, env={"ZOHO_ACCESS_TOKEN": STATIC_TOKEN}
        )
        assert code in (0, 1), outputs["run static token"]
        code, outputs["dry run"] = await syncengine(
            "run", "sync.toml", "--dry-run", "--requests-out", "would-be.jsonl", cwd=tmp_path, env=CREDENTIALS
        )
        assert code == 1, outputs["dry run"]  # the row without a key is INVALID in a dry run too
        for name, env in {
            "wrong secret": {**CREDENTIALS, "ZOHO_CLIENT_SECRET": WRONG_SECRET},
            "wrong refresh token": {**CREDENTIALS, "ZOHO_REFRESH_TOKEN": WRONG_REFRESH},
        }.items():
            code, outputs[name] = await syncengine("--json-logs", "run", "sync.toml", cwd=tmp_path, env=env)
            assert code == 2, outputs[name]
            assert "invalid_c" in outputs[name]  # invalid_client / invalid_code: the refusal is shown, not its input

    # The run met every path it should have: 500s, drops, INVALID_TOKEN and refreshes mid-run.
    assert (
        stat(stats, "errors_500")
        and stat(stats, "drops_before") + stat(stats, "drops_after")
        and stat(stats, "tokens_expired_401")
    ), stats
    assert refreshes_in_run >= 2 and len(issued) >= 2

    for args in (
        ["runs", "-c", "sync.toml"],
        ["report", "1", "-c", "sync.toml"],
        ["report", "1", "-c", "sync.toml", "--format", "csv"],
        ["report", "1", "-c", "sync.toml", "--format", "jsonl"],
        ["report", "-c", "sync.toml", "--errors", "--format", "csv", "-o", "errors.csv"],
        ["report", "-c", "sync.toml", "--format", "jsonl", "-o", "all.jsonl"],
    ):
        code, outputs[" ".join(args)] = await syncengine(*args, cwd=tmp_path, env=CREDENTIALS)
        assert code == 0, outputs[" ".join(args)]
    # The token cache holds an access token (that is what it is for) and is the one file that may.
    cache = tmp_path / "syncengine-tokens.json"
    files = [p async for p in anyio.Path(tmp_path).iterdir() if p.name != "c.csv" and await p.is_file()]
    assert {"would-be.jsonl", "errors.csv", "all.jsonl", "ledger.db", cache.name} <= {p.name for p in files}
    for path in files:  # the ledger and any -wal / -shm, the dry-run requests, the exported reports, the configs
        if path.name != cache.name:
            outputs[path.name] = (await path.read_bytes()).decode("latin-1")

    secrets = [CLIENT_SECRET, REFRESH_TOKEN, STATIC_TOKEN, WRONG_SECRET, WRONG_REFRESH, *issued]
    found = {name: leaked for name, text in outputs.items() if (leaked := leaks(text, secrets))}
    assert found == {}
    # ... but no credential (its keys are hashes), and only its owner may read it.
    cached = cache.read_text(encoding="utf-8")
    for value in (CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, STATIC_TOKEN, WRONG_SECRET, WRONG_REFRESH):
        assert value not in cached and value[len(value) // 4 : len(value) // 4 + 12] not in cached
    assert cache.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------------------------------
# In process: reprs and exception messages


class CannedTransport:
    """Answers every token request with one canned body."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    async def request(self, method: str, url: str, *, headers: dict[str, str], form: dict[str, str]) -> HttpResponse:
        return HttpResponse(status=200, body=orjson.dumps(self.body))


SECRETS = Secrets(
    client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, access_token=STATIC_TOKEN
)


def test_secrets_repr_and_str_show_only_whether_each_is_set() -> None:
    """repr() and str() of Secrets, even inside a container, name the fields and never a value."""
    for text in (repr(SECRETS), str(SECRETS), repr([SECRETS]), f"{SECRETS}", f"{SECRETS!r}"):
        assert leaks(text, [CLIENT_SECRET, REFRESH_TOKEN, STATIC_TOKEN]) == [] and CLIENT_ID not in text
        assert "client_secret=***" in text and "access_token=***" in text
    assert "***" not in repr(Secrets()) and "unset" in repr(Secrets())


async def test_token_provider_and_http_response_reprs_hide_the_token() -> None:
    """A provider holding a fresh token, and the token endpoint's response, print without it."""
    issued = "1000.0123456789abcdef0123.fedcba9876543210fedc"
    body = {"access_token": issued, "expires_in": 3600, "api_domain": "https://www.zohoapis.com"}
    provider = TokenProvider(CannedTransport(body), "https://accounts.zoho.com/oauth/v2/token", SECRETS)
    assert await provider.rejected(STATIC_TOKEN) == issued  # it now holds the new token
    response = HttpResponse(status=200, body=orjson.dumps(body))
    for text in (repr(provider), str(provider), repr(response), str(response)):
        assert leaks(text, [CLIENT_SECRET, REFRESH_TOKEN, STATIC_TOKEN, issued]) == [], text
    async with Transport(timeout=5, max_connections=1) as transport:
        assert leaks(repr(transport), [CLIENT_SECRET, REFRESH_TOKEN, STATIC_TOKEN, issued]) == []


def test_config_reprs_hold_no_secret_from_the_secrets_file(tmp_path: Path) -> None:
    """A config naming a secrets file: Config, CrmConfig and the loaded Secrets print without the file's values."""
    (tmp_path / "zoho.env").write_text(
        f"export ZOHO_CLIENT_ID={CLIENT_ID}\nZOHO_CLIENT_SECRET='{CLIENT_SECRET}'\nrefresh_token=\"{REFRESH_TOKEN}\"\n"
    )
    (tmp_path / "c.csv").write_text("erp_id\n")
    stream = {
        "name": "s",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": "c.csv"},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "erp_id"},
    }
    config = write_config(tmp_path / "sync.toml", "https://crm.example.com", [stream], secrets_file="zoho.env")
    secrets = load_secrets(config.crm, {})
    assert (secrets.client_secret, secrets.refresh_token) == (CLIENT_SECRET, REFRESH_TOKEN)
    for text in (repr(config), str(config), repr(config.crm), repr(secrets), str(load_config(config.file))):
        assert leaks(text, [CLIENT_SECRET, REFRESH_TOKEN]) == []


def test_a_malformed_secrets_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    """A secrets file line that is neither TOML nor KEY=value: the error names the line, not its content."""
    (tmp_path / "zoho.env").write_text(f"ZOHO_CLIENT_ID={CLIENT_ID}\n{CLIENT_SECRET}\n")
    (tmp_path / "c.csv").write_text("erp_id\n")
    stream = {
        "name": "s",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": "c.csv"},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "erp_id"},
    }
    config = write_config(tmp_path / "sync.toml", "https://crm.example.com", [stream], secrets_file="zoho.env")
    with pytest.raises(SecretsError) as caught:
        load_secrets(config.crm, {})
    assert "line 2" in str(caught.value)
    assert leaks(str(caught.value) + repr(caught.value), [CLIENT_SECRET]) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"error": "invalid_client"}, id="invalid-client"),
        pytest.param(
            {"error": "invalid_code", "error_description": f"refresh token {REFRESH_TOKEN} is not valid"},
            id="server-echoes-the-refresh-token",
        ),
        pytest.param(
            {"error": "invalid_client", "error_description": f"client_secret={CLIENT_SECRET} mismatch"},
            id="server-echoes-the-client-secret",
        ),
    ],
)
async def test_an_auth_error_never_carries_a_secret(body: dict[str, str]) -> None:
    """A refused refresh is an AuthError whose message, repr and attributes hold no secret, whatever the server said."""
    provider = TokenProvider(CannedTransport(body), "https://accounts.zoho.com/oauth/v2/token", SECRETS)
    with pytest.raises(AuthError) as caught:
        await provider.rejected(STATIC_TOKEN)
    error = caught.value
    assert error.code == body["error"]
    shown = " ".join([str(error), repr(error), error.code, error.description])
    assert leaks(shown, [CLIENT_SECRET, REFRESH_TOKEN, STATIC_TOKEN]) == [], shown
