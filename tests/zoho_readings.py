"""Helpers for the tests that run the engine against the sandbox under Zoho's stricter readings (issue 11).

Seeds (contacts C0.., deals D0.., relations), stream tables for the config, the ledger's outcomes by source
row, and ``Scripted``: a sandbox whose answer to chosen calls a test rewrites through the ``_dispatch`` hook,
for the readings of Zoho's docs the sandbox has no flag for. Calls are counted by the sandbox (``stats``), the
CRM's state read from ``state`` and its history of applied writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from syncengine.config import Config
from syncengine.ledger import SqliteLedger
from syncengine.ledger.values import OutcomeRow
from syncengine.model import JSON
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.dispatch import Call
from syncengine.sandbox.envelopes import Reply

__all__ = [
    "Refuse",
    "Reshape",
    "Scripted",
    "contact_ids",
    "outcomes",
    "related_stream",
    "seed",
    "unlinked",
]

# A call (its route, data and ids) -> the answer to give instead of applying it (None: apply it).
Refuse = Callable[[Call], Reply | None]
# A call and the sandbox's answer to it, applied -> the answer to send instead (None: its own).
Reshape = Callable[[Call, Reply], Reply | None]


class Scripted(Sandbox):
    """A sandbox whose answers a test rewrites through the ``_dispatch`` hook (``server.py``), for a reading of
    Zoho's docs the sandbox has no flag for: ``refuse`` answers a call without applying it, ``reshape`` rewrites
    the answer to one it applied. Calls are still routed, authorized, limited and counted by the sandbox."""

    def __init__(
        self, options: SandboxOptions, *, refuse: Refuse | None = None, reshape: Reshape | None = None
    ) -> None:
        super().__init__(options)
        self.refuse = refuse
        self.reshape = reshape
        self.seen: list[tuple[str, int]] = []  # per call dispatched: its kind and how many records or ids

    def _dispatch(self, call: Call, request: web.Request) -> Reply:
        self.seen.append((call.route.kind, len(call.data) or len(call.ids)))
        refused = self.refuse(call) if self.refuse is not None else None
        if refused is not None:
            return refused
        own = super()._dispatch(call, request)
        return (self.reshape(call, own) if self.reshape is not None else None) or own


def seed(
    sb: Sandbox,
    *,
    contacts: int,
    deals: int = 1,
    linked: Iterable[tuple[int, int]] = (),
    contact_keys: Mapping[int, str] | None = None,
) -> None:
    """Contacts C0.. (or ``contact_keys[i]`` as External_Contact_ID) and deals D0.., the ``linked`` (deal,
    contact) pairs related."""
    keys = contact_keys or {}
    sb.state.load(
        {
            "records": {
                "Deals": [{"External_Deal_ID": f"D{d}", "Deal_Name": f"Deal {d}"} for d in range(deals)],
                "Contacts": [
                    {"External_Contact_ID": keys.get(c, f"C{c}"), "Last_Name": f"Contact {c}"} for c in range(contacts)
                ],
            }
        }
    )
    relations: list[JSON] = [
        {
            "module": "Deals",
            "id": str(sb.state.find_id("Deals", "External_Deal_ID", f"D{d}")),
            "related_list": "Contacts",
            "related_id": str(sb.state.find_id("Contacts", "External_Contact_ID", keys.get(c, f"C{c}"))),
            "fields": {},
        }
        for d, c in linked
    ]
    sb.state.load({"relations": relations})


def contact_ids(sb: Sandbox, count: int) -> list[str]:
    """The CRM ids of contacts C0..C(count-1)."""
    return [str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{c}")) for c in range(count)]


def related_stream(
    name: str,
    operation: str,
    source: Path,
    *,
    parent_field: str | None = "External_Deal_ID",
    related_field: str | None = "External_Contact_ID",
    **extra: Any,
) -> dict[str, Any]:
    """A Deals -> Contacts stream reading columns ``deal`` and ``contact`` of a CSV."""
    return {
        "name": name,
        "operation": operation,
        "module": "Deals",
        "related_list": "Contacts",
        "parent": {"column": "deal", **({"field": parent_field} if parent_field else {})},
        "match": {"column": "contact", **({"field": related_field} if related_field else {})},
        "source": {"kind": "csv", "path": str(source)},
        **extra,
    }


async def outcomes(config: Config, stream: str | None = None) -> dict[int, OutcomeRow]:
    """The latest run's outcome rows by source row (of one stream, or of the only one)."""
    async with SqliteLedger(config.ledger.path) as ledger:
        run_id = await ledger.latest_run_id()
        assert run_id is not None
        rows = [row async for row in ledger.outcomes(run_id)]
    picked = [r for r in rows if stream is None or r.stream == stream]
    by_seq = {r.seq: r for r in picked}
    assert len(by_seq) == len(picked), "a change got two outcomes"
    return by_seq


def unlinked(sb: Sandbox) -> list[str]:
    """The related ids the CRM unlinked, in apply order (needs ``record_history``)."""
    return [str(e["related_id"]) for e in sb.state.history if e["op"] == "unlink"]
