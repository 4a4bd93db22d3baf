"""One TOML file -> frozen, validated config objects.

Every mistake raises :class:`~syncengine.errors.ConfigError` naming the file, the exact key path
(``streams[1] (contacts).match.column``; stream indexes count from 0, as in the TOML array) and what
was expected. Unknown keys are mistakes too, so a typo never passes silently. Relative paths resolve
against the config file's directory. Secrets never live in this file: they come from the environment or
from the file named by ``crm.secrets_file`` (see :func:`load_secrets`).

A complete example::

    [crm]
    data_centre = "us"              # us, eu, in, au, jp, ca, cn, sa
    # or both of these together (they override data_centre), e.g. for the sandbox:
    # api_domain = "http://127.0.0.1:8080"    # CRM host, no path
    # accounts_url = "http://127.0.0.1:8080"  # token endpoint: accounts_url + "/oauth/v2/token"
    api_version = "v7"              # v7 (default) or v8
    concurrency = 10                # calls in flight, 1..25 (default 10)
    sub_concurrency = 10            # calls carrying >10 records in flight, 1..10, <= concurrency
    requests_per_second = 20.0      # optional
    credit_budget = 50000           # optional, positive
    trigger = ["workflow"]          # optional; [] disables workflows, approvals and blueprints
    timeout_seconds = 60            # per call (default 60)
    secrets_file = "secrets.toml"   # optional: client_id, client_secret, refresh_token / access_token
    allow_insecure_http = false     # http:// to a non-loopback host is refused unless true
    ca_file = "corp-ca.pem"         # optional: trust a custom CA (must exist)

    [ledger]
    path = "syncengine.db"          # default: syncengine.db beside this file

    [[streams]]
    name = "contacts"               # unique, [A-Za-z0-9_-]+
    operation = "update"            # update | upsert | update_related | delete_related
    module = "Contacts"             # for related operations: the parent's module
    source = { kind = "csv", path = "exports/contacts.csv", delimiter = ",", encoding = "utf-8",
               quotechar = '"', empty = "absent" }   # empty cells: "absent" (not sent) or "null"
    match = { column = "erp_id", field = "External_Contact_ID" }   # or { column = "crm_id" }: by record id
    linger_ms = 200                 # flush a partial batch after this long (default 200)
    batch_size = 100                # 1..100 (default 100)
    max_deletes = 500               # optional guardrail: a run that asks for more deletes stops the stream
    # update_related only: rows whose column says so become delinks of the same relation
    delete_when = { column = "deleted", values = ["true", "1", "yes"] }

    [streams.fields]                # CRM field API name = mapping
    Last_Name = "last_name"                             # a column, sent as a string
    Email = { column = "email", required = true }       # row INVALID when absent or empty
    Annual_Revenue = { column = "revenue", type = "float" }
    Lead_Source = { value = "ERP" }                     # a constant, sent as written

    [[streams]]
    name = "erp-accounts"                               # a database table, followed incrementally
    operation = "update"
    module = "Accounts"
    source = { kind = "postgres", dsn_env = "ERP_DSN",  # the DSN lives in $ERP_DSN, never in this file
               table = "sales.accounts",                # or query = "SELECT ... FROM ..." (one of the two)
               key = "id",                              # unique tie-breaker (the primary key), required
               cursor = "updated_at",                   # optional: read in (cursor, key) order, resumably
               lag_seconds = 5,                         # optional: re-read this far back for late commits
               page_size = 1000 }                       # rows per page (default 1000)
    # kind = "sqlite" takes path = "erp.db" instead of dsn_env; the other keys are the same.
    match = { column = "id", field = "ERP_Account_ID" }
    fields = { Account_Name = "name" }

    [[streams]]
    name = "deal-contacts"
    operation = "update_related"
    module = "Contacts"                                 # the parent's module
    related_list = "Deals"
    related_module = "Deals"                            # default: related_list
    source = { kind = "jsonl", path = "exports/deal_contacts.jsonl" }
    parent = { column = "contact_erp_id", field = "External_Contact_ID" }
    match = { column = "deal_erp_id", field = "External_Deal_ID" }   # addresses the related record
    fields = { Contact_Role = "role_id" }               # relation fields (delete_related: none)

Field types: string (default), integer, float, boolean, date (YYYY-MM-DD), datetime (ISO 8601 with
an offset), json (the cell holds JSON text). A constant (``value``) takes no ``type``: it is sent as the
TOML value it is written as (a TOML date or offset datetime is sent as its ISO string). ``upsert``
streams may add ``duplicate_check_fields = ["Email"]`` and must match on a field, not a record id.
"""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from syncengine.errors import ConfigError, SecretsError
from syncengine.model import JSON, Operation, Target

