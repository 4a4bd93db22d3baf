"""COQL lookups of record ids by an external value: the call and the reading of its answer.

Zoho's COQL (``POST /crm/v7/coql``, scope ``ZohoCRM.coql.READ``) takes at most 50 values in one ``in (...)``
and 200 rows per query (LIMIT 1-200 costs 1 credit); an answer with no rows is 204. Zoho documents no escape
in a string literal, so a value carrying a quote or a backslash is never put in one (``literal_safe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import orjson

from syncengine.crm.requests import Call
from syncengine.crm.responses import Refused, interpret
from syncengine.crm.transport import HttpResponse

__all__ = ["IN_LIMIT", "LOOKUP_CREDITS", "LookupRefusal", "id_lookup", "literal_safe", "read_ids"]

IN_LIMIT: Final = 50  # values in one COQL ``in (...)``, Zoho's documented maximum
LOOKUP_CREDITS: Final = 1  # a COQL call with LIMIT 1-200
_UNSAFE: Final = ("'", "\\")


class LookupRefusal(Exception):
    """COQL refused the lookup: its code and Zoho's message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def literal_safe(value: str) -> bool:
    return not any(c in value for c in _UNSAFE)


def id_lookup(api_base: str, module: str, field: str, values: Sequence[str]) -> Call:
    """``select id, Field from Module where Field in ('v1', ...) limit 200``: at most IN_LIMIT safe values."""
    assert len(values) <= IN_LIMIT and all(literal_safe(v) for v in values)
    listed = ", ".join(f"'{v}'" for v in values)
    query = f"select id, {field} from {module} where {field} in ({listed}) limit 200"
    return Call(
        method="POST",
        url=f"{api_base}/coql",
        headers=(("Content-Type", "application/json"),),
        body=orjson.dumps({"select_query": query}),
    )


def read_ids(response: HttpResponse, field: str) -> dict[str, str]:
    """The value -> record id pairs of a COQL answer (204: none). Raises LookupRefusal for any other status."""
    if response.status not in (200, 204):
        verdict = interpret(response, 0)
        code, message = (verdict.code, verdict.message) if isinstance(verdict, Refused) else ("", "")
        raise LookupRefusal(code or f"HTTP_{response.status}", message or f"HTTP {response.status}")
    try:
        body = orjson.loads(response.body) if response.body else None
    except orjson.JSONDecodeError:
        body = None
    rows = body.get("data") if isinstance(body, dict) else None
    pairs: dict[str, str] = {}
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, dict) and row.get(field) is not None and row.get("id") is not None:
            pairs[str(row[field])] = str(row["id"])
    return pairs
