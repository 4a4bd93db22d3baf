r"""Turn a CRM request into a ``Route`` (what to do) or a request-level error (``Reply``).

Only the path, the method, the X-EXTERNAL header and the query are looked at here; the body is
parsed by the server, because it is needed before the limits (sub-concurrency counts records).

Path keys. By default the path is split after aiohttp decoded it, so ``/Contacts/a%2Fb/Deals``
routes as ``/Contacts/a/b/Deals`` (what the sandbox always did). Given ``raw_tail`` (the path as
sent, ``raw_path_routing``) it is split first and each segment decoded after, so ``a%2Fb`` is the
one key ``a/b``. With ``reject_encoded`` (``reject_encoded_keys``) a record key carrying an encoded
``/``, ``?``, ``#``, ``%`` or ``\`` answers 404 INVALID_URL_PATTERN, as a Java front end that refuses
encoded slashes would (audit row 33: what Zoho does is not documented).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from syncengine.sandbox.envelopes import Reply, request_error
from syncengine.sandbox.schema import ModuleSpec, RelatedList, Schema

__all__ = ["KINDS", "WRITE_KINDS", "Route", "parse_external", "query_int", "route"]

# Endpoint kinds, the keys of ``stats.calls``.
KINDS = (
    "update",  # PUT /{Module}
    "update_one",  # PUT /{Module}/{id|ext}
    "upsert",  # POST /{Module}/upsert
    "insert",  # POST /{Module}
    "get_record",  # GET /{Module}/{id|ext}
    "list_records",  # GET /{Module}
    "update_related",  # PUT /{Module}/{parent}/{RelatedList}
    "update_related_one",  # PUT /{Module}/{parent}/{RelatedList}/{related}
    "delete_related",  # DELETE /{Module}/{parent}/{RelatedList}?ids=
    "delete_related_one",  # DELETE /{Module}/{parent}/{RelatedList}/{related}
    "get_related",  # GET /{Module}/{parent}/{RelatedList}
    "metadata",  # GET /settings/fields|related_lists|modules
    "coql",  # POST /coql
    "invalid",  # a request-level error before any work: bad URL, module, method or header
)
# Kinds whose body is {"data": [...]} and whose records count for credits and sub-concurrency.
WRITE_KINDS = frozenset({"update", "update_one", "upsert", "insert", "update_related", "update_related_one"})

_VERSION = re.compile(r"^v[0-9]+(\.[0-9]+)?$")
_METHODS = {
    1: {"PUT": "update", "POST": "insert", "GET": "list_records"},
    2: {"PUT": "update_one", "GET": "get_record"},
    3: {"PUT": "update_related", "DELETE": "delete_related", "GET": "get_related"},
    4: {"PUT": "update_related_one", "DELETE": "delete_related_one"},
}
_SETTINGS = {"fields": "fields", "related_lists": "related_lists", "modules": "modules"}
_ENCODED = re.compile(r"%(2F|3F|23|25|5C)", re.IGNORECASE)  # encoded / ? # % and backslash


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A routed CRM call."""

    kind: str
    module: ModuleSpec | None = None  # None for settings/modules
    key: str | None = None  # the record id or external value after the module
    related_list: RelatedList | None = None
    related_key: str | None = None  # the related record in the single related forms
    ext_field: str | None = None  # X-EXTERNAL field of ``module``
    related_field: str | None = None  # X-EXTERNAL field of the related module
    settings: str | None = None  # for metadata: fields, related_lists or modules


