"""One TOML file -> the frozen config objects of ``config.values``: every key checked, every mistake named."""

from __future__ import annotations

import codecs
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from syncengine.config.table import Table, describe
from syncengine.config.values import (
    DATA_CENTRES,
    FIELD_TYPES,
    SECRET_ENV,
    TOKEN_CACHE_NAME,
    Config,
    CrmConfig,
    DeleteWhen,
    FieldMapping,
    KeyConfig,
    LedgerConfig,
    SourceConfig,
    SqlSourceConfig,
    StreamConfig,
)
from syncengine.errors import ConfigError
from syncengine.model import JSON, Operation, Target

__all__ = ["load_config"]

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
    "allow_insecure_http", "ca_file", "token_cache",
)  # fmt: skip
_LEDGER_KEYS: Final = ("path",)
_STREAM_KEYS: Final = (
    "name", "operation", "module", "source", "match", "fields", "related_list", "related_module",
    "parent", "duplicate_check_fields", "linger_ms", "batch_size", "max_deletes", "delete_when",
    "external_update",
)  # fmt: skip
_EXTERNAL_UPDATES: Final = ("auto", "bulk", "resolve", "single")
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
    top = Table(file, "", document, _TOP_KEYS)
    crm_table = top.table("crm", _CRM_KEYS)
    crm = _crm(crm_table, base)
    ledger_path = top.table("ledger", _LEDGER_KEYS).path("path", base) if "ledger" in top else None
    ledger = LedgerConfig(path=ledger_path or base / "syncengine.db")
    crm = replace(crm, token_cache=_token_cache(crm_table, base, ledger.path))
    streams = _streams(top, base)
    return Config(file=Path(path).resolve(), crm=crm, ledger=ledger, streams=streams)


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


def _base_url(table: Table, key: str, allow_insecure: bool) -> str:
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


def _crm(table: Table, base: Path) -> CrmConfig:
    insecure = table.boolean("allow_insecure_http", False)
    explicit = ("api_domain" in table, "accounts_url" in table)
    data_centre = None  # set only when it chooses the hosts: then the token's api_domain may move the calls
    if any(explicit):
        if not all(explicit):
            gap = "accounts_url" if explicit[0] else "api_domain"
            raise table.missing(gap, "api_domain and accounts_url together (or data_centre alone)")
        if "data_centre" in table:
            table.choice("data_centre", DATA_CENTRES)  # still checked, though the explicit pair wins
        api_domain = _base_url(table, "api_domain", insecure)
        accounts_url = _base_url(table, "accounts_url", insecure)
    elif "data_centre" in table:
        data_centre = table.choice("data_centre", DATA_CENTRES)
        api_domain, accounts_url = DATA_CENTRES[data_centre]
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
        data_centre=data_centre,
    )


def _token_cache(table: Table, base: Path, ledger: Path) -> Path | None:
    """Where this host's processes share tokens: ``token_cache`` (a file, or false: none), else beside the ledger."""
    if "token_cache" not in table:
        return ledger.parent / TOKEN_CACHE_NAME
    if table.data["token_cache"] is False:
        return None
    if not isinstance(table.data["token_cache"], str):
        raise table.wrong("token_cache", "a file path, or false for no token cache")
    path = table.path("token_cache", base)
    if path is not None and path.resolve() == ledger.resolve():
        raise table.error("token_cache", "a file of its own, not the ledger")
    return path


def _streams(top: Table, base: Path) -> tuple[StreamConfig, ...]:
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
            raise ConfigError(top.file, f"streams[{i}]", f"a table, got {describe(item)}")
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
    table = Table(file, label or f"streams[{index}]", data, _STREAM_KEYS)
    name = table.string("name", "a stream name of letters, digits, '_' and '-'", pattern=_STREAM_NAME)

    operation = Operation(table.choice("operation", [op.value for op in Operation]))
    related = operation in (Operation.UPDATE_RELATED, Operation.DELETE_RELATED)
    module = table.string("module", "a module API name such as 'Contacts'", pattern=_API_NAME)
    source = _source(table, base)
    match = _key(table, "match")

    related_list, related_module, parent = _related(table, operation) if related else (None, None, None)
    if not related:
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
        fields=tuple(f.field for f in fields),
    )
    linger_ms = table.number("linger_ms", "a number of milliseconds >= 0", low=0, inclusive=True)
    delete_when = _delete_when(table, target)
    max_deletes = table.integer("max_deletes", 0, None, -1)
    external_update = _external_update(table, operation, match)
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
        external_update=external_update,
    )


