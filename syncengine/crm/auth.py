"""OAuth access tokens: one shared token, refreshed single-flight for every worker, and for every process.

Zoho allows 10 token refreshes per refresh token per 10 minutes and answers "Access Denied" past that,
so a refresh storm from concurrent workers, or from many short processes, would lock the whole org out.
Every worker asks this one object; at most one refresh is in flight, and a worker that saw a 401 with a
token that has since been replaced simply uses the new one. With a ``TokenCache`` the same holds across
the processes of the host: the cache is read before a refresh and written after it, under its lock.

How the accounts server says no (audit rows 25-26):

- ``{"error": "invalid_client"}``, ``invalid_code``, ... (with HTTP 200): the credentials are wrong, an
  ``AuthError``, fatal.
- "Access Denied" (HTTP 400 with ``"status": "failure"``, sometimes localized: "拒绝访问"): too many
  tokens, a ``TokenLockout``. Told apart by shape, since it comes in the user's language: Zoho's
  credential errors are OAuth codes (lower-case snake_case); the lockout is a phrase. A run pauses
  (resumable); a watch waits it out (``LockoutPolicy``). Either way the endpoint is left alone until
  ``retry_at``, since a request during a lockout restarts it.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

import anyio
import orjson
import structlog

from syncengine.crm.tokencache import CachedToken, TokenCache, cache_key
from syncengine.crm.transport import HttpResponse
from syncengine.errors import AuthError, SecretsError, TokenLockout, TokenRefused, TransportError
from syncengine.limits import Backoff

__all__ = ["Credentials", "LockoutPolicy", "TokenProvider", "token_refused"]

_log = structlog.get_logger("syncengine.auth")

_OAUTH_CODE = re.compile(r"[a-z][a-z0-9_]*")
_CREDENTIALS = "ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and ZOHO_REFRESH_TOKEN"
_HINTS: Final[Mapping[str, str]] = {
    "invalid_client": "the client id or secret is wrong, or the client is registered with another data centre's "
    "accounts server: check ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and crm.data_centre",
    "invalid_client_secret": "the client secret is wrong: check ZOHO_CLIENT_SECRET",
    "invalid_code": "the refresh token is unknown, revoked or of another client: check ZOHO_REFRESH_TOKEN",
}


class Credentials(Protocol):
    """What the provider needs from syncengine.config.Secrets."""

    @property
    def client_id(self) -> str | None: ...
    @property
    def client_secret(self) -> str | None: ...
    @property
    def refresh_token(self) -> str | None: ...
    @property
    def access_token(self) -> str | None: ...


class _Poster(Protocol):
    async def request(
        self, method: str, url: str, *, headers: dict[str, str], form: dict[str, str]
    ) -> HttpResponse: ...


# Jitter on top of a lockout's quiet spell, growing with each lockout in a row; at most 6 hours of waiting in all.
_LOCKOUT_BACKOFF: Final = Backoff(initial=30.0, maximum=900.0, attempts=1_000_000, total=6 * 3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class LockoutPolicy:
    """What an "Access Denied" from the token endpoint costs: when to ask again, and whether to wait for it."""

    quiet: float = 900.0  # seconds to leave the endpoint alone (integrators saw it lift after 15-30 minutes)
    wait: bool = False  # a watch waits lockouts out; a run pauses at once (resumable)
    # Jitter on top of ``quiet``, growing with each lockout in a row, so processes that waited together do not
    # knock together; ``total`` bounds the waiting, after which even a watch stops (paused).
    backoff: Backoff = _LOCKOUT_BACKOFF


class TokenProvider:
    """Hands out the current access token; refreshes it before expiry and after a 401, single-flight.

    ``api_domain`` is where the calls go as configured and ``data_centre`` the data centre the config named,
    if it did (then the ``api_domain`` the token response names wins: ``call_domain``). ``stopping``: events
    that end a wait for a lockout (the run is stopping).
    """

    def __init__(
        self,
        transport: _Poster,
        token_url: str,
        credentials: Credentials,
        *,
        refresh_margin: float = 300.0,
        attempts: int = 5,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        cache: TokenCache | None = None,
        lockout: LockoutPolicy | None = None,
        api_domain: str | None = None,
        data_centre: str | None = None,
    ) -> None:
        self._transport = transport
        self._token_url = token_url
        self._credentials = credentials
        self._margin = refresh_margin
        self._effective_margin = refresh_margin
        self._attempts = attempts
        # The accounts server's own trouble: a few tries, at most about half a minute of waiting in all.
        self._backoff = backoff or Backoff(initial=0.5, maximum=8.0, attempts=attempts, total=30.0)
        self._clock, self._wall = clock, wall
        self._lock = anyio.Lock()
        self._token: str | None = credentials.access_token
        # A ready token's expiry is unknown: use it until Zoho says INVALID_TOKEN.
        self._expires_at = float("inf") if self._token else 0.0
        self._lifetime = 0.0
        self._cache = cache
        c = credentials
        self._key = cache_key(token_url, c.client_id, c.client_secret, c.refresh_token)
        self._lockout = lockout or LockoutPolicy()
        self._locked_until = 0.0  # time.time() before which the token endpoint is not asked again
        self._lockouts, self._waited = 0, 0.0  # lockouts in a row, and seconds spent waiting them out
        self._api_domain, self._data_centre, self._calls_to = api_domain, data_centre, api_domain
        self.api_domain: str | None = None  # what the last token response (or the cache) named
        self.stopping: Sequence[anyio.Event] = ()
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"TokenProvider(url={self._token_url!r}, refreshes={self.refreshes})"

    @property
    def can_refresh(self) -> bool:
        c = self._credentials
        return bool(c.client_id and c.client_secret and c.refresh_token)

    async def token(self) -> str:
        """The token to send now; refreshes first when it is missing or about to expire."""
        token = self._token
        if token is not None and self._fresh():
            return token
        return await self._refresh(seen=token, proactive=True)

    async def rejected(self, token: str) -> str:
        """The CRM answered INVALID_TOKEN to ``token``: return a fresh one (refreshing at most once)."""
        return await self._refresh(seen=token, proactive=False)

    def call_domain(self) -> str | None:
        """Where CRM calls go: when the config named a data centre, the ``api_domain`` the token response named
        (a token works on its own data centre's host only), said once in the log; else the configured one."""
        named = self.api_domain
        if named is None or named == self._calls_to:
            return self._calls_to
        if self._data_centre is not None:
            _log.info(
                "syncengine.api_domain_from_token",
                data_centre=self._data_centre,
                configured=self._api_domain,
                api_domain=named,
            )
            self._calls_to = named
        elif named != self._api_domain:
            # An explicit pair wins (a Zoho sandbox org's host is not the one its tokens name), but say so once.
            _log.warning("syncengine.api_domain_differs", configured=self._api_domain, token_api_domain=named)
            self._api_domain = named  # only to say it once
        return self._calls_to

    def refused(self, code: str, message: str, refreshes: int) -> AuthError:
        """The error to stop with when the CRM refused ``refreshes`` fresh tokens in a row (see TokenRefused)."""
        if refreshes == 0 or not self.can_refresh:
            return AuthError(code, f"{message} (after {refreshes} token refreshes)")
        return TokenRefused(
            code,
            message,
            refreshes=refreshes,
            api_domain=self._calls_to or "the configured API host",
            token_domain=self.api_domain,
            data_centre=self._data_centre,
            accounts_url=self._token_url,
        )

    def _fresh(self) -> bool:
        return self._clock() < self._expires_at - self._effective_margin

    async def _refresh(self, *, seen: str | None, proactive: bool) -> str:
        async with self._lock:
            current = self._token
            if current is not None and current != seen:
                return current  # another worker refreshed while we waited
            if proactive and current is not None and self._fresh():
                return current
            if not self.can_refresh:
                if proactive and current is not None:
                    return current  # no way to refresh yet: keep using the ready token
                raise SecretsError(
                    "the access token was rejected and no refresh credentials are set "
                    "(ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN)"
                )
            while True:
                try:
                    token = await self._renew(seen)
                except TokenLockout as lockout:
                    if proactive and current is not None and self._clock() < self._expires_at:
                        return current  # not expired yet: good while it lasts
                    await self._wait_out(lockout)
                    continue
                self._lockouts, self._waited = 0, 0.0
                return token

    async def _renew(self, seen: str | None) -> str:
        """A token from the host's cache when another process refreshed lately, else from the accounts server."""
        if self._locked_until > self._wall():
            raise TokenLockout("Access Denied", "still locked out", retry_at=self._locked_until)
        cache = self._cache
        if cache is None:
            return await self._fetch()
        if (token := self._adopt(cache.read(self._key), seen)) is not None:
            return token
        async with cache.locked():
            entry = cache.read(self._key)  # again: the process we waited for may have refreshed
            if (token := self._adopt(entry, seen)) is not None:
                return token
            if entry is not None and entry.locked_until > self._wall():
                self._locked_until = entry.locked_until
                raise TokenLockout("Access Denied", "another process was locked out", retry_at=entry.locked_until)
            try:
                token = await self._fetch()
            except TokenLockout as lockout:
                cache.write(self._key, CachedToken(locked_until=lockout.retry_at))  # the others must not knock
                raise
            except BaseException:
                if entry is not None and entry.access_token == seen:
                    cache.write(self._key, None)  # the CRM refused it: no other process is to take it
                raise
            expires_at = self._wall() + (self._expires_at - self._clock())
            cache.write(
                self._key,
                CachedToken(
                    access_token=token, api_domain=self.api_domain, expires_at=expires_at, lifetime=self._lifetime
                ),
            )
            return token

    def _adopt(self, entry: CachedToken | None, seen: str | None) -> str | None:
        """The cache's token, taken, unless it is the one just refused or has no more than the margin left."""
        if entry is None or entry.access_token is None or entry.access_token == seen:
            return None
        left = entry.expires_at - self._wall()
        margin = min(self._margin, entry.lifetime / 4)
        if left <= margin:
            return None
        self._token, self._expires_at, self._effective_margin = entry.access_token, self._clock() + left, margin
        self._lifetime = entry.lifetime
        self.api_domain = entry.api_domain
        _log.info("syncengine.token_reused", expires_in=round(left))
        return entry.access_token

    async def _wait_out(self, lockout: TokenLockout) -> None:
        """A watch waits a lockout out; a run, a stop, or waiting past the policy's total raise it instead.

        The wait runs past ``retry_at`` (a request during the lockout would restart it), plus a jitter that
        grows with each lockout in a row.
        """
        policy = self._lockout
        self._lockouts += 1
        wait = max(0.0, lockout.retry_at - self._wall()) + policy.backoff.wait(self._lockouts)
        if not policy.wait or self._waited + wait > policy.backoff.total:
            raise lockout
        self._waited += wait
        _log.warning("syncengine.token_lockout_waiting", code=lockout.code, wait_s=round(wait, 1))
        with anyio.move_on_after(wait):
            await _first_of(self.stopping)
            raise lockout  # the run is stopping: what has no outcome stays pending

    def _scrub(self, text: str) -> str:
        """An accounts server may echo what it was sent: never let a secret into an error message."""
        c = self._credentials
        return _never_a_secret(text, [c.client_secret or "", c.refresh_token or "", self._token or ""])

    async def _fetch(self) -> str:
        """Ask the accounts server for a token; a body that says no is an AuthError (or a TokenLockout)."""
        body, started = await self._ask()
        if "error" in body or "access_token" not in body:
            code = self._scrub(str(body.get("error", "no access_token")))
            description = self._scrub(str(body.get("error_description", "")))
            if _is_lockout(body):
                self._locked_until = self._wall() + self._lockout.quiet
                raise TokenLockout(code, description, retry_at=self._locked_until)
            raise AuthError(code, description, _HINTS.get(code, f"the credentials were refused: check {_CREDENTIALS}"))
        token = str(body["access_token"])
        lifetime = _expires_in_seconds(body)
        self._token, self._expires_at, self._lifetime = token, started + lifetime, lifetime
        # A short-lived token must not look expired the moment it arrives.
        self._effective_margin = min(self._margin, lifetime / 4)
        self.api_domain = _usable_domain(body.get("api_domain"))
        self.refreshes += 1
        _log.info("syncengine.token_refreshed", expires_in=round(lifetime))
        return token

    async def _ask(self) -> tuple[dict[str, object], float]:
        """The accounts server's JSON answer and when it was asked, riding out its momentary trouble (5xx,
        drops, HTML pages); trouble that outlasts the retries is a TransportError, which pauses a run."""
        c = self._credentials
        form = {
            "grant_type": "refresh_token",
            "client_id": c.client_id or "",
            "client_secret": c.client_secret or "",
            "refresh_token": c.refresh_token or "",
        }
        trouble = ""
        for wait in self._backoff.waits():
            await anyio.sleep(wait)
            started = self._clock()
            try:
                response = await self._transport.request("POST", self._token_url, headers={}, form=form)
            except TransportError as exc:
                if not exc.retryable:
                    raise
                trouble = exc.reason
                continue
            try:
                body = orjson.loads(response.body)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                # Zoho's accounts server reports errors with HTTP 200 (or 400) and an "error" key.
                return body, started
            trouble = f"HTTP {response.status}, not a JSON object"
        raise TransportError(
            self._token_url, f"token refresh failed after {self._backoff.attempts} tries: {trouble}", maybe_sent=False
        )


def token_refused(tokens: TokenProvider | None, code: str, message: str, refreshes: int) -> AuthError:
    """What the sender stops with when the CRM refuses the token ``refreshes`` times after a refresh each."""
    if tokens is None:
        return AuthError(code, f"{message} (no way to refresh the token)")
    return tokens.refused(code, message, refreshes)


def _is_lockout(body: Mapping[str, object]) -> bool:
    """ "Access Denied" in any language: an error that is not an OAuth code (invalid_client, invalid_code, ...)."""
    error = body.get("error")
    if not isinstance(error, str):
        return False
    error = error.strip()
    return error.lower() == "access denied" or _OAUTH_CODE.fullmatch(error) is None


def _usable_domain(value: object) -> str | None:
    """An ``api_domain`` from a token response, if it is one calls may go to (https, or http to loopback)."""
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        _ = parts.port
    except ValueError:
        return None
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        return None
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return value.strip().rstrip("/")
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _first_of(events: Sequence[anyio.Event]) -> None:
    """Until one of ``events`` is set (forever when there are none)."""
    if not events:
        await anyio.sleep_forever()
    async with anyio.create_task_group() as tg:

        async def one(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(one, event)


def _never_a_secret(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _expires_in_seconds(body: Mapping[str, object]) -> float:
    """Seconds of validity; older responses gave ``expires_in`` in milliseconds beside ``expires_in_sec``."""
    for key in ("expires_in_sec", "expires_in"):
        value = body.get(key)
        if isinstance(value, int | float | str):
            try:
                seconds = float(value)
            except ValueError:
                continue
            if key == "expires_in" and "expires_in_sec" not in body and seconds > 86_400:
                seconds /= 1000.0
            return seconds
    return 3600.0