__all__ = [
    "DeleteWhen",
    "DATA_CENTRES",
    "FIELD_TYPES",
    "SECRET_ENV",
    "Config",
    "CrmConfig",
    "FieldMapping",
    "KeyConfig",
    "LedgerConfig",
    "Secrets",
    "SourceConfig",
    "SqlSourceConfig",
    "StreamConfig",
    "load_config",
    "load_secrets",
]

# Data centre -> (API domain, accounts server), from zoho-api.md §5.4.
DATA_CENTRES: Final[Mapping[str, tuple[str, str]]] = {
    "us": ("https://www.zohoapis.com", "https://accounts.zoho.com"),
    "eu": ("https://www.zohoapis.eu", "https://accounts.zoho.eu"),
    "in": ("https://www.zohoapis.in", "https://accounts.zoho.in"),
    "au": ("https://www.zohoapis.com.au", "https://accounts.zoho.com.au"),
    "jp": ("https://www.zohoapis.jp", "https://accounts.zoho.jp"),
    "ca": ("https://www.zohoapis.ca", "https://accounts.zohocloud.ca"),
    "cn": ("https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn"),
    "sa": ("https://www.zohoapis.sa", "https://accounts.zoho.sa"),
}

FIELD_TYPES: Final = ("string", "integer", "float", "boolean", "date", "datetime", "json")

# Secret name -> the environment variable that supplies it (and wins over secrets_file).
SECRET_ENV: Final[Mapping[str, str]] = {
    "client_id": "ZOHO_CLIENT_ID",
    "client_secret": "ZOHO_CLIENT_SECRET",
    "refresh_token": "ZOHO_REFRESH_TOKEN",
    "access_token": "ZOHO_ACCESS_TOKEN",
}

_TRIGGERS: Final = ("approval", "workflow", "blueprint", "pathfinder", "orchestration")
_API_VERSIONS: Final = ("v7", "v8")
_SOURCE_KINDS: Final = ("csv", "jsonl", "sqlite", "postgres")
_SQL_KINDS: Final = ("sqlite", "postgres")
_EMPTY_MODES: Final = ("absent", "null")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Zoho API names (modules, related lists, fields) are letters, digits and underscores.
_API_NAME = re.compile(r"[A-Za-z0-9_]+")

_TOP_KEYS: Final = ("crm", "ledger", "streams")
_CRM_KEYS: Final = (
    "data_centre", "api_domain", "accounts_url", "api_version", "concurrency", "sub_concurrency",
    "requests_per_second", "credit_budget", "trigger", "timeout_seconds", "secrets_file",
    "allow_insecure_http", "ca_file",
)  # fmt: skip
_LEDGER_KEYS: Final = ("path",)
_STREAM_KEYS: Final = (
    "name", "operation", "module", "source", "match", "fields", "related_list", "related_module",
    "parent", "duplicate_check_fields", "linger_ms", "batch_size", "max_deletes", "delete_when",
)  # fmt: skip
_DELETE_WHEN_KEYS: Final = ("column", "values")
_CSV_KEYS: Final = ("kind", "path", "encoding", "delimiter", "quotechar", "empty")
_JSONL_KEYS: Final = ("kind", "path", "encoding")
_SQL_COMMON_KEYS: Final = ("table", "query", "key", "cursor", "lag_seconds", "page_size")
_SQL_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "sqlite": ("kind", "path", *_SQL_COMMON_KEYS),
    "postgres": ("kind", "dsn_env", *_SQL_COMMON_KEYS),
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_KEYS: Final = ("column", "field")
_FIELD_KEYS: Final = ("column", "value", "type", "required")


