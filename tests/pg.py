"""A real, throwaway PostgreSQL server for the tests: ``postgres_dsn`` (session) and ``postgres_database``.

The server is a fresh cluster in a temporary directory, on a free port on 127.0.0.1, with its unix
socket in that directory too, so it touches nothing on the machine and never collides with a running
server. ``initdb`` refuses to run as root, so under root (CI) the cluster is created and run as the
``postgres`` OS user (or ``nobody``), which owns the directory. Durability is off (``fsync=off``): the
data is thrown away at the end.

The binaries are found on ``PATH`` or under ``/usr/lib/postgresql/<version>/bin`` (Debian's layout;
``apt-get install postgresql-15``). Only their absence skips the tests; any other failure is an error.

Use it from a test module with ``from tests.pg import postgres_database, postgres_dsn``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

__all__ = ["PgServer", "find_pg_bin", "postgres_database", "postgres_dsn", "start_postgres"]

_UNPRIVILEGED = ("postgres", "nobody")  # who runs the server when the tests run as root


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; the newest Debian version wins."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    return versions[0] if versions else None


@dataclass(frozen=True)
class PgServer:
    """A running cluster: where it lives and how to reach it."""

    bin: Path
    directory: Path
    port: int
    user: pwd.struct_passwd | None  # the OS user it runs as, when the tests run as root

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the server binaries as the server's user; raise with its output if it fails."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.directory)}
        user = self.user
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            env=env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            # Under root: drop to the server's user, its group, and no supplementary groups.
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in _UNPRIVILEGED:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root, and none of the users {_UNPRIVILEGED} exists to run PostgreSQL as")


def start_postgres(bin_dir: Path) -> PgServer:
    """initdb a throwaway cluster and start it; the caller stops it and removes ``directory``."""
    user = _server_user()
    directory = Path(tempfile.mkdtemp(prefix="syncengine-pg-"))
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
    last_error: Exception | None = None
    for _ in range(3):  # the free port can be taken between probing it and binding it: try another
        server = PgServer(bin=bin_dir, directory=directory, port=_free_port(), user=user)
        data = directory / "data"
        if not data.exists():
            server.run(
                "initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"
            )
        options = (
            f"-p {server.port} -k {directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        try:
            server.run("pg_ctl", "-D", str(data), "-l", str(directory / "server.log"), "-o", options, "-w", "start")
        except RuntimeError as exc:
            last_error = exc
            continue
        return server
    log = directory / "server.log"
    details = log.read_text(errors="replace") if log.exists() else ""
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {last_error}\n{details}")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a PostgreSQL server started for this test session (user postgres, no password)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql-15")
    server = start_postgres(bin_dir)
    try:
        yield server.dsn
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
async def postgres_database(postgres_dsn: str) -> AsyncIterator[str]:
    """The DSN of a fresh, empty database on the session's server, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