def _external_update(table: Table, operation: Operation, match: KeyConfig) -> str:
    """How updates by external value go out (``external.py``): only for update streams matched on a field."""
    if "external_update" in table and (operation is not Operation.UPDATE or match.field is None):
        raise table.error(
            "external_update", "nothing: external_update is only for operation 'update' with a match.field"
        )
    return table.choice("external_update", _EXTERNAL_UPDATES, default="auto")


def _related(table: Table, operation: Operation) -> tuple[str, str, KeyConfig]:
    """A related operation's related list, related module and parent key."""
    related_list = table.string(
        "related_list", f"a related list API name ({operation.value} needs one)", pattern=_API_NAME
    )
    related_module = table.optional_string("related_module", "a module API name", _API_NAME) or related_list
    if "parent" not in table:
        raise table.missing("parent", f"a parent key table ({operation.value} needs one)")
    return related_list, related_module, _key(table, "parent")


def _delete_when(table: Table, target: Target) -> DeleteWhen | None:
    """update_related only: rows whose column says so become delinks of the same relation."""
    if "delete_when" not in table:
        return None
    if target.operation is not Operation.UPDATE_RELATED:
        raise table.error("delete_when", "nothing: delete_when is only for update_related streams")
    when = table.table("delete_when", _DELETE_WHEN_KEYS)
    values = when.strings("values", 'an array of cell values that mean deleted, e.g. ["true", "1"]', re.compile(r".+"))
    return DeleteWhen(
        column=when.string("column", "the source column that marks a deleted relation"),
        values=frozenset(v.strip().lower() for v in values),
        target=replace(target, operation=Operation.DELETE_RELATED),
    )


def _source(stream: Table, base: Path) -> SourceConfig | SqlSourceConfig:
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


def _sql_source(stream: Table, base: Path, kind: str) -> SqlSourceConfig:
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


def _key(table: Table, key: str) -> KeyConfig:
    sub = table.table(key, _KEY_KEYS)
    column = sub.string("column", "a non-empty string naming a source column")
    field = sub.optional_string("field", "an external field API name (leave out to match on the record id)",
                                _API_NAME)  # fmt: skip
    return KeyConfig(column=column, field=field)


def _fields(table: Table, operation: Operation, match: KeyConfig) -> tuple[FieldMapping, ...]:
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
    fields = Table(table.file, table.key("fields"), value, value.keys())
    mappings: list[FieldMapping] = []
    for field_name, spec in value.items():
        if not _API_NAME.fullmatch(field_name):
            raise fields.error(field_name, "a field API name of letters, digits and underscores")
        own_field = operation in (Operation.UPDATE, Operation.UPSERT) and field_name == match.field
        if field_name == "id" or own_field:
            raise fields.error(field_name, f"no mapping: {field_name!r} is set from match.column")
        mappings.append(_field(fields, field_name, spec))
    return tuple(mappings)


def _field(fields: Table, name: str, spec: object) -> FieldMapping:
    if isinstance(spec, str):
        if not spec.strip():
            raise fields.wrong(name, "a non-empty string naming a source column")
        return FieldMapping(field=name, column=spec)
    if not isinstance(spec, dict):
        raise fields.wrong(name, "a column name, or a table with column or value")
    sub = Table(fields.file, fields.key(name), spec, _FIELD_KEYS)
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


def _constant(table: Table, key: str, value: object) -> JSON:
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
    raise table.error(key, f"a JSON-like value, got {describe(value)}")