# --------------------------------------------------------------------------------------------------
# The objects


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


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> Config:
    """Read and validate one config file."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(file, "(file)", f"a readable TOML file: {exc.strerror or exc}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "(file)", f"UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+), column (\d+)", str(exc))
        where = f"line {found[1]}, column {found[2]}" if found else "(syntax)"
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(file, where, f"valid TOML syntax: {reason}") from exc

    _refuse_secrets(file, document, "")
    base = Path(path).resolve().parent
    top = _Table(file, "", document, _TOP_KEYS)
    crm = _crm(top.table("crm", _CRM_KEYS), base)
    ledger_path = top.table("ledger", _LEDGER_KEYS).path("path", base) if "ledger" in top else None
    ledger = LedgerConfig(path=ledger_path or base / "syncengine.db")
    streams = _streams(top, base)
    return Config(file=Path(path).resolve(), crm=crm, ledger=ledger, streams=streams)


def load_secrets(crm: CrmConfig, environ: Mapping[str, str]) -> Secrets:
    """Collect credentials: the environment wins over ``crm.secrets_file``, key by key.

    Needs a ready access token, or all of client id, client secret and refresh token. A named secrets
    file must be readable even when the environment has everything, so a wrong path never goes unseen.
    """
    looked = ["the environment (" + ", ".join(SECRET_ENV.values()) + ")"]
    from_file: dict[str, str] = {}
    if crm.secrets_file is not None:
        from_file = _read_secrets_file(crm.secrets_file)
        looked.append(f"secrets_file {crm.secrets_file}")
    found: dict[str, str | None] = {}
    for name, variable in SECRET_ENV.items():
        value = environ.get(variable, "").strip() or from_file.get(name, "").strip()
        found[name] = value or None
    secrets = Secrets(**found)
    if secrets.access_token or (secrets.client_id and secrets.client_secret and secrets.refresh_token):
        return secrets
    missing = [SECRET_ENV[n] for n in ("client_id", "client_secret", "refresh_token") if not found[n]]
    raise SecretsError(
        "no usable Zoho credentials: need ZOHO_ACCESS_TOKEN, or all of ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET"
        f" and ZOHO_REFRESH_TOKEN (missing: {', '.join(missing)}); looked in {' and '.join(looked)}"
    )


def _read_secrets_file(path: Path) -> dict[str, str]:
    """A TOML file, or an env-style file of ``KEY=value`` lines (``export`` and quotes allowed).

    Keys may be written ``client_secret`` or ``ZOHO_CLIENT_SECRET``; other keys are ignored, since an
    env file is often shared with other tools. No message ever quotes the file's content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretsError(f"secrets_file {path} cannot be read: {reason}") from None
    pairs: dict[str, object]
    try:
        pairs = dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        pairs = _parse_env_lines(path, text)
    by_alias = {alias.lower(): name for name, env in SECRET_ENV.items() for alias in (name, env)}
    result: dict[str, str] = {}
    for key, value in pairs.items():
        name = by_alias.get(key.lower())
        if name is None:
            continue
        if not isinstance(value, str):
            raise SecretsError(f"secrets_file {path}: {key} must be a string")
        result[name] = value
    return result


