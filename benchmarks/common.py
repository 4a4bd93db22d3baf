"""What every scenario shares: server processes, input files, engine runs measured from outside.

Every measured program runs in a process of its own, started here, so that its CPU time and peak RSS
are its own (``os.wait4`` returns the rusage of exactly that child) and so that the server it talks to
never competes with it inside one event loop.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "CONTACT_ID_BASE",
    "CREDENTIALS",
    "PYTHON",
    "ROOT",
    "EngineRun",
    "ProcessRun",
    "Server",
    "canned_server",
    "contact_csv",
    "contact_key",
    "contact_records",
    "contact_seed",
    "engine_config",
    "free_port",
    "http_json",
    "run_engine",
    "run_json",
    "run_measured",
    "sandbox_server",
]

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent  # helpers run as ``python -m benchmarks.x`` from here
CREDENTIALS: Mapping[str, str] = {
    "ZOHO_CLIENT_ID": "sandbox-client-id",
    "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
    "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
}
CONTACT_ID_BASE = 111_111_000_000_000_000  # seeded contacts get ids CONTACT_ID_BASE + i


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: bytes | None = None, timeout: float = 60.0) -> Any:
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


# -- input files ----------------------------------------------------------------------------------


def contact_key(i: int) -> str:
    return f"C{i:07d}"


def contact_seed(path: Path, n: int, *, with_ids: bool = False) -> Path:
    """A sandbox seed (JSONL) of ``n`` contacts with External_Contact_ID C0000000… (and fixed ids)."""
    if path.exists():
        return path
    with path.open("wb") as handle:
        for i in range(n):
            record: dict[str, str] = {"External_Contact_ID": contact_key(i), "Last_Name": "Before"}
            if with_ids:
                record["id"] = str(CONTACT_ID_BASE + i)
            handle.write(orjson.dumps({"module": "Contacts", "record": record}) + b"\n")
    return path


def contact_csv(path: Path, n: int) -> Path:
    """The source: ``n`` contact updates by external ID, as an ERP export would give them."""
    if path.exists():
        return path
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["erp_id", "last_name", "title"])
        for i in range(n):
            out.writerow([contact_key(i), f"After{i}", "Buyer"])
    return path


def contact_records(n: int) -> Iterator[dict[str, str]]:
    """The records syncengine builds from ``contact_csv``: the same bodies, for the bare loop and the peers."""
    for i in range(n):
        yield {"Last_Name": f"After{i}", "Title": "Buyer", "External_Contact_ID": contact_key(i)}


def engine_config(
    path: Path,
    *,
    base: str,
    ledger: Path,
    source: Path,
    concurrency: int,
    sub_concurrency: int = 10,
    streams: str | None = None,
) -> Path:
    """A syncengine config pointed at ``base`` (sandbox or canned server); one contacts stream by default."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    if streams is None:
        streams = (
            '[[streams]]\nname = "contacts"\noperation = "update"\nmodule = "Contacts"\n'
            f'source = {{ kind = "csv", path = "{source}" }}\n'
            'match = { column = "erp_id", field = "External_Contact_ID" }\n'
            'fields = { Last_Name = "last_name", Title = "title" }\n'
        )
    path.write_text(
        f'[crm]\napi_domain = "{base}"\naccounts_url = "{base}"\nconcurrency = {concurrency}\n'
        f"sub_concurrency = {min(sub_concurrency, concurrency)}\n\n"
        f'[ledger]\npath = "{ledger}"\n\n{streams}'
    )
    return path


# -- server processes -----------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """A server process on 127.0.0.1:port."""

    process: subprocess.Popen[bytes]
    base: str

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", f"{self.base}/__sandbox/stats")
        return result

    def reset(self) -> None:
        http_json("POST", f"{self.base}/__sandbox/reset", b"")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before answering {url}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def _serve(argv: Sequence[str], port: int, timeout: float = 180.0) -> Iterator[Server]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/__sandbox/stats", process, timeout)
        yield Server(process=process, base=base)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def sandbox_server(
    *,
    data: Path | None = None,
    concurrency: int = 0,
    sub_concurrency: int = 10,
    latency_ms: tuple[float, float] = (0.0, 0.0),
) -> Iterator[Server]:
    """``syncengine sandbox`` in its own process, with Zoho's limits and latency."""
    port = free_port()
    argv = [PYTHON, "-m", "syncengine", "sandbox", "--port", str(port), "--refresh-limit", "0"]
    argv += ["--concurrency", str(concurrency), "--sub-concurrency", str(sub_concurrency)]
    if data is not None:
        argv += ["--data", str(data)]
    if latency_ms[1] > 0:
        argv += ["--latency-ms", f"{latency_ms[0]:g},{latency_ms[1]:g}"]
    with _serve(argv, port) as server:
        yield server


@contextmanager
def canned_server() -> Iterator[Server]:
    """The canned-answer server (``benchmarks.canned``) in its own process."""
    port = free_port()
    with _serve([PYTHON, "-m", "benchmarks.canned", "--port", str(port)], port, timeout=60) as server:
        yield server


# -- measured runs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessRun:
    """A child process, measured by the kernel: wall time, CPU time and peak RSS of that process alone."""

    exit_code: int
    wall_s: float
    cpu_s: float  # user + system, every thread
    peak_rss_mb: float
    stdout: str
    stderr: str


def run_measured(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
) -> ProcessRun:
    """Run ``argv`` to the end and read its own rusage with ``os.wait4`` (not the sum over all children).

    ``prefix`` wraps the command (a profiler); the rusage is then the wrapper's, which includes its child.
    """
    started = time.monotonic()
    with (
        open(os.devnull, "rb") as stdin,
        _tempfile("out") as out,
        _tempfile("err") as err,
    ):
        process = subprocess.Popen(
            [*prefix, *argv],
            stdin=stdin,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=ROOT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return ProcessRun(
            exit_code=process.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


@contextmanager
def _tempfile(kind: str) -> Iterator[Any]:
    import tempfile

    with tempfile.TemporaryFile(prefix=f"bench-{kind}-") as handle:
        yield handle


def run_json(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], ProcessRun]:
    """Run a helper (bare loop, peer) that prints one JSON object on its last stdout line."""
    run = run_measured(argv, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.exit_code != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv[:4])}… exited {run.exit_code}:\n{run.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result, run


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRun:
    """``syncengine run`` seen from outside: its ``syncengine.run_finished`` event and its rusage."""

    finished: dict[str, Any]
    process: ProcessRun

    @property
    def elapsed_s(self) -> float:
        return float(self.finished["elapsed_s"])

    @property
    def read(self) -> int:
        return int(self.finished["read"])

    @property
    def succeeded(self) -> int:
        return int(self.finished["succeeded"])

    @property
    def rate(self) -> float:
        return self.read / self.elapsed_s


def run_engine(config: Path, *, stream: str | None = None, prefix: Sequence[str] = ()) -> EngineRun:
    """``syncengine --json-logs run CONFIG`` in its own process, exactly as a user runs it."""
    argv = [PYTHON, "-m", "syncengine", "--json-logs", "run", str(config)]
    if stream is not None:
        argv += ["--stream", stream]
    run = run_measured(argv, env={**os.environ, **CREDENTIALS}, prefix=prefix)
    finished = next(
        (
            json.loads(line)
            for line in reversed(run.stderr.splitlines() + run.stdout.splitlines())
            if line.startswith("{") and '"syncengine.run_finished"' in line
        ),
        None,
    )
    if finished is None:
        raise RuntimeError(f"engine failed (exit {run.exit_code}):\n{run.stderr[-3000:]}")
    return EngineRun(finished=finished, process=run)
