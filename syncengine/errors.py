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
        ├── AuthError          the accounts server refused to issue a token (invalid_client, invalid_code, ...)
        │   ├── TokenLockout   "Access Denied": too many token requests; not the credentials (``retry_at``)
        │   └── TokenRefused   the CRM refused the tokens the accounts server had just issued (a wrong data centre)
        ├── StreamHalted       a request-level error that says the config is wrong (INVALID_MODULE, ...)
        ├── CreditsExhausted   429s outlasted the backoff: the org's daily credits look spent
        ├── BudgetReached      the configured credit budget would be exceeded: the rest stays pending
        └── CrmUnavailable     call after call gave up on 5xx or network trouble: an outage, not bad records
"""

from __future__ import annotations

import time

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
    "TokenLockout",
    "TokenRefused",
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
    """The accounts server refused to issue an access token; ``hint`` says what to check."""

    def __init__(self, code: str, description: str = "", hint: str = "") -> None:
        self.code = code
        self.description = description
        self.hint = hint
        text = f"token refresh refused: {code}" + (f" ({description})" if description else "")
        super().__init__(text + (f": {hint}" if hint else ""))


class TokenLockout(AuthError):
    """The token endpoint said "Access Denied" (in any language): too many token requests, not bad credentials.

    Zoho allows 10 tokens per refresh token in 10 minutes and lifts the lockout only once it has been left
    alone for a while (15-30 minutes, integrators report; a request during it restarts it). ``retry_at``
    (``time.time()``) is when to ask again: a run pauses until then, a watch waits.
    """

    def __init__(self, code: str, description: str = "", *, retry_at: float) -> None:
        self.code = code
        self.description = description
        self.hint = ""
        self.retry_at = retry_at
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(retry_at))
        said = f"{code}" + (f" ({description})" if description else "")
        CrmError.__init__(
            self,
            f"the token endpoint locked us out: {said}; too many tokens were asked for in a short time (Zoho "
            f"allows 10 per 10 minutes) and it answers again only after a quiet spell: retry after {when}",
        )


class TokenRefused(AuthError):
    """The CRM refused (INVALID_TOKEN) ``refreshes`` fresh tokens in a row that the accounts server had just issued.

    The usual cause is a data-centre mismatch: a token works only on the API host of the data centre that
    issued it, and ``token_domain`` is the one its response named, ``api_domain`` where the calls went.
    """

    def __init__(
        self,
        code: str,
        description: str,
        *,
        refreshes: int,
        api_domain: str,
        token_domain: str | None,
        data_centre: str | None,
        accounts_url: str,
    ) -> None:
        self.code, self.description, self.hint = code, description, ""
        self.refreshes, self.api_domain, self.token_domain = refreshes, api_domain, token_domain
        self.data_centre, self.accounts_url = data_centre, accounts_url
        configured = f'crm.data_centre = "{data_centre}"' if data_centre else "crm.api_domain"
        if token_domain and token_domain != api_domain:
            why = f"a data-centre mismatch: the tokens were issued for {token_domain}, the calls go to {api_domain}"
        else:
            why = f"likely a data-centre mismatch: {accounts_url} issues the tokens, {api_domain} refuses them"
        why += f" ({configured})"
        CrmError.__init__(
            self,
            f"the CRM at {api_domain} refused {refreshes} fresh access tokens in a row ({code}: {description}): "
            f"{why}. Set crm.data_centre to the org's data centre, or crm.api_domain and crm.accounts_url to "
            "hosts of the same data centre",
        )


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
