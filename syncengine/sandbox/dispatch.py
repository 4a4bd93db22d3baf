"""One routed CRM call, from its request to its answer: parse, check, dispatch, shape.

``prepare`` reads what the call carries (the ``data`` of a write, the ``ids`` of a delink, the
query of a COQL call) into a ``Call``; ``refuse`` answers the request-level checks that come
before the limits (scope, permission, AUTHORIZATION_FAILED); ``dispatch`` runs the call on the state
and ``shape`` applies the profile to the answer (shuffled related entries, 200 for mixed results).
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from syncengine.sandbox import coql, metadata, records, related
from syncengine.sandbox.auth import Grant, scope_allows
from syncengine.sandbox.bodies import data_of, ids_of, parse_body
from syncengine.sandbox.envelopes import Reply, request_error
from syncengine.sandbox.options import SandboxOptions
from syncengine.sandbox.routing import WRITE_KINDS, Route, query_int
from syncengine.sandbox.schema import ModuleSpec
from syncengine.sandbox.state import SandboxState, now_iso
from syncengine.sandbox.stats import SandboxStats

__all__ = ["COMPLEX", "Call", "Context", "dispatch", "locker", "prepare", "refuse", "shape"]

COMPLEX = 10  # a write carrying more records than this is a "complex" call (sub-concurrency)
_SCOPE_OPS = {
    "update": ("UPDATE",),
    "update_one": ("UPDATE",),
    "upsert": ("CREATE", "UPDATE"),
    "insert": ("CREATE",),
    "update_related": ("UPDATE",),
    "update_related_one": ("UPDATE",),
    "delete_related": ("DELETE",),
    "delete_related_one": ("DELETE",),
}
_RELATED_KINDS = frozenset({"update_related", "update_related_one", "delete_related", "delete_related_one"})
_SHUFFLED = frozenset({"update_related", "delete_related"})  # the bulk forms: more than one entry
_PRIVILEGE = {
    "records": "User does not have sufficient privilege to update records",
    "related": "User does not have sufficient privilege to update related records data",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """A routed call with what it carries."""

    route: Route
    body: Any = None
    data: list[Any] = dataclasses.field(default_factory=list)
    ids: list[str] = dataclasses.field(default_factory=list)
    query: coql.Query | None = None

    @property
    def n_records(self) -> int:
        """Records of a write, ids of a delink, 0 otherwise."""
        return len(self.data) if self.route.kind in WRITE_KINDS else len(self.ids)

    @property
    def is_complex(self) -> bool:
        """A write of more than 10 records: it counts for the sub-concurrency."""
        return self.route.kind in WRITE_KINDS and self.n_records > COMPLEX

    @property
    def credits(self) -> int:
        """Writes: 1 per 10 records; COQL: by its LIMIT; any other call: 1."""
        if self.query is not None:
            return coql.credits(self.query)
        return max(1, math.ceil(self.n_records / 10)) if self.route.kind in WRITE_KINDS else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What ``dispatch`` works on."""

    state: SandboxState
    options: SandboxOptions
    stats: SandboxStats
    rng: random.Random  # the CRM fault stream (transient locks draw from it)
    shuffle_rng: random.Random  # a stream of its own, so shuffling never shifts the faults


def prepare(opts: SandboxOptions, r: Route, raw: bytes | None, query: Mapping[str, str]) -> Call | Reply:
    """Parse what the call carries; a request-level error (free) when it is malformed."""
    if r.kind in WRITE_KINDS or r.kind == "coql":
        body, error = parse_body(raw or b"")
        if error is not None:
            return error
        if r.kind == "coql":
            parsed = coql.parse(opts.schema, body)
            if isinstance(parsed, Reply):
                return parsed
            return Call(route=dataclasses.replace(r, module=parsed.module), body=body, query=parsed)
        data, error = data_of(body, r.kind, wrap_limit=bool(opts.limit_exceeded_in_data))
        return error if error is not None else Call(route=r, body=body, data=data)
    if r.kind == "delete_related":
        ids, error = ids_of(query)
        return error if error is not None else Call(route=r, ids=ids)
    return Call(route=r)


def refuse(opts: SandboxOptions, call: Call, grant: Grant) -> Reply | None:
    """Scope (401), permission (403) and AUTHORIZATION_FAILED (400): checked before the limits."""
    r = call.route
    module = r.module.api_name if r.module is not None else None
    if not scope_allows(
        grant.scopes, module=module, ops=_SCOPE_OPS.get(r.kind, ("READ",)), settings=r.settings, coql=r.kind == "coql"
    ):
        return request_error(
            401,
            "OAUTH_SCOPE_MISMATCH",
            "The access token you have used to make this API call does not have the required scope.",
        )
    if r.module is not None and (r.module.no_permission or r.module.api_name in opts.no_permission_modules):
        return request_error(403, "NO_PERMISSION", "permission denied", {"permissions": [f"Crm_Implied_Edit_{module}"]})
    if module in opts.authorization_failed_modules and r.kind in _SCOPE_OPS:
        # A request-level 400 that no record caused: the user's profile may not write here (audit row 15).
        message = _PRIVILEGE["related" if r.kind in _RELATED_KINDS else "records"]
        return request_error(400, "AUTHORIZATION_FAILED", message)
    return None


