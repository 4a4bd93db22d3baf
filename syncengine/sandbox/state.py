"""The sandbox's data: records per module, value indexes, and links between records.

Everything is a dict keyed the way requests address it, so every lookup on the hot path is O(1):

- ``records[module][id]`` -> the record (a dict with ``id`` and the system fields);
- ``index[module][field][value]`` -> the ids holding that value, for external, unique and
  duplicate-check fields;
- ``links[(module, id)][related_module][related_id]`` -> the relation's fields. A link is stored
  under both ends and both share one fields dict, so ``Contacts/{c}/Deals/{d}`` and
  ``Deals/{d}/Contacts/{c}`` are the same link.

The state does no validation of its own: the request handlers validate first, then call
``insert``/``update``/``link``/``unlink``. With ``record_history`` on, each of those that applied something
appends one entry to ``history``, in apply order (seed loads do not: they are not writes):
``{"n": 1, "op": "insert"|"update"|"link"|"unlink", "module": ..., "id": ..., "fields": {...},
"related_module": ... or None, "related_id": ... or None, "at": 1700000000.123456}``. ``n`` counts from 1; for
links, ``id`` is the record of the module the call addressed; ``at`` is when it was applied (Unix time, in
seconds), so a client can measure how long a change took to reach the CRM. ``clear`` forgets the history
too. Seed files (JSON or JSONL, see ``load``) are trusted. Inspection methods (``get_record``,
``find_by_field``, ``related``, ...) return copies, so a test can never change the state by accident.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from syncengine.model import JSON
from syncengine.sandbox.schema import FieldType, ModuleSpec, RelatedList, Schema

__all__ = ["SYSTEM_USER", "SandboxState", "now_iso"]

# Who the sandbox says created and modified every record.
SYSTEM_USER: dict[str, JSON] = {"name": "Sandbox User", "id": "111111000000000001"}
_SYSTEM_FIELDS = ("Created_Time", "Modified_Time", "Created_By", "Modified_By")
_FIRST_ID = 111111000000100000  # generated ids are 18-digit numeric strings, like Zoho's


def now_iso() -> str:
    """The current time the way Zoho writes it: ISO 8601, seconds, with an offset."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _key(value: JSON) -> str | None:
    """The index key of a value: strings as they are, numbers as text; other values are not indexed."""
    if isinstance(value, str):
        return value if value else None
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return None
    return str(value)


