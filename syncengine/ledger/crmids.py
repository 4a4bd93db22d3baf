"""The ledger's memory of the org: record ids looked up by external value, and what the org answered.

Both serve ``external.py``: a stream that updates by external value through record ids looks each value
up once per org (COQL costs a call per 50 values), and a stream on ``auto`` starts with the strategy the
org was found to need. The ids are a cache, not the truth: an id the CRM no longer knows (the record was
deleted or merged) is forgotten and looked up again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final

from syncengine.ledger.connection import SqliteConnection, transaction

__all__ = ["CrmIdStore"]

_CHUNK: Final = 500  # SQLite caps the number of bound parameters


class CrmIdStore(SqliteConnection):
    """Record ids by (org, module, external field, value), and facts per org."""

    async def crm_ids(self, org: str, module: str, field: str, values: Sequence[str]) -> dict[str, str]:
        """Of ``values``, those with a remembered record id: value -> id."""
        if not values:
            return {}

        def load() -> dict[str, str]:
            conn = self._connection()
            found: dict[str, str] = {}
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                query = (
                    "SELECT value, record_id FROM crm_ids WHERE org = ? AND module = ? AND field = ? "
                    f"AND value IN ({marks})"
                )
                found.update(conn.execute(query, (org, module, field, *chunk)).fetchall())
            return found

        return await self._run(f"cannot read the record ids of {module}", load)

    async def remember_ids(self, org: str, module: str, field: str, ids: Mapping[str, str]) -> None:
        """Remember value -> record id pairs the CRM answered."""
        if not ids:
            return

        def store() -> None:
            conn = self._connection()
            now = time.time()
            rows = [(org, module, field, value, rid, now) for value, rid in sorted(ids.items())]
            with transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO crm_ids (org, module, field, value, record_id, seen_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )

        await self._run(f"cannot store the record ids of {module}", store)

    async def forget_ids(self, org: str, module: str, field: str, values: Sequence[str]) -> None:
        """The CRM no longer knows these ids: look the values up again next time."""
        if not values:
            return

        def forget() -> None:
            conn = self._connection()
            with transaction(conn):
                conn.executemany(
                    "DELETE FROM crm_ids WHERE org = ? AND module = ? AND field = ? AND value = ?",
                    [(org, module, field, value) for value in values],
                )

        await self._run(f"cannot forget record ids of {module}", forget)

    async def org_fact(self, org: str, name: str) -> str | None:
        """What was learnt about the org under ``name``, if anything."""

        def load() -> str | None:
            row = self._connection().execute(
                "SELECT value FROM org_facts WHERE org = ? AND name = ?", (org, name)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run("cannot read what the ledger knows of the org", load)

    async def set_org_fact(self, org: str, name: str, value: str) -> None:
        def store() -> None:
            conn = self._connection()
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO org_facts (org, name, value, updated_at) VALUES (?, ?, ?, ?)",
                    (org, name, value, time.time()),
                )

        await self._run("cannot store what was learnt of the org", store)