def _persistent(seed: int, module: str, rid: str) -> float:
    """A fixed draw in [0, 1) per record: the same record is always locked, or never."""
    return zlib.crc32(f"{seed}/{module}/{rid}".encode()) / 2**32


def locker(ctx: Context) -> records.Locker:
    """Who is locked: ``locked_records`` and ``persistent_lock_rate`` for good, ``lock_rate`` at random."""
    opts, stats, rng = ctx.options, ctx.stats, ctx.rng
    ids = frozenset(opts.locked_records)
    p_rate, rate = opts.persistent_lock_rate, opts.lock_rate

    def locked(module: str, rid: str) -> str | None:
        if rid in ids or (p_rate > 0 and _persistent(opts.seed, module, rid) < p_rate):
            stats.locks_persistent += 1
            return records.PERSISTENT
        if rate > 0 and rng.random() < rate:
            stats.locks_injected += 1
            return records.TRANSIENT
        return None

    return locked


def dispatch(ctx: Context, call: Call, query: Mapping[str, str]) -> Reply:
    """Run an admitted call on the state."""
    r, state, opts = call.route, ctx.state, ctx.options
    kind = r.kind
    if kind == "metadata":
        return _metadata(opts, r, query)
    if kind == "coql":
        assert call.query is not None
        return coql.run(state, call.query)
    spec = r.module
    assert spec is not None  # every kind but metadata names a module
    rules = records.Rules(locked=locker(ctx), now=now_iso(), reject_unknown=bool(opts.reject_unknown_fields))
    if kind == "update":
        ext = None if opts.refuse_bulk_external else r.ext_field
        return records.update_records(state, spec, call.data, ext, rules)
    if kind == "update_one":
        assert r.key is not None
        return records.update_one(state, spec, r.key, r.ext_field, call.data, rules)
    if kind == "upsert":
        dup = call.body.get("duplicate_check_fields")
        if dup is not None and not isinstance(dup, list):
            return request_error(
                400,
                "INVALID_DATA",
                "invalid data",
                {"api_name": "duplicate_check_fields", "expected_data_type": "jsonarray"},
            )
        return records.upsert_records(state, spec, call.data, dup, r.ext_field, rules)
    if kind == "insert":
        return records.insert_records(state, spec, call.data, rules)
    if kind == "get_record":
        assert r.key is not None
        return records.get_record(state, spec, r.key, r.ext_field)
    if kind == "list_records":
        page = query_int(query, "page", 1, 10**6)
        per_page = query_int(query, "per_page", 200, 200)
        return records.list_records(state, spec, page, per_page)
    return _related(ctx, call, spec)


def _related(ctx: Context, call: Call, spec: ModuleSpec) -> Reply:
    r, state = call.route, ctx.state
    assert r.key is not None and r.related_list is not None
    parent = related.resolve_parent(state, spec, r.key, r.ext_field)
    if isinstance(parent, Reply):
        return parent
    rel = related.Related(spec=spec, parent_id=parent, rl=r.related_list, related_field=r.related_field)
    kind = r.kind
    if kind == "update_related":
        return related.update_related(state, rel, call.data, None)
    if kind == "update_related_one":
        return related.update_related(state, rel, call.data, r.related_key)
    if kind == "delete_related":
        return related.delink(state, rel, call.ids, missing_404=bool(ctx.options.delink_missing_404))
    if kind == "delete_related_one":
        assert r.related_key is not None
        return related.delink(state, rel, [r.related_key])
    return related.get_related(state, rel)


def shape(ctx: Context, call: Call, reply: Reply) -> Reply:
    """The profile's touches on an answer: shuffled related entries, 200 for mixed results."""
    opts = ctx.options
    body = reply.body
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(data, list):
        return reply
    status = reply.status
    if opts.shuffle_related and call.route.kind in _SHUFFLED:
        entries = list(data)
        ctx.shuffle_rng.shuffle(entries)
        body = {**body, "data": entries}
    if opts.mixed_status_200 and status == 207:
        status = 200
    return Reply(status=status, body=body) if body is not reply.body or status != reply.status else reply


def _metadata(opts: SandboxOptions, r: Route, query: Mapping[str, str]) -> Reply:
    schema = opts.schema
    if r.settings == "modules":
        return Reply(status=200, body=metadata.modules_json(schema))
    name = query.get("module")
    if not name:
        return request_error(
            400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param_name": "module"}
        )
    spec = schema.module(name)
    if spec is None:
        return request_error(
            400, "INVALID_MODULE", "the module name given seems to be invalid", {"param_name": "module"}
        )
    if r.settings == "fields":
        return Reply(status=200, body=metadata.fields_json(schema, spec))
    return Reply(status=200, body=metadata.related_lists_json(schema, spec))
