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
from syncengine.errors import AuthError, SecretsError

__all__ = ["Credentials", "TokenProvider"]

log = structlog.get_logger("syncengine.auth")


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._token_url = token_url
        self._credentials = credentials
        self._margin = refresh_margin
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
        if token is not None and self._clock() < self._expires_at - self._margin:
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
            if proactive and current is not None and self._clock() < self._expires_at - self._margin:
                return current
            if not self.can_refresh:
                if proactive and current is not None:
                    return current  # no way to refresh yet: keep using the ready token
                raise SecretsError(
                    "the access token was rejected and no refresh credentials are set "
                    "(ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN)"
                )
            return await self._fetch()

    async def _fetch(self) -> str:
        c = self._credentials
        form = {
            "grant_type": "refresh_token",
            "client_id": c.client_id or "",
            "client_secret": c.client_secret or "",
            "refresh_token": c.refresh_token or "",
        }
        started = self._clock()
        response = await self._transport.request("POST", self._token_url, headers={}, form=form)
        try:
            body = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise AuthError("BAD_TOKEN_RESPONSE", f"HTTP {response.status}, not JSON") from None
        if not isinstance(body, dict):
            raise AuthError("BAD_TOKEN_RESPONSE", f"HTTP {response.status}, not a JSON object")
        # Zoho's accounts server reports errors with HTTP 200 and an "error" key.
        if "error" in body or "access_token" not in body:
            raise AuthError(str(body.get("error", "no access_token")), str(body.get("error_description", "")))
        token = str(body["access_token"])
        self._token = token
        self._expires_at = started + _expires_in_seconds(body)
        self.refreshes += 1
        log.info("syncengine.token_refreshed", expires_in=round(self._expires_at - started))
        return token


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
