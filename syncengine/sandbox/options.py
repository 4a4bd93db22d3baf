r"""The sandbox's settings: where it listens, its limits, its faults, its credentials and its profile.

The defaults are well-behaved: no faults, no limits except 100 records per call and the
sub-concurrency of 10, tokens that live an hour. Everything but ``host``, ``port``, ``schema``,
``data_file`` and ``record_history`` can be changed while the sandbox runs (``Sandbox.set_faults``).

Two profiles. The default one answers the way syncengine was built to expect. ``strict=True``
(``syncengine sandbox --strict``) is the real-Zoho profile: it turns on every stricter reading of
Zoho's documentation that the wire-fidelity audit (``../shared/zoho-fidelity.md`` §2) lists, each of
which is also its own option (``STRICT``: option -> its strict value; left at ``None`` an option
follows the profile, set explicitly it wins):

- ``refuse_bulk_external``: ``PUT /{Module}`` ignores X-EXTERNAL for addressing; a record without
  ``id`` answers MANDATORY_NOT_FOUND ``{"api_name": "id"}`` (audit row 1; the update-records page
  says every bulk record needs an ``id``). The single form ``PUT /{Module}/{ext}`` keeps working.
- ``access_denied_400`` / ``access_denied_localized`` / ``refresh_lockout``: the token endpoint's
  "Access Denied" is HTTP 400 with ``"status": "failure"``, every other one localized ("拒绝访问"),
  and stays on for ``refresh_lockout`` seconds after the last denied request (row 25; 900 = 15 min).
- ``shuffle_related``: ``data[]`` of related and delink answers in a shuffled order (row 10).
- ``delink_missing_404``: a ``?ids=`` delink naming a related record that does not exist answers
  404 ``{"code": "INVALID_DATA", "message": "The record does not exist", "details": {}}`` for the
  whole call, with no ``data[]`` and nothing applied (row 5, the OAS example).
- ``reject_unknown_fields``: an unknown field API name is INVALID_DATA "the field api name given
  seems to be invalid" for that record (row 16).
- ``html_errors``: the calls ``error_rate`` picks are answered by the front end with an HTML page,
  400, 502 or 503, instead of a JSON 500 (row 34).
- ``raw_path_routing``: path segments are split on the raw path, then decoded, so ``a%2Fb`` is one
  key (row 33); ``reject_encoded_keys``: a key carrying an encoded ``/ ? # % \`` answers 404
  INVALID_URL_PATTERN (the pessimistic reading of row 33).
- ``mixed_status_200``: a ``data[]`` answer with some successes is HTTP 200, not 207 (row 11).
- ``limit_exceeded_in_data``: more than 100 records answers LIMIT_EXCEEDED wrapped in ``data[]``
  with one entry, as the OAS example does (row 13).
- ``bind_tokens_to_host``: an access token works only on the host of the ``api_domain`` its token
  response named (``api_domain``; default the sandbox's own URL); elsewhere 401 INVALID_TOKEN, as a
  token of another data centre is (row 28).

Amounts of faults are not readings, so ``strict`` sets none of them: ``lock_rate`` (transient
locks, ``zia_vision_processing``, in every profile), ``persistent_lock_rate`` and ``locked_records``
(``record_locking`` locks that never clear, row 17), ``authorization_failed_modules`` (a
request-level 400 AUTHORIZATION_FAILED, row 15), ``error_rate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from syncengine.sandbox.fields import DEFAULT_SCHEMA
from syncengine.sandbox.schema import Schema

__all__ = ["FIXED_OPTIONS", "STRICT", "SandboxOptions"]

# Options fixed at start: changing them needs a new server or a new state.
FIXED_OPTIONS = frozenset({"host", "port", "schema", "data_file", "record_history"})

# The real-Zoho profile: option -> its value under ``strict=True`` (off: False, or 0.0 seconds).
STRICT: dict[str, bool | float] = {
    "refuse_bulk_external": True,
    "access_denied_400": True,
    "access_denied_localized": True,
    "refresh_lockout": 900.0,
    "shuffle_related": True,
    "delink_missing_404": True,
    "reject_unknown_fields": True,
    "html_errors": True,
    "raw_path_routing": True,
    "reject_encoded_keys": True,
    "mixed_status_200": True,
    "limit_exceeded_in_data": True,
    "bind_tokens_to_host": True,
}


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
    lock_rate: float = 0.0  # fraction of records answered RECORD_LOCKED, action zia_vision_processing (transient)
    persistent_lock_rate: float = 0.0  # fraction of records locked for good (record_locking), chosen per record id
    locked_records: tuple[str, ...] = ()  # record ids locked for good (record_locking)
    authorization_failed_modules: tuple[str, ...] = ()  # modules whose writes answer 400 AUTHORIZATION_FAILED
    refresh_limit: int = 10  # access tokens per refresh token per refresh_window; 0: unlimited
    refresh_window: float = 600.0  # seconds of the sliding refresh-limit window
    max_active_tokens: int = 15  # active access tokens per refresh token; the next one evicts the oldest
    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"
    refresh_token: str = "sandbox-refresh-token"
    token_scope: str = "ZohoCRM.modules.ALL,ZohoCRM.settings.ALL,ZohoCRM.coql.READ"  # scope of issued tokens
    api_domain: str | None = None  # the api_domain token responses name; None: the sandbox's own URL
    static_tokens: tuple[str, ...] = ()  # access tokens accepted without OAuth; they never expire
    scoped_tokens: tuple[tuple[str, str], ...] = ()  # (token, comma-separated scopes): static, restricted
    no_permission_modules: tuple[str, ...] = ()  # modules whose every call answers 403 NO_PERMISSION
    data_file: Path | None = None  # seed file loaded at start and on reset (JSON or JSONL)
    record_history: bool = False  # keep every applied write in ``state.history`` (memory grows with writes)
    schema: Schema = DEFAULT_SCHEMA
    # The profile (see the module docstring); None: follow ``strict``.
    strict: bool = False
    refuse_bulk_external: bool | None = None
    access_denied_400: bool | None = None
    access_denied_localized: bool | None = None
    refresh_lockout: float | None = None  # seconds "Access Denied" stays on after the last denied request
    shuffle_related: bool | None = None
    delink_missing_404: bool | None = None
    reject_unknown_fields: bool | None = None
    html_errors: bool | None = None
    raw_path_routing: bool | None = None
    reject_encoded_keys: bool | None = None
    mixed_status_200: bool | None = None
    limit_exceeded_in_data: bool | None = None
    bind_tokens_to_host: bool | None = None

    def __post_init__(self) -> None:
        for name, on in STRICT.items():
            if getattr(self, name) is None:
                off: bool | float = 0.0 if isinstance(on, float) else False
                object.__setattr__(self, name, on if self.strict else off)
        if (self.refresh_lockout or 0.0) < 0:
            raise ValueError("refresh_lockout must not be negative")
        for name in ("error_rate", "drop_rate", "throttle_rate", "lock_rate", "persistent_lock_rate"):
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
        if "strict" in changes:
            # A new profile: every profile option not set in the same change follows it again.
            for name in STRICT:
                normalized.setdefault(name, None)
        # JSON has no tuples: accept lists from the admin endpoint.
        for name in (
            "latency_ms",
            "static_tokens",
            "no_permission_modules",
            "locked_records",
            "authorization_failed_modules",
        ):
            if isinstance(normalized.get(name), list):
                normalized[name] = tuple(normalized[name])  # type: ignore[arg-type]
        if isinstance(normalized.get("scoped_tokens"), list):
            normalized["scoped_tokens"] = tuple(tuple(p) for p in normalized["scoped_tokens"])  # type: ignore[attr-defined]
        return dataclasses.replace(self, **normalized)  # type: ignore[arg-type]
