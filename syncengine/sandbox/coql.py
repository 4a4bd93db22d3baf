"""``POST /crm/v7/coql``: the Query API, enough of it to look record ids up by external value.

``{"select_query": "select id, External_Contact_ID from Contacts where External_Contact_ID in
('a','b') limit 200"}`` answers ``{"data": [{"id": ..., "External_Contact_ID": ...}], "info":
{"count": n, "more_records": bool}}``, or 204 with no body when nothing matches. Served in every
profile: it is an endpoint, not a reading.

Supported: ``select f1, f2 from Module [where F = v | where F in (v1, ...) | where F is not null]
[order by F [asc|desc]] [limit N | limit OFFSET, N] [offset N]``; keywords in any case; string values
in single quotes (``''`` escapes a quote), numbers bare. Rows in ascending record id order unless
ordered otherwise, as Zoho sorts.

Zoho's documented limits (Query API overview and limitations, v7): ``in`` takes up to 50 values;
LIMIT defaults to 200 and is at most 2000 rows per call; the credits depend on LIMIT: 1-200 cost 1,
201-1000 cost 2, 1001-2000 cost 3 (``credits``). The call needs the ``ZohoCRM.coql.READ`` scope and
the module's READ. Errors are the OAS's (``v8.0/coql.json``): SYNTAX_ERROR "invalid query formed"
with ``near``/``clause``, INVALID_QUERY "column given seems to be invalid" with ``column_name``,
LIMIT_EXCEEDED. Their exact details for a given mistake are not documented: these are guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from syncengine.model import JSON
from syncengine.sandbox.envelopes import Reply, request_error
from syncengine.sandbox.schema import ModuleSpec, Schema
from syncengine.sandbox.state import SandboxState

__all__ = ["DEFAULT_LIMIT", "IN_LIMIT", "ROW_LIMIT", "Query", "credits", "parse", "run"]

IN_LIMIT = 50  # values in one ``in (...)``
ROW_LIMIT = 2000  # rows per call (LIMIT's maximum)
DEFAULT_LIMIT = 200
_SYSTEM = frozenset({"id", "Created_Time", "Modified_Time", "Created_By", "Modified_By"})
_QUERY = re.compile(
    r"^\s*select\s+(?P<fields>.+?)\s+from\s+(?P<module>\w+)"
    r"(?:\s+where\s+(?P<where>.+?))?"
    r"(?:\s+order\s+by\s+(?P<order>\w+)(?:\s+(?P<dir>asc|desc))?)?"
    r"(?:\s+limit\s+(?P<limit>\d+)(?:\s*,\s*(?P<limit2>\d+))?)?"
    r"(?:\s+offset\s+(?P<offset>\d+))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_WHERE = re.compile(
    r"^\(?\s*(?P<field>\w+)\s+(?:(?P<in>in)\s*\((?P<values>.*?)\)|(?P<eq>=)\s*(?P<value>.+?)|"
    r"(?P<notnull>is\s+not\s+null))\s*\)?$",
    re.IGNORECASE | re.DOTALL,
)
_VALUE = re.compile(r"\s*(?:'((?:[^']|'')*)'|(-?\d+(?:\.\d+)?))\s*(?:,|$)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """A parsed select."""

    module: ModuleSpec
    fields: tuple[str, ...]
    where_field: str | None = None
    values: tuple[str, ...] | None = None  # None: ``is not null``, or no where clause
    order: str = "id"
    descending: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIMIT


def credits(query: Query) -> int:
    """What the call costs: by its LIMIT, as Zoho documents."""
    return 1 if query.limit <= 200 else 2 if query.limit <= 1000 else 3


def _syntax(near: str, clause: str) -> Reply:
    return request_error(400, "SYNTAX_ERROR", "invalid query formed", {"near": near, "clause": clause})


def _bad_column(name: str, clause: str) -> Reply:
    return request_error(
        400, "INVALID_QUERY", "column given seems to be invalid", {"column_name": name, "clause": clause}
    )


def _values(text: str) -> list[str] | None:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _VALUE.match(text, pos)
        if m is None or m.end() == pos:
            return None
        out.append(m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2))
        pos = m.end()
    return out


def _known(spec: ModuleSpec, name: str) -> bool:
    return name in _SYSTEM or name in spec.by_name


def parse(schema: Schema, body: Any) -> Query | Reply:
    """The query of a COQL body, or the request-level error."""
    text = body.get("select_query") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return request_error(400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": "select_query"})
    m = _QUERY.match(text)
    if m is None:
        return _syntax(text.strip().split(" ", 1)[0], "select")
    spec = schema.module(m["module"])
    if spec is None:
        return request_error(400, "INVALID_QUERY", "invalid query formed", {"module": m["module"], "clause": "from"})
    fields = tuple(f.strip() for f in m["fields"].split(","))
    for name in fields:
        if not _known(spec, name):
            return _bad_column(name, "select")
    where = _where(spec, m["where"])
    if isinstance(where, Reply):
        return where
    limit = int(m["limit2"] or m["limit"] or DEFAULT_LIMIT)
    offset = int(m["limit"]) if m["limit2"] else int(m["offset"] or 0)
    if limit < 1 or limit > ROW_LIMIT:
        return request_error(
            400, "LIMIT_EXCEEDED", "limit exceeded", {"clause": "limit", "limit": ROW_LIMIT, "by": str(limit)}
        )
    order = m["order"] or "id"
    if not _known(spec, order):
        return _bad_column(order, "order by")
    return Query(
        module=spec,
        fields=fields,
        where_field=where[0],
        values=where[1],
        order=order,
        descending=(m["dir"] or "").lower() == "desc",
        offset=offset,
        limit=limit,
    )


def _where(spec: ModuleSpec, text: str | None) -> tuple[str | None, tuple[str, ...] | None] | Reply:
    if text is None:
        return None, None
    w = _WHERE.match(text.strip())
    if w is None:
        return _syntax(text.strip()[:40], "where")
    name = w["field"]
    if not _known(spec, name):
        return _bad_column(name, "where")
    if w["notnull"]:
        return name, None
    values = _values(w["values"]) if w["in"] else _values(w["value"])
    if values is None or not values:
        return _syntax((w["values"] or w["value"] or "")[:40], "where")
    if len(values) > IN_LIMIT:
        return request_error(
            400,
            "LIMIT_EXCEEDED",
            "the number of values given for the in operator exceeds the limit",
            {"clause": "where", "operator": "in", "limit": IN_LIMIT},
        )
    return name, tuple(values)


def _match(state: SandboxState, query: Query) -> list[dict[str, JSON]]:
    module = query.module.api_name
    records = state.records[module]
    field, values = query.where_field, query.values
    if field is None:
        hits = list(records.values())
    elif values is None:
        hits = [r for r in records.values() if r.get(field) not in (None, "")]
    elif field == "id":
        hits = [records[v] for v in dict.fromkeys(values) if v in records]
    else:
        ids = dict.fromkeys(rid for v in values for rid in _ids_with(state, module, field, v))
        hits = [records[rid] for rid in ids]

    def key(rec: dict[str, JSON]) -> tuple[int, str]:
        value = rec.get(query.order)
        text = "" if value is None else str(value)
        return (int(text), "") if query.order == "id" and text.isdigit() else (0, text)

    return sorted(hits, key=key, reverse=query.descending)


def _ids_with(state: SandboxState, module: str, field: str, value: str) -> list[str]:
    by_value = state.index.get(module, {}).get(field)
    if by_value is not None:
        return list(by_value.get(value, {}))
    return [rid for rid, rec in state.records[module].items() if str(rec.get(field)) == value]


def run(state: SandboxState, query: Query) -> Reply:
    """Answer a parsed query: the selected fields of the matching rows, or 204."""
    rows = _match(state, query)
    page = rows[query.offset : query.offset + query.limit]
    if not page:
        return Reply(status=204, body=None)
    data: list[JSON] = [{name: rec.get(name) for name in (*query.fields, "id")} for rec in page]
    info: dict[str, JSON] = {"count": len(page), "more_records": query.offset + query.limit < len(rows)}
    return Reply(status=200, body={"data": data, "info": info})
