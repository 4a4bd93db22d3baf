"""The token cache: access tokens shared by every process on the host, so many short runs refresh once.

Zoho issues at most 10 access tokens per refresh token in 10 minutes and then locks the token endpoint
("Access Denied") until it has been left alone for 15-30 minutes. Each process refreshing once would be
enough for a cron of short runs, a ``retry``, a crash-looping ``watch`` or another tool on the same
refresh token to lock the org out. So a token lives in a file the processes share:

- one JSON file, mode 0600, owned by the user; it is written to a temporary file (created 0600) and
  ``os.replace``d, so a reader never sees half a file and needs no lock;
- a lock file beside it, taken with ``fcntl.flock`` around a refresh: processes that start together
  refresh once, the others wait for the lock and find the new token;
- entries keyed by a hash of the accounts URL and the credentials: none of them is stored, and a
  changed secret or refresh token never reuses a token it would not have been given;
- per entry the access token (the point of the cache), the ``api_domain`` its response named, when it
  expires (wall clock: processes share no monotonic clock) and when a lockout ends, so that one
  process's "Access Denied" keeps the others from knocking (a request during a lockout restarts it).

The cache is a saving, never a reason to fail: a file that cannot be read or written is left aside with
one warning. It is never the ledger, and neither the token nor the file's content is ever logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import orjson
import structlog

__all__ = ["CachedToken", "TokenCache", "cache_key"]

_log = structlog.get_logger("syncengine.auth")

_VERSION: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CachedToken:
    """One entry: a token and where it works, or only a lockout. ``repr`` never shows the token."""

    access_token: str | None = None  # None: no usable token (a lockout is all there is to share)
    api_domain: str | None = None  # what the token response named
    expires_at: float = 0.0  # time.time() when the token dies
    lifetime: float = 0.0  # seconds it was issued for (the refresh margin depends on it)
    locked_until: float = 0.0  # time.time() before which the token endpoint is not to be asked

    def __repr__(self) -> str:
        token = "***" if self.access_token else "unset"
        return (
            f"CachedToken(access_token={token}, api_domain={self.api_domain!r}, "
            f"expires_at={self.expires_at:.0f}, locked_until={self.locked_until:.0f})"
        )


def cache_key(accounts_url: str, *credentials: str | None) -> str:
    """The entry of these credentials at this accounts server: a hash, so no credential is stored."""
    material = "\0".join([accounts_url, *(c or "" for c in credentials)])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class TokenCache:
    """The file at ``path`` (and its lock, ``path`` + ``.lock``)."""

    def __init__(self, path: Path, *, lock_timeout: float = 300.0, poll: float = 0.05) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._lock_timeout = lock_timeout
        self._poll = poll
        self._warned = False

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r})"

    def read(self, key: str) -> CachedToken | None:
        """The entry for ``key``, if the file has one (no lock needed: the file is only ever replaced whole)."""
        raw = self._entries().get(key)
        if not isinstance(raw, dict):
            return None
        try:
            token = raw.get("access_token")
            domain = raw.get("api_domain")
            return CachedToken(
                access_token=token if isinstance(token, str) and token else None,
                api_domain=domain if isinstance(domain, str) and domain else None,
                expires_at=float(raw.get("expires_at", 0.0)),
                lifetime=float(raw.get("lifetime", 0.0)),
                locked_until=float(raw.get("locked_until", 0.0)),
            )
        except (TypeError, ValueError):
            return None

    def write(self, key: str, entry: CachedToken | None) -> None:
        """Set (or, with None, drop) ``key``'s entry; entries that are neither alive nor locked go. Hold ``locked``."""
        now = time.time()
        entries = {
            k: v
            for k, v in self._entries().items()
            if k != key and isinstance(v, dict) and _alive(v, now)
        }
        if entry is not None:
            entries[key] = {
                "access_token": entry.access_token,
                "api_domain": entry.api_domain,
                "expires_at": entry.expires_at,
                "lifetime": entry.lifetime,
                "locked_until": entry.locked_until,
            }
        try:
            self._replace(orjson.dumps({"version": _VERSION, "entries": entries}))
        except OSError as exc:
            self._warn("cannot write the token cache", exc)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the host-wide lock (a refresh in progress). A holder that outstays ``lock_timeout`` (hung, not
        dead: the kernel drops a dead process's lock) is given up on with a warning."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self._warn("cannot open the token cache's lock", exc)
            fd = None
        if fd is None:
            yield
            return
        try:
            # Polled, not blocking: a blocked flock cannot be cancelled, and would stall the event loop.
            with anyio.move_on_after(self._lock_timeout) as waited:
                while True:
                    if _try_lock(fd):
                        break
                    await anyio.sleep(self._poll)
            if waited.cancelled_caught:
                _log.warning("syncengine.token_cache_lock_timeout", path=str(self._lock_path))
            yield
        finally:
            os.close(fd)  # releases the lock

    def _entries(self) -> dict[str, object]:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn("cannot read the token cache", exc)
            return {}
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                # Someone else could have read it or planted a token: ignore it; the next write replaces it.
                self._warn("the token cache is readable by others or not ours; ignoring it", None)
                return {}
            try:
                document = orjson.loads(handle.read())
            except (orjson.JSONDecodeError, OSError):
                return {}
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            return {}
        entries = document.get("entries")
        return entries if isinstance(entries, dict) else {}

    def _replace(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _warn(self, what: str, exc: OSError | None) -> None:
        if not self._warned:
            self._warned = True
            reason = (exc.strerror or type(exc).__name__) if exc is not None else None
            _log.warning("syncengine.token_cache_unusable", what=what, path=str(self.path), reason=reason)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _alive(entry: dict[str, object], now: float) -> bool:
    """Still worth keeping: a token not yet expired, or a lockout not yet over."""
    values = [entry.get("expires_at"), entry.get("locked_until")]
    return any(isinstance(v, int | float) and v > now for v in values)
