"""The frozen, validated config objects (built by ``config.toml``) and the tables they draw on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from syncengine.errors import ConfigError
from syncengine.model import JSON, Target

__all__ = [
    "DATA_CENTRES",
    "FIELD_TYPES",
    "SECRET_ENV",
    "TOKEN_CACHE_NAME",
    "Config",
    "CrmConfig",
    "DeleteWhen",
    "FieldMapping",
    "KeyConfig",
    "LedgerConfig",
    "Secrets",
    "SourceConfig",
    "SqlSourceConfig",
    "StreamConfig",
]

# Data centre -> (API domain, accounts server), from zoho-api.md §5.4 and the wire-fidelity audit (row 29):
# accounts servers from Zoho's accounts multi-dc page, API hosts from the Bigin multi-dc page and the SDK's dc/*.py.
# The token response's api_domain wins over this table's API domain when a run has one (see TokenProvider).
DATA_CENTRES: Final[Mapping[str, tuple[str, str]]] = {
    "us": ("https://www.zohoapis.com", "https://accounts.zoho.com"),
    "eu": ("https://www.zohoapis.eu", "https://accounts.zoho.eu"),
    "in": ("https://www.zohoapis.in", "https://accounts.zoho.in"),
    "au": ("https://www.zohoapis.com.au", "https://accounts.zoho.com.au"),
    "jp": ("https://www.zohoapis.jp", "https://accounts.zoho.jp"),
    "ca": ("https://www.zohoapis.ca", "https://accounts.zohocloud.ca"),
    "cn": ("https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn"),
    "sa": ("https://www.zohoapis.sa", "https://accounts.zoho.sa"),
    # accounts.zoho.uk: Zoho's accounts multi-dc page; www.zohoapis.uk: the code index (a second source).
    "uk": ("https://www.zohoapis.uk", "https://accounts.zoho.uk"),
    # www.zohoapis.ae: Zoho WorkDrive's multi-DC table and the code index; accounts.zoho.ae follows Zoho's pattern
    # (unconfirmed by a Zoho page: the token response's api_domain is used when a run gets one).
    "ae": ("https://www.zohoapis.ae", "https://accounts.zoho.ae"),
}

# The token cache's file when the config names none: beside the ledger, shared by every config there.
TOKEN_CACHE_NAME: Final = "syncengine-tokens.json"

FIELD_TYPES: Final = ("string", "integer", "float", "boolean", "date", "datetime", "json")

# Secret name -> the environment variable that supplies it (and wins over secrets_file).
SECRET_ENV: Final[Mapping[str, str]] = {
    "client_id": "ZOHO_CLIENT_ID",
    "client_secret": "ZOHO_CLIENT_SECRET",
    "refresh_token": "ZOHO_REFRESH_TOKEN",
    "access_token": "ZOHO_ACCESS_TOKEN",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CrmConfig:
    """How to reach the CRM, and the limits to keep while doing so."""

    api_domain: str  # scheme://host[:port], no trailing slash
    accounts_url: str
    api_version: str
    concurrency: int
    sub_concurrency: int
    requests_per_second: float | None
    credit_budget: int | None
    trigger: tuple[str, ...] | None  # None: leave the CRM's default (everything runs); (): nothing runs
    timeout: float  # seconds per call
    secrets_file: Path | None
    allow_insecure_http: bool
    ca_file: Path | None
    data_centre: str | None = None  # the data centre that chose the hosts; None: an explicit api_domain/accounts_url
    token_cache: Path | None = None  # the file tokens are shared through by the host's processes; None: none

    @property
    def api_base(self) -> str:
        return f"{self.api_domain}/crm/{self.api_version}"

    @property
    def token_url(self) -> str:
        return f"{self.accounts_url}/oauth/v2/token"


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerConfig:
    """Where the results ledger lives."""

    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    """One stream's input file. The CSV options keep their defaults for JSONL."""

    kind: str  # csv | jsonl
    path: Path
    encoding: str = "utf-8"
    delimiter: str = ","
    quotechar: str = '"'
    empty: str = "absent"  # what an empty CSV cell means: absent (not sent) or null (clears the field)


@dataclass(frozen=True, slots=True, kw_only=True)
class SqlSourceConfig:
    """One stream's database source: a table or a query, read in keyset pages (see readers/sql.py)."""

    kind: str  # sqlite | postgres
    key: str  # the unique tie-breaker column (the primary key)
    path: Path | None = None  # sqlite: the database file
    dsn_env: str | None = None  # postgres: the environment variable holding the DSN (never the DSN itself)
    table: str | None = None  # exactly one of table and query
    query: str | None = None
    cursor: str | None = None  # the incremental column (e.g. updated_at); None: key order only
    lag_seconds: float = 0.0  # re-read rows whose cursor is within this of the stored position
    page_size: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyConfig:
    """Which source column addresses a record, and as which CRM field (``None``: the record id)."""

    column: str
    field: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldMapping:
    """One CRM field: from a source ``column`` (coerced to ``type``), or a constant ``value``."""

    field: str
    column: str | None  # None: a constant
    value: JSON = None  # the constant (TOML has no null, so a constant is never None)
    type: str = "string"
    required: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """One source feeding one kind of change into one module."""

    name: str
    source: SourceConfig | SqlSourceConfig
    target: Target
    match: KeyConfig
    parent: KeyConfig | None
    fields: tuple[FieldMapping, ...]
    batch_size: int
    linger: float  # seconds
    max_deletes: int | None = None  # more deletes than this in one run stop the stream
    delete_when: DeleteWhen | None = None  # update_related: rows that say so become delinks
    external_update: str = "auto"  # update by match.field: auto, bulk, resolve or single (external.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteWhen:
    """A source column that turns a row into a delink (a ``deleted`` flag, a tombstone marker)."""

    column: str
    values: frozenset[str]  # compared with the cell, stripped and lower-cased
    target: Target  # the stream's target with operation delete_related


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole config file."""

    file: Path
    crm: CrmConfig
    ledger: LedgerConfig
    streams: tuple[StreamConfig, ...]

    def stream(self, name: str) -> StreamConfig:
        for stream in self.streams:
            if stream.name == name:
                return stream
        known = ", ".join(s.name for s in self.streams)
        raise ConfigError(str(self.file), "streams", f"no stream is named {name!r}; expected one of: {known}")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Secrets:
    """Zoho credentials. Neither ``repr`` nor ``str`` ever shows a value, only whether it is set."""

    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = None
    access_token: str | None = None

    def __repr__(self) -> str:
        # client_id is not secret, but printing it buys nothing and keeps this rule simple.
        def show(value: str | None, mark: str) -> str:
            return mark if value else "unset"

        return (
            f"Secrets(client_id={show(self.client_id, 'set')}, "
            f"client_secret={show(self.client_secret, '***')}, "
            f"refresh_token={show(self.refresh_token, '***')}, "
            f"access_token={show(self.access_token, '***')})"
        )

    __str__ = __repr__