class SandboxState:
    """Records, indexes and links for every module of a schema."""

    def __init__(self, schema: Schema, *, record_history: bool = False) -> None:
        self.schema = schema
        self.record_history = record_history  # off by default: a benchmark's memory stays flat
        self.history: list[dict[str, JSON]] = []
        self.records: dict[str, dict[str, dict[str, JSON]]] = {}
        self.index: dict[str, dict[str, dict[str, dict[str, None]]]] = {}
        self.ids: dict[str, str] = {}  # record id -> module: ids are unique across modules, as in Zoho
        self.links: dict[tuple[str, str], dict[str, dict[str, dict[str, JSON]]]] = {}
        self._next_id = itertools.count(_FIRST_ID)
        self.clear()

    # ----------------------------------------------------------------------------- inspection

    def get_record(self, module: str, record_id: str | int) -> dict[str, JSON] | None:
        """A copy of the record, or None."""
        rec = self.records.get(module, {}).get(str(record_id))
        return dict(rec) if rec is not None else None

    def find_id(self, module: str, field: str, value: JSON) -> str | None:
        """The id of the first record whose ``field`` equals ``value`` (indexed fields are O(1))."""
        by_field = self.index.get(module, {}).get(field)
        if by_field is not None:
            key = _key(value)
            hits = by_field.get(key) if key is not None else None
            return next(iter(hits)) if hits else None
        for rid, rec in self.records.get(module, {}).items():
            if rec.get(field) == value:
                return rid
        return None

    def find_by_field(self, module: str, field: str, value: JSON) -> dict[str, JSON] | None:
        """A copy of the first record whose ``field`` equals ``value``, or None."""
        rid = self.find_id(module, field, value)
        return self.get_record(module, rid) if rid is not None else None

    def related(self, module: str, record_id: str | int, related_list: str) -> dict[str, dict[str, JSON]]:
        """Records linked to ``module/record_id`` via ``related_list``: related id -> relation fields."""
        rl = self.schema.related_list(module, related_list)
        if rl is None:
            raise KeyError(f"{module} has no related list {related_list!r}")
        links = self.links.get((module, str(record_id)), {}).get(rl.related_module, {})
        return {rid: dict(fields) for rid, fields in links.items()}

    def is_linked(self, module: str, record_id: str, related_module: str, related_id: str) -> bool:
        """Whether the two records are linked."""
        return related_id in self.links.get((module, record_id), {}).get(related_module, {})

    def count(self, module: str) -> int:
        """How many records ``module`` holds."""
        return len(self.records.get(module, {}))

    def counts(self) -> dict[str, int]:
        """Records per module."""
        return {m: len(r) for m, r in self.records.items()}

    def iter_records(self, module: str) -> Iterator[dict[str, JSON]]:
        """Copies of every record of ``module``, in insertion order."""
        return (dict(r) for r in self.records.get(module, {}).values())

    # ----------------------------------------------------------------------------- mutation

    def clear(self) -> None:
        """Forget every record and link."""
        self.records = {m: {} for m in self.schema.by_name}
        self.index = {m: {f: {} for f in spec.indexed} for m, spec in self.schema.by_name.items()}
        self.ids = {}
        self.links = {}
        self.history = []

    def history_since(self, n: int) -> list[dict[str, JSON]]:
        """Copies of the history entries after entry ``n`` (0: all of them)."""
        return [dict(entry) for entry in self.history[max(0, n) :]]

    def _log(
        self,
        op: str,
        module: str,
        record_id: str,
        fields: Mapping[str, JSON],
        related: tuple[str, str] | None = None,
    ) -> None:
        if not self.record_history:
            return
        self.history.append(
            {
                "n": len(self.history) + 1,
                "op": op,
                "module": module,
                "id": record_id,
                "fields": dict(fields),
                "related_module": related[0] if related else None,
                "related_id": related[1] if related else None,
                "at": time.time(),
            }
        )

    def new_id(self) -> str:
        """A fresh 18-digit id that no record uses."""
        while True:
            rid = str(next(self._next_id))
            if rid not in self.ids:
                return rid

    def insert(
        self,
        module: str,
        fields: Mapping[str, JSON],
        *,
        record_id: str | None = None,
        now: str | None = None,
        log: bool = True,
    ) -> str:
        """Store a new record (already validated) and return its id; ``log=False``: not a write (a seed)."""
        spec = self.schema.by_name[module]
        rid = record_id or self.new_id()
        stamp = now or now_iso()
        rec: dict[str, JSON] = {
            "id": rid,
            "Created_Time": stamp,
            "Modified_Time": stamp,
            "Created_By": dict(SYSTEM_USER),
            "Modified_By": dict(SYSTEM_USER),
        }
        rec.update(fields)
        rec["id"] = rid
        self.records[module][rid] = rec
        self.ids[rid] = module
        self._index_add(spec, rid, rec)
        if log:
            self._log("insert", module, rid, fields)
        return rid

    def update(self, module: str, record_id: str, fields: Mapping[str, JSON], *, now: str | None = None) -> None:
        """Apply validated ``fields`` to an existing record."""
        rec = self.records[module][record_id]
        idx = self.index[module]
        for name, value in fields.items():
            if name in idx:
                self._unindex(idx[name], rec.get(name), record_id)
                key = _key(value)
                if key is not None:
                    idx[name].setdefault(key, {})[record_id] = None
            rec[name] = value
        rec["Modified_Time"] = now or now_iso()
        self._log("update", module, record_id, fields)

    def link(
        self,
        module: str,
        record_id: str,
        related_list: RelatedList,
        related_id: str,
        fields: Mapping[str, JSON],
        *,
        log: bool = True,
    ) -> bool:
        """Link two records (or update the link's fields); True when the link is new."""
        if log:
            self._log("link", module, record_id, fields, (related_list.related_module, related_id))
        mine = self.links.setdefault((module, record_id), {}).setdefault(related_list.related_module, {})
        existing = mine.get(related_id)
        if existing is not None:
            existing.update(fields)
            return False
        shared = dict(fields)
        mine[related_id] = shared
        theirs = self.links.setdefault((related_list.related_module, related_id), {}).setdefault(module, {})
        theirs[record_id] = shared
        return True

    def unlink(self, module: str, record_id: str, related_module: str, related_id: str) -> bool:
        """Remove a link; False when there was none."""
        mine = self.links.get((module, record_id), {}).get(related_module)
        if mine is None or related_id not in mine:
            return False
        del mine[related_id]
        theirs = self.links.get((related_module, related_id), {}).get(module)
        if theirs is not None:
            theirs.pop(record_id, None)
        self._log("unlink", module, record_id, {}, (related_module, related_id))
        return True

    def _index_add(self, spec: ModuleSpec, rid: str, rec: Mapping[str, JSON]) -> None:
        idx = self.index[spec.api_name]
        for name, by_value in idx.items():
            key = _key(rec.get(name))
            if key is not None:
                by_value.setdefault(key, {})[rid] = None

    @staticmethod
    def _unindex(by_value: dict[str, dict[str, None]], old: JSON, rid: str) -> None:
        key = _key(old)
        if key is None:
            return
        holders = by_value.get(key)
        if holders is not None:
            holders.pop(rid, None)
            if not holders:
                del by_value[key]

    # ----------------------------------------------------------------------------- seed and dump

    def dump(self) -> dict[str, JSON]:
        """The whole state in the seed format (see ``load``)."""
        relations: list[JSON] = []
        seen: set[tuple[str, str, str, str]] = set()
        for (module, rid), by_module in self.links.items():
            for related_module, targets in by_module.items():
                rl = self._list_between(module, related_module)
                for tid, fields in targets.items():
                    pair = (related_module, tid, module, rid)
                    if pair in seen:
                        continue
                    seen.add((module, rid, related_module, tid))
                    relations.append(
                        {
                            "module": module,
                            "id": rid,
                            "related_list": rl,
                            "related_id": tid,
                            "fields": dict(fields),
                        }
                    )
        records: dict[str, JSON] = {m: list(recs.values()) for m, recs in self.records.items() if recs}
        return {"records": records, "relations": relations}

    def dump_bytes(self) -> bytes:
        """``dump`` as JSON bytes."""
        return orjson.dumps(self.dump())

    def load(self, doc: Mapping[str, Any]) -> None:
        """Add the records and links of a seed document to the state.

        Format: ``{"records": {"Contacts": [{"id": "...", "Last_Name": "..."}, ...], ...},
        "relations": [{"module": "Contacts", "id": "...", "related_list": "Deals",
        "related_id": "...", "fields": {"Contact_Role": {"id": "..."}}}, ...]}``. A record without an
        ``id`` gets a new one; missing system fields are set to now.
        """
        records = doc.get("records", {})
        if not isinstance(records, Mapping):
            raise ValueError("seed: 'records' must be an object of module -> list of records")
        for module, recs in records.items():
            self._load_records(str(module), recs)
        for rel in doc.get("relations", []):
            self._load_relation(rel)

    def load_lines(self, lines: Iterable[bytes | str]) -> None:
        """Load JSONL: each line is ``{"module": M, "record": {...}}`` or ``{"relation": {...}}``."""
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            item = orjson.loads(line)
            if "relation" in item:
                self._load_relation(item["relation"])
            elif "module" in item and "record" in item:
                self._load_records(item["module"], [item["record"]])
            else:
                raise ValueError(f"seed line {n}: expected 'module'+'record' or 'relation'")

    def load_file(self, path: Path) -> None:
        """Load a seed file: ``.jsonl`` as JSON lines, anything else as one JSON document."""
        if path.suffix == ".jsonl":
            with path.open("rb") as fh:
                self.load_lines(fh)
        else:
            self.load(orjson.loads(path.read_bytes()))

    def _load_records(self, module: str, recs: Any) -> None:
        spec = self.schema.module(module)
        if spec is None:
            raise ValueError(f"seed: unknown module {module!r}")
        stamp = now_iso()
        for rec in recs:
            fields = {k: v for k, v in rec.items() if k != "id"}
            for name in _SYSTEM_FIELDS:
                fields.setdefault(name, stamp if name.endswith("Time") else dict(SYSTEM_USER))
            for name, value in list(fields.items()):
                fspec = spec.by_name.get(name)
                if fspec is not None and fspec.type is FieldType.LOOKUP and isinstance(value, str | int):
                    fields[name] = {"id": str(value)}
            rid = str(rec["id"]) if rec.get("id") is not None else None
            if rid is not None and rid in self.ids:
                self._drop(self.ids[rid], rid)
            self.insert(spec.api_name, fields, record_id=rid, now=stamp, log=False)

    def _load_relation(self, rel: Mapping[str, Any]) -> None:
        spec = self.schema.module(str(rel["module"]))
        rl = self.schema.related_list(spec.api_name, str(rel["related_list"])) if spec else None
        if spec is None or rl is None:
            raise ValueError(f"seed: unknown relation {rel.get('module')}/{rel.get('related_list')}")
        rid, tid = str(rel["id"]), str(rel["related_id"])
        for module, some_id in ((spec.api_name, rid), (rl.related_module, tid)):
            if self.ids.get(some_id) != module:
                raise ValueError(f"seed: relation names {module} {some_id}, which is not a seeded record")
        self.link(spec.api_name, rid, rl, tid, rel.get("fields") or {}, log=False)

    def remove(self, module: str, rid: str) -> None:
        """A record deleted in the CRM (by a user, a merge): gone from its module and its indexes."""
        self._drop(module, rid)

    def _drop(self, module: str, rid: str) -> None:
        rec = self.records[module].pop(rid)
        for name, by_value in self.index[module].items():
            self._unindex(by_value, rec.get(name), rid)
        del self.ids[rid]

    def _list_between(self, module: str, related_module: str) -> str:
        for name, rl in self.schema.lists.get(module, {}).items():
            if rl.related_module == related_module:
                return name
        raise KeyError(f"no related list from {module} to {related_module}")
