"""OAuth access tokens: one shared token, refreshed single-flight for every worker.

Zoho allows 10 token refreshes per refresh token per 10 minutes and answers "Access Denied" past
that, so a refresh storm from concurrent workers would lock the whole org out. Every worker asks this
one object; at most one refresh is in flight, and a worker that saw a 401 with a token that has since
been replaced simply uses the new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import anyio
import orjson
import structlog

from syncengine.crm.transport import HttpResponse
from syncengine.errors import AuthError, SecretsError, TransportError
from syncengine.limits import Backoff

__all__ = ["Credentials", "TokenProvider"]

_log = structlog.get_logger("syncengine.auth")


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


class TokenProvider:
    """Hands out the current access token; refreshes it before expiry and after a 401, single-flight."""

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
    ) -> None:
        self._transport = transport
        self._token_url = token_url
        self._credentials = credentials
        self._margin = refresh_margin
        self._effective_margin = refresh_margin
        self._attempts = attempts
        # The accounts server's own trouble: a few tries, at most about half a minute of waiting in all.
        self._backoff = backoff or Backoff(initial=0.5, maximum=8.0, attempts=attempts, total=30.0)
        self._clock = clock
        self._lock = anyio.Lock()
        self._token: str | None = credentials.access_token
        # A ready token's expiry is unknown: use it until Zoho says INVALID_TOKEN.
        self._expires_at = float("inf") if self._token else 0.0
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
        if token is not None and self._clock() < self._expires_at - self._effective_margin:
            return token
        return await self._refresh(seen=token, proactive=True)

    async def rejected(self, token: str) -> str:
        """The CRM answered INVALID_TOKEN to ``token``: return a fresh one (refreshing at most once)."""
        return await self._refresh(seen=token, proactive=False)

    async def _refresh(self, *, seen: str | None, proactive: bool) -> str:
        async with self._lock:
            current = self._token
            if current is not None and current != seen:
                return current  # another worker refreshed while we waited
            if proactive and current is not None and self._clock() < self._expires_at - self._effective_margin:
                return current
            if not self.can_refresh:
                if proactive and current is not None:
                    return current  # no way to refresh yet: keep using the ready token
                raise SecretsError(
                    "the access token was rejected and no refresh credentials are set "
                    "(ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN)"
                )
            return await self._fetch()

    def _scrub(self, text: str) -> str:
        """An accounts server may echo what it was sent: never let a secret into an error message."""
        c = self._credentials
        return _never_a_secret(text, [c.client_secret or "", c.refresh_token or "", self._token or ""])

    async def _fetch(self) -> str:
        """Ask the accounts server for a token, riding out its momentary trouble (5xx, drops, HTML pages).

        Only an answer that says no (``{"error": ...}``, Zoho's way even with HTTP 200) is an AuthError;
        trouble that outlasts the retries is a TransportError, which pauses the run rather than failing it.
        """
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
            if not isinstance(body, dict):
                trouble = f"HTTP {response.status}, not a JSON object"
                continue
            # Zoho's accounts server reports errors with HTTP 200 and an "error" key.
            if "error" in body or "access_token" not in body:
                code = self._scrub(str(body.get("error", "no access_token")))
                raise AuthError(code, self._scrub(str(body.get("error_description", ""))))
            token = str(body["access_token"])
            lifetime = _expires_in_seconds(body)
            self._token = token
            self._expires_at = started + lifetime
            # A short-lived token must not look expired the moment it arrives.
            self._effective_margin = min(self._margin, lifetime / 4)
            self.refreshes += 1
            _log.info("syncengine.token_refreshed", expires_in=round(lifetime))
            return token
        raise TransportError(
            self._token_url, f"token refresh failed after {self._backoff.attempts} tries: {trouble}", maybe_sent=False
        )


def _never_a_secret(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _expires_in_seconds(body: dict[str, object]) -> float:
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
