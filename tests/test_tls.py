"""TLS is verified, always: the sandbox served over HTTPS with a certificate from a throwaway CA (trustme).

Without ``ca_file`` the run refuses the server's certificate and stops with a clear message, sending nothing;
with ``ca_file`` naming the CA it goes through. Plain ``http://`` is for loopback only unless the config says
``allow_insecure_http = true`` (tests/test_config.py covers the loader; here: the CLI and the tricky hosts).
"""

from __future__ import annotations

import functools
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from syncengine.config import load_config
from syncengine.errors import ConfigError
from syncengine.ledger import SqliteLedger
from syncengine.sandbox import Sandbox
from tests.conftest import run, write_config, write_csv

BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_")}
CREDENTIALS = {
    "ZOHO_CLIENT_ID": "sandbox-client-id",
    "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
    "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
}


@dataclass(frozen=True)
class TlsSandbox:
    sandbox: Sandbox
    port: int
    ca_file: Path  # the CA that signed the server's certificate
    other_ca_file: Path  # a CA that did not

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}"


@pytest.fixture
async def tls_sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsSandbox]:
    """The sandbox's own app served over TLS only (its plain-HTTP socket is closed once TLS is up)."""
    where = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    other.cert_pem.write_to_path(str(where / "other-ca.pem"))
    async with Sandbox() as sb:
        runner = sb._runner
        assert runner is not None
        plain = list(runner.sites)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        for other_site in plain:  # nothing may reach the sandbox but over TLS, whatever a token response says
            await other_site.stop()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        sb.state.load({"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "L"} for i in range(3)]}})
        yield TlsSandbox(sb, port, where / "ca.pem", where / "other-ca.pem")


def contacts(tmp_path: Path) -> dict[str, Any]:
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [["C0", "Ada"], ["C1", "Bob"], ["C2", "Cy"]])
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(src)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
    }


async def syncengine(*args: object, cwd: Path, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """The CLI in a subprocess, waited for in a thread so the in-process sandbox keeps serving."""
    import anyio

    done = await anyio.to_thread.run_sync(
        functools.partial(
            subprocess.run,
            [sys.executable, "-m", "syncengine", *map(str, args)],
            cwd=cwd,
            env={**BASE_ENV, **CREDENTIALS, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    "crm",
    [
        pytest.param({}, id="no-ca-file"),
        pytest.param({"ca_file": "OTHER"}, id="another-ca"),
        pytest.param({"allow_insecure_http": True}, id="insecure-http-flag-does-not-turn-verification-off"),
    ],
)
async def test_an_untrusted_certificate_stops_the_run_before_anything_is_sent(
    tmp_path: Path, tls_sandbox: TlsSandbox, crm: dict[str, Any]
) -> None:
    """A certificate the run does not trust: exit 2 with a certificate error, no traceback, every record pending."""
    crm = {k: str(tls_sandbox.other_ca_file) if v == "OTHER" else v for k, v in crm.items()}
    write_config(tmp_path / "sync.toml", tls_sandbox.url(), [contacts(tmp_path)], **crm)
    code, out, err = await syncengine("run", "sync.toml", cwd=tmp_path)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert "certificate" in (out + err).lower() and tls_sandbox.url() in out + err
    # Nothing reached the CRM (not even the token endpoint), and the records stay pending: resumable, not FAILED.
    assert tls_sandbox.sandbox.stats.snapshot()["token_requests"] == 0
    assert tls_sandbox.sandbox.stats.snapshot()["calls_total"] == 0
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        summary = await ledger.summary(1)
        assert [row async for row in ledger.outcomes(1)] == []
    assert (summary.read, summary.pending, summary.failed) == (3, 3, 0) and summary.adds_up
    assert summary.state == "failed"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_custom_ca_is_trusted_with_ca_file(tmp_path: Path, tls_sandbox: TlsSandbox, host: str) -> None:
    """ca_file naming the CA that signed the server's certificate: the run goes through over TLS."""
    write_config(tmp_path / "sync.toml", tls_sandbox.url(host), [contacts(tmp_path)], ca_file=str(tls_sandbox.ca_file))
    code, out, err = await syncengine("run", "sync.toml", cwd=tmp_path)
    assert code == 0, out + err
    assert (tls_sandbox.sandbox.state.find_by_field("Contacts", "External_Contact_ID", "C2") or {})["Last_Name"] == "Cy"


async def test_in_process_the_certificate_error_is_a_fatal_stop(tmp_path: Path, tls_sandbox: TlsSandbox) -> None:
    """run_sync returns (no exception) with the run stopped as fatal, saying the certificate was rejected."""
    config = write_config(tmp_path / "sync.toml", tls_sandbox.url(), [contacts(tmp_path)])
    result = await run(config)
    assert result.fatal and result.stopped and "certificate" in result.stopped.lower()
    assert result.summary.pending == 3 and result.calls <= 1 and result.summary.adds_up


def test_plain_http_to_another_host_is_refused_by_the_cli(tmp_path: Path) -> None:
    """`run` with http:// to a non-loopback host exits 2 naming the key and the flag, before anything is sent."""
    write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [["C0", "A"]])
    text = (
        '[crm]\napi_domain = "http://crm.example.com"\naccounts_url = "http://crm.example.com"\n'
        '[[streams]]\nname = "c"\noperation = "update"\nmodule = "Contacts"\n'
        'source = { kind = "csv", path = "c.csv" }\nmatch = { column = "erp_id", field = "External_Contact_ID" }\n'
        'fields = { Last_Name = "last_name" }\n'
    )
    (tmp_path / "sync.toml").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "syncengine", "run", "sync.toml"],
        cwd=tmp_path,
        env={**BASE_ENV, **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("syncengine: sync.toml: crm.api_domain: https:// for a host that is not loopback")
    assert "allow_insecure_http" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "syncengine.db").exists()


@pytest.mark.parametrize(
    "host",
    [
        "http://localhost.example.com",  # a name that starts like loopback
        "http://127.0.0.1.nip.io",  # a name that resolves anywhere
        "http://0.0.0.0:8080",  # every interface is not loopback
        "http://[::ffff:10.0.0.1]",  # an IPv4-mapped address elsewhere
        "http://10.0.0.1",
        "HTTP://crm.example.com",  # the scheme in capitals is still plain http
    ],
)
def test_plain_http_to_lookalike_hosts_is_refused(tmp_path: Path, host: str) -> None:
    """Only real loopback may have plain http: hosts that merely look local are refused, naming the key."""
    (tmp_path / "c.csv").write_text("erp_id\n")
    text = (
        f'[crm]\napi_domain = "{host}"\naccounts_url = "https://accounts.zoho.com"\n'
        '[[streams]]\nname = "c"\noperation = "update"\nmodule = "Contacts"\n'
        'source = { kind = "csv", path = "c.csv" }\nmatch = { column = "erp_id" }\nfields = { Last_Name = "erp_id" }\n'
    )
    (tmp_path / "sync.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "sync.toml")
    assert caught.value.key == "crm.api_domain" and "allow_insecure_http" in caught.value.expected
    (tmp_path / "sync.toml").write_text(text.replace("[crm]\n", "[crm]\nallow_insecure_http = true\n"))
    assert load_config(tmp_path / "sync.toml").crm.allow_insecure_http is True
