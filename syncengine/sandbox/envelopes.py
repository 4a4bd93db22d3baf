"""Zoho's response shapes: request-level envelopes and per-record ``data[]`` entries.

A request-level error is ``{"code", "details", "message", "status": "error"}`` with no ``data``; a
per-record entry has the same four keys and sits inside ``{"data": [...]}`` in input order. The
HTTP status of a ``data[]`` answer follows from its entries (``data_status``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syncengine.model import JSON

__all__ = [
    "Reply",
    "data_reply",
    "data_status",
    "entry_error",
    "entry_success",
    "request_error",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What a handler answers: HTTP status and a JSON body (None: no body, e.g. 204)."""

    status: int
    body: JSON


def request_error(status: int, code: str, message: str, details: dict[str, JSON] | None = None) -> Reply:
    """A request-level error envelope."""
    return Reply(status=status, body={"code": code, "details": details or {}, "message": message, "status": "error"})


def entry_error(code: str, message: str, details: dict[str, JSON]) -> dict[str, JSON]:
    """A per-record error entry."""
    return {"code": code, "details": details, "message": message, "status": "error"}


def entry_success(message: str, details: dict[str, JSON]) -> dict[str, JSON]:
    """A per-record success entry."""
    return {"code": "SUCCESS", "details": details, "message": message, "status": "success"}


def data_status(entries: Sequence[dict[str, JSON]], *, all_ok: int = 200) -> int:
    """200 (or ``all_ok``) when every entry succeeded, 207 when some did, 400 when none did."""
    ok = sum(1 for e in entries if e["status"] == "success")
    if ok == len(entries):
        return all_ok
    return 207 if ok else 400


def data_reply(entries: list[dict[str, JSON]], *, all_ok: int = 200) -> Reply:
    """A ``{"data": [...]}`` answer with the status its entries call for."""
    return Reply(status=data_status(entries, all_ok=all_ok), body={"data": entries})  # type: ignore[dict-item]
