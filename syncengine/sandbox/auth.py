"""Access tokens: the refresh-token grant of ``POST /oauth/v2/token`` and the check of every CRM call.

Zoho's accounts server answers errors with HTTP 200 and ``{"error": ...}``; the limits are 10 access
tokens per refresh token per 10 minutes (then "Access Denied") and 15 active access tokens per refresh
token (the 16th evicts the oldest). Both are options here.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from syncengine.model import JSON
from syncengine.sandbox.options import SandboxOptions

__all__ = ["Grant", "TokenBook", "scope_allows"]

_ACCESS_DENIED: dict[str, JSON] = {
    "error": "Access Denied",
    "error_description": "You have made too many requests continuously. Please try again after some time.",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What an access token allows, and until when."""

    scopes: frozenset[str]  # lower-cased scope names
    expires_at: float | None  # time.monotonic() deadline; None: never expires (static tokens)
    refresh_token: str | None = None


def _scopes(text: str) -> frozenset[str]:
    return frozenset(s.strip().lower() for s in text.replace(" ", ",").split(",") if s.strip())


def scope_allows(scopes: frozenset[str], *, module: str | None, ops: tuple[str, ...], settings: str | None) -> bool:
    """Whether ``scopes`` cover a call: a module operation (``ops`` such as UPDATE) or a settings read."""
    if settings is not None:
        return bool(
            scopes
            & {
                "zohocrm.settings.all",
                f"zohocrm.settings.{settings}.all",
                f"zohocrm.settings.{settings}.read",
            }
        )
    mod = (module or "").lower()
    if "zohocrm.modules.all" in scopes or f"zohocrm.modules.{mod}.all" in scopes:
        return True
    for op in ops:
        op = op.lower()
        wanted = {f"zohocrm.modules.{op}", f"zohocrm.modules.{mod}.{op}"}
        if op != "read":
            wanted |= {"zohocrm.modules.write", f"zohocrm.modules.{mod}.write"}
        if not scopes & wanted:
            return False
    return True


class TokenBook:
    """Issues and checks access tokens."""

    def __init__(self, options: SandboxOptions) -> None:
        self._options = options
        self._issued: dict[str, Grant] = {}
        self._active: dict[str, deque[str]] = {}  # refresh token -> its live access tokens, oldest first
        self._recent: dict[str, deque[float]] = {}  # refresh token -> times of recent grants
        self._static: dict[str, Grant] = {}
        self.configure(options)

    def configure(self, options: SandboxOptions) -> None:
        """Take new options: static tokens, scopes, limits and TTL for later grants."""
        self._options = options
        full = _scopes("ZohoCRM.modules.ALL,ZohoCRM.settings.ALL")
        static = {tok: Grant(scopes=full, expires_at=None) for tok in options.static_tokens}
        static.update({tok: Grant(scopes=_scopes(sc), expires_at=None) for tok, sc in options.scoped_tokens})
        self._static = static

    def grant(self, params: Mapping[str, str], api_domain: str) -> tuple[dict[str, JSON], bool]:
        """Answer a token request: (body, whether a token was issued). Errors are bodies too."""
        opts = self._options
        if params.get("grant_type") != "refresh_token":
            return {"error": "unsupported_grant_type"}, False
        if params.get("client_id") != opts.client_id or params.get("client_secret") != opts.client_secret:
            return {"error": "invalid_client"}, False
        refresh = params.get("refresh_token", "")
        if refresh != opts.refresh_token:
            return {"error": "invalid_code"}, False
        now = time.monotonic()
        recent = self._recent.setdefault(refresh, deque())
        while recent and recent[0] <= now - opts.refresh_window:
            recent.popleft()
        if opts.refresh_limit and len(recent) >= opts.refresh_limit:
            return dict(_ACCESS_DENIED), False
        recent.append(now)
        token = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
        self._issued[token] = Grant(
            scopes=_scopes(opts.token_scope), expires_at=now + opts.token_ttl, refresh_token=refresh
        )
        active = self._active.setdefault(refresh, deque())
        active.append(token)
        while opts.max_active_tokens and len(active) > opts.max_active_tokens:
            self._issued.pop(active.popleft(), None)
        body: dict[str, JSON] = {
            "access_token": token,
            "scope": opts.token_scope,
            "api_domain": api_domain,
            "token_type": "Bearer",
            "expires_in": max(1, round(opts.token_ttl)),
        }
        return body, True

    def check(self, token: str) -> Grant | None:
        """The grant of a live token, or None (unknown, expired or evicted)."""
        grant = self._static.get(token) or self._issued.get(token)
        if grant is None:
            return None
        if grant.expires_at is not None and time.monotonic() >= grant.expires_at:
            self._issued.pop(token, None)
            return None
        return grant

    def expire_all(self) -> None:
        """Invalidate every token the OAuth endpoint issued (static tokens stay)."""
        self._issued.clear()
        self._active.clear()