def _invalid_url() -> Reply:
    return request_error(404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one")


def _invalid_method() -> Reply:
    return request_error(400, "INVALID_REQUEST_METHOD", "The http request method type is not a valid one", {})


def parse_external(schema: Schema, header: str | None) -> dict[str, str] | Reply:
    """``X-EXTERNAL: Module.Field[,Module.Field]`` as module -> external field, or a 400 error."""
    if not header:
        return {}
    out: dict[str, str] = {}
    for part in header.split(","):
        module, _, field = part.strip().partition(".")
        spec = schema.module(module)
        if spec is None or field not in spec.external_fields:
            return request_error(
                400,
                "INVALID_DATA",
                "the external field given in X-EXTERNAL seems to be invalid",
                {"header_name": "X-EXTERNAL", "value": part.strip()},
            )
        out[spec.api_name] = field
    return out


def _segments(tail: str, raw_tail: str | None, reject_encoded: bool) -> list[str] | Reply:
    if raw_tail is None:
        segs = tail.split("/")
    else:
        raw = raw_tail.split("/")
        # Keys sit after the module (index 2) and after the related list (index 4).
        if reject_encoded and any(_ENCODED.search(seg) for n, seg in enumerate(raw) if n in (2, 4)):
            return _invalid_url()
        segs = [urllib.parse.unquote(seg) for seg in raw]
    if segs and segs[-1] == "":
        segs.pop()  # a trailing slash
    return segs


def _unscoped(rest: list[str], method: str) -> Route | Reply:
    """The calls that name no module in the path: ``POST /coql`` and ``GET /settings/...``."""
    if rest == ["coql"]:
        return Route(kind="coql") if method == "POST" else _invalid_method()
    if len(rest) != 2 or rest[1] not in _SETTINGS:
        return _invalid_url()
    if method != "GET":
        return _invalid_method()
    return Route(kind="metadata", settings=_SETTINGS[rest[1]])


def route(
    schema: Schema,
    method: str,
    tail: str,
    external: str | None,
    *,
    raw_tail: str | None = None,
    reject_encoded: bool = False,
) -> Route | Reply:
    """Route ``{method} /crm/{tail}``; ``external`` is the X-EXTERNAL header.

    ``raw_tail`` is the tail as sent (percent-encoded): split before decoding (see the module docstring).
    """
    segs = _segments(tail, raw_tail, reject_encoded)
    if isinstance(segs, Reply):
        return segs
    if len(segs) < 2 or not _VERSION.match(segs[0]) or "" in segs:
        return _invalid_url()
    rest = segs[1:]
    if rest == ["coql"] or rest[0] == "settings":
        return _unscoped(rest, method)
    return _scoped(schema, rest, method, external)


def _scoped(schema: Schema, rest: list[str], method: str, external: str | None) -> Route | Reply:
    """The calls on a module: ``/{Module}[/{key}[/{RelatedList}[/{related}]]]`` and ``/{Module}/upsert``.

    Checked in a fixed order, so a path with two faults always meets the same error: the module, the
    path's length, the method, X-EXTERNAL, the related list, then the modules X-EXTERNAL names.
    """
    spec = schema.module(rest[0])
    if spec is None:
        return request_error(
            400, "INVALID_MODULE", "the module name given seems to be invalid", {"resource_path_index": 0}
        )
    n = len(rest)
    if n > 4:
        return _invalid_url()
    kind = _kind(rest, method)
    if isinstance(kind, Reply):
        return kind
    ext = parse_external(schema, external)
    if isinstance(ext, Reply):
        return ext
    rl = schema.related_list(spec.api_name, rest[2]) if n >= 3 else None
    if n >= 3 and rl is None:
        return request_error(
            400, "INVALID_DATA", "The relation name given seems to be invalid", {"resource_path_index": 2}
        )
    # X-EXTERNAL may name only the modules the path addresses.
    addressed = {spec.api_name} if rl is None else {spec.api_name, rl.related_module}
    if set(ext) - addressed:
        return request_error(
            400,
            "INVALID_DATA",
            "the external field given in X-EXTERNAL seems to be invalid",
            {"header_name": "X-EXTERNAL", "value": external or ""},
        )
    return Route(
        kind=kind,
        module=spec,
        key=rest[1] if n >= 2 and kind != "upsert" else None,
        related_list=rl,
        related_key=rest[3] if n == 4 else None,
        ext_field=ext.get(spec.api_name),
        related_field=ext.get(rl.related_module) if rl is not None else None,
    )


def _kind(rest: list[str], method: str) -> str | Reply:
    """The endpoint kind of a module path of 1 to 4 segments, or 400 INVALID_REQUEST_METHOD."""
    if len(rest) == 2 and rest[1] == "upsert":
        return "upsert" if method == "POST" else _invalid_method()
    found = _METHODS[len(rest)].get(method)
    return found if found is not None else _invalid_method()


def query_int(query: Mapping[str, str], name: str, default: int, high: int) -> int:
    """A positive integer query parameter, clamped to ``high``."""
    try:
        value = int(query.get(name, default))
    except ValueError:
        return default
    return max(1, min(value, high))
