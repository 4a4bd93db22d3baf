"""Counters for everything the sandbox does, served at ``GET /__sandbox/stats``.

The counters are plain attributes bumped on the hot path; ``snapshot`` is the JSON the admin
endpoint serves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from syncengine.model import JSON

__all__ = ["THROTTLE_REASONS", "SandboxStats"]

# Why a call got 429: the keys of ``throttled_429``.
THROTTLE_REASONS = ("concurrency", "sub_concurrency", "credits", "random")


@dataclass(slots=True, kw_only=True)
class SandboxStats:
    """Live counters. Mutable on purpose: the server bumps them; tests read them."""

    calls: Counter[str] = field(default_factory=Counter)  # CRM calls per endpoint kind (see server.KINDS)
    in_flight: int = 0  # CRM calls admitted and not yet answered
    max_in_flight: int = 0
    in_flight_complex: int = 0  # admitted writes carrying more than 10 records
    max_in_flight_complex: int = 0
    throttled_429: Counter[str] = field(default_factory=Counter)  # reason -> count
    credits_used: int = 0
    token_requests: int = 0  # every POST /oauth/v2/token
    refreshes: int = 0  # access tokens issued
    refresh_denied: int = 0  # "Access Denied": the refresh limit was hit
    token_errors: int = 0  # invalid_client, invalid_code, unsupported_grant_type
    token_in_flight: int = 0
    max_concurrent_refreshes: int = 0  # most token requests served at once
    tokens_expired_401: int = 0  # 401 INVALID_TOKEN answers (unknown, expired or evicted token)
    auth_failures_401: int = 0  # 401 AUTHENTICATION_FAILURE and OAUTH_SCOPE_MISMATCH answers
    errors_500: int = 0  # injected INTERNAL_ERROR
    drops_before: int = 0  # connections closed before the call was applied
    drops_after: int = 0  # connections closed after the call was applied (an ambiguous failure)
    locks_injected: int = 0  # records answered RECORD_LOCKED by lock_rate (zia_vision_processing, transient)
    locks_persistent: int = 0  # records answered RECORD_LOCKED for good (record_locking)
    html_errors: int = 0  # injected errors answered as an HTML page (html_errors)
    dc_mismatch_401: int = 0  # INVALID_TOKEN for a token used on another host (bind_tokens_to_host)
    key_overlaps: int = 0  # a write touched a record key that another call in flight also touched
    # Where ``snapshot`` reads records per module (the server points it at its state).
    records_source: Callable[[], dict[str, int]] | None = field(default=None, repr=False, compare=False)

    def clear(self) -> None:
        """Every counter back to zero, in place (calls still in flight keep ``in_flight`` honest)."""
        in_flight, in_flight_complex, token_in_flight = (
            self.in_flight,
            self.in_flight_complex,
            self.token_in_flight,
        )
        fresh = SandboxStats(records_source=self.records_source)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        self.in_flight, self.in_flight_complex, self.token_in_flight = (
            in_flight,
            in_flight_complex,
            token_in_flight,
        )

    def snapshot(self) -> dict[str, JSON]:
        """The counters as JSON, with ``records`` per module: what ``GET /__sandbox/stats`` serves."""
        out = self.as_dict()
        if self.records_source is not None:
            out["records"] = dict(self.records_source())
        return out

    def as_dict(self) -> dict[str, JSON]:
        """The counters as JSON."""
        throttled: dict[str, JSON] = {reason: self.throttled_429.get(reason, 0) for reason in THROTTLE_REASONS}
        return {
            "calls": dict(self.calls),
            "calls_total": sum(self.calls.values()),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "in_flight_complex": self.in_flight_complex,
            "max_in_flight_complex": self.max_in_flight_complex,
            "throttled_429": throttled,
            "throttled_429_total": sum(self.throttled_429.values()),
            "credits_used": self.credits_used,
            "token_requests": self.token_requests,
            "refreshes": self.refreshes,
            "refresh_denied": self.refresh_denied,
            "token_errors": self.token_errors,
            "max_concurrent_refreshes": self.max_concurrent_refreshes,
            "tokens_expired_401": self.tokens_expired_401,
            "auth_failures_401": self.auth_failures_401,
            "errors_500": self.errors_500,
            "drops_before": self.drops_before,
            "drops_after": self.drops_after,
            "locks_injected": self.locks_injected,
            "locks_persistent": self.locks_persistent,
            "html_errors": self.html_errors,
            "dc_mismatch_401": self.dc_mismatch_401,
            "key_overlaps": self.key_overlaps,
        }
