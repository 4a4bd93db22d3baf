"""Outcomes to write, built the way the pipeline builds them."""

from __future__ import annotations

from collections.abc import Mapping

from syncengine.model import JSON, Change, Operation, Outcome, Status, Target

__all__ = ["LINK", "UPDATE", "outcome"]

UPDATE = Target(operation=Operation.UPDATE, module="Contacts", match_field="External_Contact_ID")
LINK = Target(
    operation=Operation.UPDATE_RELATED,
    module="Contacts",
    related_list="Deals",
    related_module="Deals",
    match_field="External_Deal_ID",
    parent_match_field="External_Contact_ID",
)


def outcome(
    seq: int,
    status: Status = Status.SUCCESS,
    *,
    stream: str = "contacts",
    target: Target = UPDATE,
    key: str | None = None,
    parent: str | None = None,
    code: str | None = None,
    message: str | None = None,
    source_row: Mapping[str, JSON] | None = None,
    **extra: object,
) -> Outcome:
    """One outcome for the change at ``seq``; the source row defaults to an ERP-like row for that seq."""
    key = key if key is not None else f"C{seq:06d}"
    row = source_row if source_row is not None else {"erp_id": key, "email": f"{key.lower()}@example.com"}
    change = Change(
        stream=stream,
        seq=seq,
        target=target,
        key=key,
        parent=parent,
        fields={"Email": row.get("email")},
        source_row=row,
    )
    if code is None:
        code = "SUCCESS" if status is Status.SUCCESS else "INVALID_DATA"
    return Outcome(change=change, status=status, code=code, message=message, **extra)  # type: ignore[arg-type]
