"""One exception tree for syncengine. Every error names the offending value and carries it as attributes.

::

    SyncError
    ├── ConfigError            a config file is wrong: names the file, the key path and what was expected
    ├── SecretsError           a secret is missing or unreadable (never carries the secret itself)
    ├── SourceError            a source cannot be opened or read at all (bad rows are outcomes, not errors)
    ├── LedgerError            the ledger cannot be opened or written
    └── CrmError               talking to Zoho CRM
        ├── TransportError     the call did not complete: timeout, refused or dropped connection
        │                      (``maybe_sent`` says whether the CRM may have applied it)
        ├── AuthError          the accounts server refused to issue a token (e.g. invalid_client, Access Denied)
        ├── StreamHalted       a request-level error that says the config is wrong (INVALID_MODULE, ...)
        ├── CreditsExhausted   429s outlasted the backoff: the org's daily credits look spent
        ├── BudgetReached      the configured credit budget would be exceeded: the rest stays pending
        └── CrmUnavailable     call after call gave up on 5xx or network trouble: an outage, not bad records
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BudgetReached",
    "ConfigError",
    "CreditsExhausted",
    "CrmError",
    "CrmUnavailable",
    "LedgerError",
    "SecretsError",
    "SourceError",
    "StreamHalted",
    "SyncError",
    "TransportError",
]


class SyncError(Exception):
    """The root of every error syncengine raises on purpose."""


class ConfigError(SyncError):
    """A config file is wrong."""

    def __init__(self, file: str, key: str, expected: str) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        super().__init__(f"{file}: {key}: {expected}")


class SecretsError(SyncError):
    """A secret is missing or unreadable. The message names where it was looked for, never its value."""


class SourceError(SyncError):
    """A source cannot be opened or read at all."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class LedgerError(SyncError):
    """The ledger cannot be opened or written."""

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(f"ledger {location}: {reason}")


class CrmError(SyncError):
    """Talking to Zoho CRM went wrong."""


class TransportError(CrmError):
    """The HTTP call did not complete. ``maybe_sent``: the CRM may have received and applied it."""

    def __init__(self, url: str, reason: str, *, maybe_sent: bool, retryable: bool = True) -> None:
        self.url = url
        self.reason = reason
        self.maybe_sent = maybe_sent
        self.retryable = retryable
        super().__init__(f"{reason} ({url})")


class AuthError(CrmError):
    """The accounts server refused to issue an access token."""

    def __init__(self, code: str, description: str = "") -> None:
        self.code = code
        self.description = description
        super().__init__(f"token refresh refused: {code}" + (f" ({description})" if description else ""))


class StreamHalted(CrmError):
    """A request-level error that no retry can fix: the stream's config is wrong."""

    def __init__(self, stream: str, code: str, message: str) -> None:
        self.stream = stream
        self.code = code
        self.message = message
        super().__init__(f"stream {stream!r} stopped: {code}: {message}")


class CreditsExhausted(CrmError):
    """429s outlasted the backoff: the org's API credits for the rolling 24 hours look spent."""


class CrmUnavailable(CrmError):
    """Call after call gave up on transient trouble: the CRM is down, so stop rather than fail every record."""


class BudgetReached(CrmError):
    """The configured credit budget would be exceeded: what is left stays pending, resumable."""
