"""The values that flow between the stages: Change -> Payload -> Outcome.

Every value that crosses a stage boundary is a frozen, slotted dataclass, so a stage can never
mutate what another stage still holds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

import orjson

__all__ = [
    "JSON",
    "Change",
    "Operation",
    "Outcome",
    "Payload",
    "PayloadItem",
    "Status",
    "Target",
    "TERMINAL",
]

# A JSON value as orjson reads and writes it.
JSON: TypeAlias = "str | int | float | bool | list[JSON] | dict[str, JSON] | None"


class Operation(StrEnum):
    """What a change asks the CRM to do."""

    UPDATE = "update"  # PUT /{Module}: update records by id or by external field
    UPSERT = "upsert"  # POST /{Module}/upsert: insert or update by duplicate-check fields
    UPDATE_RELATED = "update_related"  # PUT /{Module}/{parent}/{RelatedList}: link, or edit relation fields
    DELETE_RELATED = "delete_related"  # DELETE /{Module}/{parent}/{RelatedList}: delink


class Status(StrEnum):
    """What happened to one change; every change ends in exactly one terminal status per run."""

    SUCCESS = "SUCCESS"  # the CRM applied it
    REJECTED = "REJECTED"  # the CRM refused the record: permanent, never retried automatically
    FAILED = "FAILED"  # transient trouble outlasted the retries: safe to re-drive
    INVALID = "INVALID"  # refused before sending: a bad source row or mapping
    SKIPPED = "SKIPPED"  # nothing to send (unchanged, or a dry run)
    PENDING = "PENDING"  # not yet terminal


TERMINAL = frozenset({Status.SUCCESS, Status.REJECTED, Status.FAILED, Status.INVALID, Status.SKIPPED})


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where a stream's changes go: everything needed to build a call except the records.

    ``match_field`` is the external field of ``module`` that addresses a record (``None``: by record
    id). For related operations ``module`` is the parent's module, ``parent_match_field`` addresses the
    parent, and ``match_field`` is the external field of ``related_module`` that addresses the related
    record.
    """

    operation: Operation
    module: str
    match_field: str | None = None
    related_list: str | None = None
    related_module: str | None = None
    parent_match_field: str | None = None
    duplicate_check_fields: tuple[str, ...] = ()
    # The CRM fields the stream maps (a relink after a delink clears those it does not set). Not part of the
    # target's identity: the batcher hashes targets per change, and a stream has one field list.
    fields: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_related(self) -> bool:
        return self.operation in (Operation.UPDATE_RELATED, Operation.DELETE_RELATED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One requested effect, read from one source row."""

    stream: str
    seq: int  # source position within the stream: row or line number, strictly increasing
    target: Target
    key: str  # the record id or external value (for related operations: of the related record)
    parent: str | None = None  # related operations: the parent's record id or external value
    fields: Mapping[str, JSON] = field(default_factory=dict)  # CRM field API name -> value; absent is not null
    source_row: Mapping[str, JSON] | None = None  # the row as read, so a report can join back to it

    @property
    def order_key(self) -> tuple[str, str | None, str]:
        """Changes with equal order keys touch the same CRM object and must apply in source order."""
        return (self.target.module, self.parent, self.key)

    @property
    def record_key(self) -> str:
        """Parent and key, as the dispatch journal names the record a change went out in."""
        return f"{self.parent or ''}\x00{self.key}"

    def key_digest(self) -> int:
        """A 64-bit digest of what this change addresses (module, parent, key): skip-unchanged's key."""
        text = f"{self.target.module}\x00{self.parent or ''}\x00{self.key}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)

    def digest(self) -> int:
        """A 64-bit digest of the effect: equal digests for one key mean sending it again changes nothing."""
        effect = (self.target.operation.value, self.target.related_list, dict(self.fields))
        text = orjson.dumps(effect, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadItem:
    """One record of a call: one or more changes to the same key, coalesced (later fields win)."""

    key: str
    fields: Mapping[str, JSON]
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """One HTTP call's worth of records with the same endpoint (target and parent)."""

    target: Target
    parent: str | None
    items: tuple[PayloadItem, ...]

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(c for item in self.items for c in item.changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What happened to one change."""

    change: Change
    status: Status
    code: str | None = None  # the CRM's code (SUCCESS, INVALID_DATA, ...) or ours for INVALID rows
    message: str | None = None
    details: Mapping[str, JSON] | None = None
    crm_id: str | None = None
    http_status: int | None = None
    attempts: int = 0
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    note: str | None = None  # e.g. "ambiguous retry: relation already removed"

    @classmethod
    def failed(cls, change: Change, *, code: str, message: str, note: str | None = None) -> Outcome:
        """A change that never reached a call (its stream was halted first)."""
        now = time.time()
        return cls(
            change=change,
            status=Status.FAILED,
            code=code,
            message=message,
            started_at=now,
            finished_at=now,
            note=note,
        )

    @classmethod
    def skipped(cls, change: Change, *, code: str, message: str, now: float) -> Outcome:
        """A change not sent, because there was nothing to send (unchanged, overtaken, a dry run)."""
        return cls(change=change, status=Status.SKIPPED, code=code, message=message, started_at=now, finished_at=now)
