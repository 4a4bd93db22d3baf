"""The sandbox's settings: where it listens, its limits, its faults and its credentials.

The defaults are well-behaved: no faults, no limits except 100 records per call and the
sub-concurrency of 10, tokens that live an hour. Everything but ``host``, ``port``, ``schema``,
``data_file`` and ``record_history`` can be changed while the sandbox runs (``Sandbox.set_faults``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from syncengine.sandbox.schema import DEFAULT_SCHEMA, Schema

__all__ = ["FIXED_OPTIONS", "SandboxOptions"]

# Options fixed at start: changing them needs a new server or a new state.
FIXED_OPTIONS = frozenset({"host", "port", "schema", "data_file", "record_history"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxOptions:
    """How a sandbox behaves. Rates are probabilities per call (``lock_rate``: per record)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    seed: int = 0  # every random fault is drawn from random.Random(seed)
    concurrency: int = 0  # CRM calls in flight before 429; 0: unlimited
    sub_concurrency: int = 10  # writes carrying more than 10 records in flight before 429; 0: off
    credits: int | None = None  # credit budget; writes cost ceil(records / 10), other calls 1; None: unlimited
    token_ttl: float = 3600.0  # seconds an access token issued by /oauth/v2/token lives
    latency_ms: tuple[float, float] = (0.0, 0.0)  # uniform min..max added to every CRM call
    error_rate: float = 0.0  # fraction of calls answered 500 INTERNAL_ERROR
    drop_rate: float = 0.0  # fraction of calls whose connection is closed with no response
    throttle_rate: float = 0.0  # fraction of calls answered 429 at random
    lock_rate: float = 0.0  # fraction of records answered RECORD_LOCKED
    refresh_limit: int = 10  # access tokens per refresh token per refresh_window; 0: unlimited
    refresh_window: float = 600.0  # seconds of the sliding refresh-limit window
    max_active_tokens: int = 15  # active access tokens per refresh token; the next one evicts the oldest
    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"
    refresh_token: str = "sandbox-refresh-token"
    token_scope: str = "ZohoCRM.modules.ALL,ZohoCRM.settings.ALL"  # scope of tokens the OAuth endpoint issues
    static_tokens: tuple[str, ...] = ()  # access tokens accepted without OAuth; they never expire
    scoped_tokens: tuple[tuple[str, str], ...] = ()  # (token, comma-separated scopes): static, restricted
    no_permission_modules: tuple[str, ...] = ()  # modules whose every call answers 403 NO_PERMISSION
    data_file: Path | None = None  # seed file loaded at start and on reset (JSON or JSONL)
    record_history: bool = False  # keep every applied write in ``state.history`` (memory grows with writes)
    schema: Schema = DEFAULT_SCHEMA

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "throttle_rate", "lock_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        low, high = self.latency_ms
        if not 0.0 <= low <= high:
            raise ValueError(f"latency_ms must be (min, max) with 0 <= min <= max, not {self.latency_ms!r}")
        for name in ("concurrency", "sub_concurrency", "refresh_limit", "max_active_tokens", "port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.credits is not None and self.credits < 0:
            raise ValueError("credits must not be negative")
        if self.token_ttl <= 0:
            raise ValueError("token_ttl must be positive")

    def replace(self, changes: Mapping[str, object]) -> SandboxOptions:
        """A copy with ``changes`` applied; refuses unknown and start-only options."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown sandbox options: {sorted(unknown)}")
        fixed = set(changes) & FIXED_OPTIONS
        if fixed:
            raise ValueError(f"options fixed at start cannot change: {sorted(fixed)}")
        normalized = dict(changes)
        # JSON has no tuples: accept lists from the admin endpoint.
        for name in ("latency_ms", "static_tokens", "no_permission_modules"):
            if isinstance(normalized.get(name), list):
                normalized[name] = tuple(normalized[name])  # type: ignore[arg-type]
        if isinstance(normalized.get("scoped_tokens"), list):
            normalized["scoped_tokens"] = tuple(tuple(p) for p in normalized["scoped_tokens"])  # type: ignore[attr-defined]
        return dataclasses.replace(self, **normalized)  # type: ignore[arg-type]