def _parse_env_lines(path: Path, text: str) -> dict[str, object]:
    pairs: dict[str, object] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise SecretsError(f"secrets_file {path}: line {number} is neither TOML nor KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs[key.strip()] = value
    return pairs


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _describe(value: object) -> str:
    kind = {
        str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)  # fmt: skip
    if isinstance(value, dict | list):
        return kind
    shown = repr(value)
    return f"{shown[:60]}... ({kind})" if len(shown) > 60 else f"{shown} ({kind})"


def _refuse_secrets(file: str, node: object, path: str) -> None:
    """Refuse credentials anywhere in the file, except under ``fields`` (CRM field names are free)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _refuse_secrets(file, item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            name = key.lower().removeprefix("zoho_")  # ZOHO_CLIENT_SECRET = ... is the same mistake
            if name in SECRET_ENV:
                raise ConfigError(
                    file,
                    where,
                    f"no secrets in the config file: {key} comes from the environment "
                    f"({SECRET_ENV[name]}) or from the file named by crm.secrets_file",
                )
            if key != "fields":
                _refuse_secrets(file, value, where)


class _Table:
    """A TOML table under validation: knows its key path, and refuses keys it was not told about."""

    __slots__ = ("data", "file", "where")

    def __init__(self, file: str, path: str, data: dict[str, object], allowed: Iterable[str]) -> None:
        self.file = file
        self.where = path  # this table's key path
        self.data = data
        known = tuple(allowed)
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(key, f"unknown key {key!r}{maybe}; expected one of: {', '.join(known)}")

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.file, self.key(key), expected)

    def wrong(self, key: str, expected: str) -> ConfigError:
        return self.error(key, f"{expected}, got {_describe(self.data[key])}")

    def missing(self, key: str, expected: str) -> ConfigError:
        return self.error(key, f"{expected} (missing)")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def string(
        self, key: str, expected: str, *, default: str | None = None, pattern: re.Pattern[str] | None = None
    ) -> str:
        if key not in self.data:
            if default is None:
                raise self.missing(key, expected)
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip() or (pattern and not pattern.fullmatch(value)):
            raise self.wrong(key, expected)
        return value

    def optional_string(self, key: str, expected: str, pattern: re.Pattern[str] | None = None) -> str | None:
        return self.string(key, expected, pattern=pattern) if key in self.data else None

    def choice(self, key: str, choices: Iterable[str], *, default: str | None = None) -> str:
        choices = tuple(choices)
        expected = "one of " + ", ".join(repr(c) for c in choices)
        value = self.string(key, expected, default=default)
        if value not in choices:
            raise self.wrong(key, expected)
        return value

    def integer(self, key: str, low: int, high: int | None, default: int | None) -> int:
        expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        if key not in self.data:
            if default is None:
                raise self.missing(key, expected)
            return default
        value = self.data[key]
        # bool is an int in Python; `true` is not a number in TOML.
        if type(value) is not int or value < low or (high is not None and value > high):
            raise self.wrong(key, expected)
        return value

    def number(self, key: str, expected: str, *, low: float, inclusive: bool) -> float | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if type(value) not in (int, float):
            raise self.wrong(key, expected)
        assert isinstance(value, int | float)
        if value != value or value == float("inf") or value < low or (value == low and not inclusive):
            raise self.wrong(key, expected)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.wrong(key, "true or false")
        return value

    def path(self, key: str, base: Path) -> Path | None:
        value = self.optional_string(key, "a non-empty string naming a file")
        if value is None:
            return None
        # An absolute path replaces base; normpath folds "../" without following symlinks.
        return Path(os.path.normpath(base / Path(value).expanduser()))

    def strings(self, key: str, expected: str, check: re.Pattern[str] | tuple[str, ...]) -> tuple[str, ...]:
        value = self.data[key]
        if not isinstance(value, list):
            raise self.wrong(key, expected)
        for i, item in enumerate(value):
            ok = isinstance(item, str) and (
                check.fullmatch(item) is not None if isinstance(check, re.Pattern) else item in check
            )
            if not ok:
                raise ConfigError(self.file, f"{self.key(key)}[{i}]", f"{expected}, got {_describe(item)}")
        if len(set(value)) != len(value):
            raise self.wrong(key, f"{expected}, without repeats")
        return tuple(value)

    def raw_table(self, key: str) -> dict[str, object]:
        if key not in self.data:
            raise self.missing(key, f"a {self.key(key)} table")
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.wrong(key, "a table")
        return value

    def table(self, key: str, allowed: Iterable[str]) -> _Table:
        return _Table(self.file, self.key(key), self.raw_table(key), allowed)


def _base_url(table: _Table, key: str, allow_insecure: bool) -> str:
    expected = "an http(s) URL with a host and no path, such as https://www.zohoapis.com"
    value = table.string(key, expected)
    try:
        parts = urlsplit(value.strip())
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise table.wrong(key, expected) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise table.wrong(key, expected)
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
        raise table.error(
            key,
            f"https:// for a host that is not loopback ({parts.hostname}): plain http would send tokens "
            "in the clear; set crm.allow_insecure_http = true if you really mean it",
        )
    return value.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _crm(table: _Table, base: Path) -> CrmConfig:
    insecure = table.boolean("allow_insecure_http", False)
    explicit = ("api_domain" in table, "accounts_url" in table)
    if any(explicit):
        if not all(explicit):
            gap = "accounts_url" if explicit[0] else "api_domain"
            raise table.missing(gap, "api_domain and accounts_url together (or data_centre alone)")
        if "data_centre" in table:
            table.choice("data_centre", DATA_CENTRES)  # still checked, though the explicit pair wins
        api_domain = _base_url(table, "api_domain", insecure)
        accounts_url = _base_url(table, "accounts_url", insecure)
    elif "data_centre" in table:
        api_domain, accounts_url = DATA_CENTRES[table.choice("data_centre", DATA_CENTRES)]
    else:
        raise table.missing("data_centre", "a data centre (" + ", ".join(DATA_CENTRES) + ") or both "
                            "api_domain and accounts_url")  # fmt: skip

    concurrency = table.integer("concurrency", 1, 25, 10)
    sub_concurrency = table.integer("sub_concurrency", 1, 10, min(10, concurrency))
    if sub_concurrency > concurrency:
        raise table.error("sub_concurrency", f"at most concurrency ({concurrency}), got {sub_concurrency}")
    credit_budget = table.integer("credit_budget", 1, None, None) if "credit_budget" in table else None
    trigger = None
    if "trigger" in table:
        trigger = table.strings("trigger", "an array of " + ", ".join(repr(t) for t in _TRIGGERS), _TRIGGERS)
    ca_file = table.path("ca_file", base)
    timeout = table.number("timeout_seconds", "a number of seconds > 0", low=0, inclusive=False)
    if ca_file is not None and not ca_file.is_file():
        raise table.error("ca_file", f"an existing CA certificate file, but {ca_file} is not a file")
    return CrmConfig(
        api_domain=api_domain,
        accounts_url=accounts_url,
        api_version=table.choice("api_version", _API_VERSIONS, default="v7"),
        concurrency=concurrency,
        sub_concurrency=sub_concurrency,
        requests_per_second=table.number("requests_per_second", "a number > 0", low=0, inclusive=False),
        credit_budget=credit_budget,
        trigger=trigger,
        timeout=timeout if timeout is not None else 60.0,
        secrets_file=table.path("secrets_file", base),
        allow_insecure_http=insecure,
        ca_file=ca_file,
    )


def _streams(top: _Table, base: Path) -> tuple[StreamConfig, ...]:
    expected = "one or more [[streams]] tables"
    if "streams" not in top:
        raise top.missing("streams", expected)
    items = top.data["streams"]
    if not isinstance(items, list) or not items:
        raise top.wrong("streams", expected)
    streams: list[StreamConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(top.file, f"streams[{i}]", f"a table, got {_describe(item)}")
        stream = _stream(top.file, i, item, base)
        if stream.name in seen:
            raise ConfigError(
                top.file,
                f"streams[{i}] ({stream.name}).name",
                f"a unique stream name, but streams[{seen[stream.name]}] is also named {stream.name!r}",
            )
        seen[stream.name] = i
        streams.append(stream)
    return tuple(streams)


def _stream(file: str, index: int, data: dict[str, object], base: Path) -> StreamConfig:
    # The name goes into every key path below it, once it is known to be a usable name.
    name = data.get("name")
    label = f"streams[{index}] ({name})" if isinstance(name, str) and _STREAM_NAME.fullmatch(name) else None
    table = _Table(file, label or f"streams[{index}]", data, _STREAM_KEYS)
    name = table.string("name", "a stream name of letters, digits, '_' and '-'", pattern=_STREAM_NAME)

    operation = Operation(table.choice("operation", [op.value for op in Operation]))
    related = operation in (Operation.UPDATE_RELATED, Operation.DELETE_RELATED)
    module = table.string("module", "a module API name such as 'Contacts'", pattern=_API_NAME)
    source = _source(table, base)
    match = _key(table, "match")

    parent: KeyConfig | None = None
    related_list = related_module = None
    if related:
        related_list = table.string(
            "related_list", f"a related list API name ({operation.value} needs one)", pattern=_API_NAME
        )
        related_module = table.optional_string("related_module", "a module API name", _API_NAME)
        related_module = related_module or related_list
        if "parent" not in table:
            raise table.missing("parent", f"a parent key table ({operation.value} needs one)")
        parent = _key(table, "parent")
    else:
        for key in ("parent", "related_list", "related_module"):
            if key in table:
                raise table.error(key, f"nothing: {key} is only for update_related and delete_related")

    duplicate_check: tuple[str, ...] = ()
    if "duplicate_check_fields" in table:
        if operation is not Operation.UPSERT:
            raise table.error("duplicate_check_fields", "nothing: duplicate_check_fields is only for upsert")
        duplicate_check = table.strings("duplicate_check_fields", "an array of field API names", _API_NAME)
    if operation is Operation.UPSERT and match.field is None:
        raise table.error("match.field", "a field to upsert on (upsert cannot match on a record id)")

    fields = _fields(table, operation, match)
    target = Target(
        operation=operation,
        module=module,
        match_field=match.field,
        related_list=related_list,
        related_module=related_module,
        parent_match_field=parent.field if parent else None,
        duplicate_check_fields=duplicate_check,
    )
    linger_ms = table.number("linger_ms", "a number of milliseconds >= 0", low=0, inclusive=True)
    delete_when = None
    if "delete_when" in table:
        if operation is not Operation.UPDATE_RELATED:
            raise table.error("delete_when", "nothing: delete_when is only for update_related streams")
        when = table.table("delete_when", _DELETE_WHEN_KEYS)
        values = when.strings(
            "values", 'an array of cell values that mean deleted, e.g. ["true", "1"]', re.compile(r".+")
        )
        delete_when = DeleteWhen(
            column=when.string("column", "the source column that marks a deleted relation"),
            values=frozenset(v.strip().lower() for v in values),
            target=replace(target, operation=Operation.DELETE_RELATED),
        )
    max_deletes = table.integer("max_deletes", 0, None, -1)
    return StreamConfig(
        name=name,
        source=source,
        target=target,
        match=match,
        parent=parent,
        fields=fields,
        batch_size=table.integer("batch_size", 1, 100, 100),
        linger=(200.0 if linger_ms is None else linger_ms) / 1000,
        max_deletes=None if max_deletes < 0 else max_deletes,
        delete_when=delete_when,
    )


def _source(stream: _Table, base: Path) -> SourceConfig | SqlSourceConfig:
    # The CSV options are typos in a JSONL source, so the allowed keys depend on the kind.
    raw_kind = stream.raw_table("source").get("kind")
    if isinstance(raw_kind, str) and raw_kind in _SQL_KINDS:
        return _sql_source(stream, base, raw_kind)
    is_jsonl = raw_kind == "jsonl"
    table = stream.table("source", _JSONL_KEYS if is_jsonl else _CSV_KEYS)
    kind = table.choice("kind", _SOURCE_KINDS)
    path = table.path("path", base)
    if path is None:
        raise table.missing("path", "a non-empty string naming the source file")
    encoding = table.string("encoding", "a text encoding", default="utf-8")
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise table.wrong("encoding", "a known text encoding such as 'utf-8' or 'cp1252'") from None
    # The readers split lines on the byte b"\n" and decode line by line, so that one bad byte spoils
    # one row only; that needs an encoding that writes ASCII as ASCII (not UTF-16/32).
    if "\n,;\t\"'{}".encode(codec.name, errors="replace") != b"\n,;\t\"'{}":
        raise table.wrong("encoding", "an ASCII-compatible encoding such as 'utf-8', 'cp1252' or 'latin-1'")
    one_char = "a single character"
    delimiter = table.string("delimiter", one_char, default=",")
    quotechar = table.string("quotechar", one_char, default='"') if "quotechar" in table else '"'
    for key, value in (("delimiter", delimiter), ("quotechar", quotechar)):
        if len(value) != 1 or value in "\r\n":
            raise table.wrong(key, one_char + " other than a line break")
    if delimiter == quotechar:
        raise table.error("quotechar", "a character different from the delimiter")
    return SourceConfig(
        kind=kind,
        path=path,
        encoding=codec.name if codec.name != "utf-8" else "utf-8",
        delimiter=delimiter,
        quotechar=quotechar,
        empty=table.choice("empty", _EMPTY_MODES, default="absent"),
    )


def _sql_source(stream: _Table, base: Path, kind: str) -> SqlSourceConfig:
    raw = stream.raw_table("source")
    for secret in ("dsn", "password"):
        if secret in raw:  # before the unknown-key check, which would only say "unknown key"
            raise stream.error(
                f"source.{secret}",
                "no connection secrets in the config file: put the DSN in an environment variable and name it "
                'with dsn_env (e.g. dsn_env = "ERP_DSN")',
            )
    table = stream.table("source", _SQL_KEYS[kind])
    path = dsn_env = None
    if kind == "sqlite":
        path = table.path("path", base)
        if path is None:
            raise table.missing("path", "a non-empty string naming the SQLite database file")
    else:
        dsn_env = table.string("dsn_env", "the name of an environment variable holding the DSN", pattern=_ENV_NAME)
    if ("table" in table) == ("query" in table):
        raise table.error("table", "exactly one of table (a table or view name) or query (a SELECT)")
    name = table.optional_string("table", "a table or view name, optionally schema-qualified (sales.contacts)")
    query = table.optional_string("query", "a SELECT statement")
    key = table.string("key", "the name of a unique column (the primary key), the tie-breaker for paging")
    cursor = table.optional_string("cursor", "the name of the incremental column, such as updated_at")
    if cursor is not None and cursor == key:
        raise table.error("cursor", f"a column other than the key ({key!r})")
    lag = table.number("lag_seconds", "a number of seconds >= 0", low=0, inclusive=True)
    if lag and cursor is None:
        raise table.error("lag_seconds", "nothing without a cursor: lag re-reads recent cursor values")
    return SqlSourceConfig(
        kind=kind,
        key=key,
        path=path,
        dsn_env=dsn_env,
        table=name,
        query=query,
        cursor=cursor,
        lag_seconds=lag or 0.0,
        page_size=table.integer("page_size", 1, 100_000, 1000),
    )


def _key(table: _Table, key: str) -> KeyConfig:
    sub = table.table(key, _KEY_KEYS)
    column = sub.string("column", "a non-empty string naming a source column")
    field = sub.optional_string("field", "an external field API name (leave out to match on the record id)",
                                _API_NAME)  # fmt: skip
    return KeyConfig(column=column, field=field)


def _fields(table: _Table, operation: Operation, match: KeyConfig) -> tuple[FieldMapping, ...]:
    if operation is Operation.DELETE_RELATED:
        if "fields" in table:
            raise table.error("fields", "no fields: delete_related only removes the relation")
        return ()
    if "fields" not in table:
        if operation is Operation.UPDATE_RELATED:
            return ()  # linking without relation fields is a plain link
        raise table.missing("fields", f"a fields table ({operation.value} must send something)")
    value = table.data["fields"]
    if not isinstance(value, dict) or (not value and operation is not Operation.UPDATE_RELATED):
        raise table.wrong("fields", "a table of CRM field API name = column or { column/value, type }")
    fields = _Table(table.file, table.key("fields"), value, value.keys())
    mappings: list[FieldMapping] = []
    for field_name, spec in value.items():
        if not _API_NAME.fullmatch(field_name):
            raise fields.error(field_name, "a field API name of letters, digits and underscores")
        own_field = operation in (Operation.UPDATE, Operation.UPSERT) and field_name == match.field
        if field_name == "id" or own_field:
            raise fields.error(field_name, f"no mapping: {field_name!r} is set from match.column")
        mappings.append(_field(fields, field_name, spec))
    return tuple(mappings)


def _field(fields: _Table, name: str, spec: object) -> FieldMapping:
    if isinstance(spec, str):
        if not spec.strip():
            raise fields.wrong(name, "a non-empty string naming a source column")
        return FieldMapping(field=name, column=spec)
    if not isinstance(spec, dict):
        raise fields.wrong(name, "a column name, or a table with column or value")
    sub = _Table(fields.file, fields.key(name), spec, _FIELD_KEYS)
    if ("column" in sub) == ("value" in sub):
        raise sub.error("column", "exactly one of column (a source column) or value (a constant)")
    if "value" in sub:
        for key in ("type", "required"):
            if key in sub:
                raise sub.error(key, f"nothing: {key} is for column mappings; a constant is sent as written")
        constant = _constant(sub, "value", spec["value"])
        return FieldMapping(field=name, column=None, value=constant, type="json")
    return FieldMapping(
        field=name,
        column=sub.string("column", "a non-empty string naming a source column"),
        type=sub.choice("type", FIELD_TYPES, default="string"),
        required=sub.boolean("required", False),
    )


def _constant(table: _Table, key: str, value: object) -> JSON:
    """TOML values -> JSON values; TOML dates become the ISO strings Zoho expects."""
    if isinstance(value, str | bool | int | float):
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            raise table.error(key, "a finite number (JSON has no nan or inf)")
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise table.error(key, f"a datetime with an offset such as {value.isoformat()}+00:00")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        raise table.error(key, "a date, a datetime with an offset, or a non-time value")
    if isinstance(value, list):
        return [_constant(table, f"{key}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _constant(table, f"{key}.{k}", v) for k, v in value.items()}
    raise table.error(key, f"a JSON-like value, got {_describe(value)}")
