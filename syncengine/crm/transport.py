"""The one boundary that owns aiohttp: every aiohttp and socket error becomes a TransportError here.

``maybe_sent`` on the error is what the retry logic needs to know: a connection that was never made
cannot have changed anything in the CRM, while a timeout or a connection dropped after the request
went out may have been applied, and the retry must be read with that in mind.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from syncengine.errors import TransportError

__all__ = ["ERROR_MAP", "HttpResponse", "Transport", "map_error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    """A complete HTTP response, body read."""

    status: int
    body: bytes = field(repr=False)  # a token endpoint's body holds an access token
    credits_remaining: int | None = None  # X-API-CREDITS-REMAINING, when Zoho sends it


# Ordered: the first class that matches wins, so subclasses come before their bases.
# (exception class, reason, maybe_sent, retryable)
ERROR_MAP: tuple[tuple[type[BaseException], str, bool, bool], ...] = (
    (aiohttp.ClientConnectorCertificateError, "TLS certificate rejected (a private CA? set crm.ca_file)", False, False),
    (aiohttp.ClientConnectorSSLError, "TLS handshake failed", False, False),
    (aiohttp.ClientSSLError, "TLS error", False, False),
    (aiohttp.ClientConnectorDNSError, "host name not found", False, True),
    (aiohttp.ClientProxyConnectionError, "proxy connection failed", False, True),
    (aiohttp.ClientConnectorError, "connection refused or unreachable", False, True),
    (aiohttp.ConnectionTimeoutError, "connect timed out", False, True),
    (aiohttp.SocketTimeoutError, "read timed out", True, True),
    (aiohttp.ServerTimeoutError, "timed out", True, True),
    (aiohttp.ServerDisconnectedError, "server closed the connection", True, True),
    (aiohttp.ServerFingerprintMismatch, "server certificate fingerprint mismatch", False, False),
    (aiohttp.ClientConnectionResetError, "connection reset", True, True),
    (aiohttp.ClientPayloadError, "response body incomplete", True, True),
    (aiohttp.ClientOSError, "connection error", True, True),
    (aiohttp.ServerConnectionError, "server connection error", True, True),
    (aiohttp.ClientConnectionError, "connection error", True, True),
    (aiohttp.InvalidURL, "invalid URL", False, False),
    (aiohttp.NonHttpUrlClientError, "not an HTTP URL", False, False),
    (aiohttp.TooManyRedirects, "too many redirects", False, False),
    (aiohttp.RedirectClientError, "bad redirect", False, False),
    (aiohttp.ClientResponseError, "malformed response", True, True),
    (aiohttp.UploadAbortedError, "upload aborted", True, True),
    (aiohttp.ClientError, "HTTP client error", True, True),
    (asyncio.TimeoutError, "timed out", True, True),
    (ConnectionError, "connection error", True, True),
    (OSError, "network error", True, True),
)


def map_error(exc: BaseException, url: str) -> TransportError:
    """Translate an aiohttp or socket exception into our own tree."""
    for cls, reason, maybe_sent, retryable in ERROR_MAP:
        if isinstance(exc, cls):
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                # The verifier's own words say why (expired, unknown issuer, wrong host).
                reason = f"{reason}: {exc.certificate_error}"
            return TransportError(url, reason, maybe_sent=maybe_sent, retryable=retryable)
    raise TypeError(f"unmapped transport exception {type(exc).__name__}") from exc


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class Transport:
    """One pooled aiohttp session for the whole run. TLS verification is always on."""

    def __init__(self, *, timeout: float, max_connections: int, ca_file: Path | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 15.0))
        self._max_connections = max_connections
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ssl=_ssl_context(self._ca_file), enable_cleanup_closed=True
        )
        # Redirects are never followed (see request): a redirected write could be sent twice.
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, raise_for_status=False)
        # aiohttp >= 3.10 silently resends an idempotent request (PUT, DELETE) once when a pooled
        # connection drops. The engine must see every drop: a resend it does not know about turns
        # "relation already removed by the first try" into a wrong REJECTED. No public switch exists.
        if not hasattr(self._session, "_retry_connection"):
            raise RuntimeError("this aiohttp has no _retry_connection: check that it does not resend writes")
        self._session._retry_connection = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        form: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request and read the whole response; any failure is a TransportError."""
        assert self._session is not None, "Transport used outside `async with`"
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                params=params,
                data=body if form is None else form,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                credits = response.headers.get("X-API-CREDITS-REMAINING")
                return HttpResponse(
                    status=response.status,
                    body=raw,
                    credits_remaining=int(credits) if credits and credits.isdigit() else None,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise map_error(exc, url) from exc
