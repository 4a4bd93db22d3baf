"""Scenario 5, credits: calls and credits per 1,000 changes, for each operation.

One sandbox (no latency, C = 10) seeded with 1,000 contacts (fixed ids and external ids) and 10 deals.
Each operation runs as its own ``syncengine run --stream`` over 1,000 changes; calls and credits are
the sandbox's own counters (``calls_total``, ``credits_used``) taken before and after the run, beside
the engine's ``calls``. The related operations spread the 1,000 changes over 10 parents (100 each), the
shape of a real link table; delete_related removes exactly the relations update_related made.
Goal: 10 calls per 1,000 changes for every bulk operation (full batches of 100).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.common import CONTACT_ID_BASE, contact_key, engine_config, run_engine, sandbox_server

__all__ = ["CreditsRow", "run_credits"]

N = 1_000
DEALS = 10
DEAL_ID_BASE = 222_222_000_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditsRow:
    operation: str
    changes: int
    succeeded: int
    engine_calls: int
    sandbox_calls: int
    calls_per_1000: float
    credits: int
    credits_per_1000: float
    throttled: int


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(rows)
    return path


def _inputs(work: Path) -> tuple[Path, dict[str, Path]]:
    seed = work / "credits-seed.jsonl"
    with seed.open("wb") as handle:
        for i in range(N):
            record = {"id": str(CONTACT_ID_BASE + i), "External_Contact_ID": contact_key(i), "Last_Name": "Before"}
            handle.write(orjson.dumps({"module": "Contacts", "record": record}) + b"\n")
        for d in range(DEALS):
            record = {"id": str(DEAL_ID_BASE + d), "External_Deal_ID": f"D{d:03d}", "Deal_Name": f"Deal {d}"}
            handle.write(orjson.dumps({"module": "Deals", "record": record}) + b"\n")
    pairs = [(d, d * (N // DEALS) + j) for d in range(DEALS) for j in range(N // DEALS)]
    sources = {
        "update_by_id": _write(
            work / "by-id.csv", ["crm_id", "last_name"], [[str(CONTACT_ID_BASE + i), f"Id{i}"] for i in range(N)]
        ),
        "update_by_external_id": _write(
            work / "by-ext.csv", ["erp_id", "last_name"], [[contact_key(i), f"Ext{i}"] for i in range(N)]
        ),
        # Half the keys exist (updated), half are new (inserted).
        "upsert": _write(
            work / "upsert.csv",
            ["erp_id", "last_name"],
            [[contact_key(i), f"Up{i}"] for i in range(N // 2, N + N // 2)],
        ),
        "update_related": _write(
            work / "link.csv", ["deal_erp_id", "contact_erp_id"], [[f"D{d:03d}", contact_key(c)] for d, c in pairs]
        ),
        "delete_related_by_ids": _write(
            work / "delink.csv",
            ["deal_id", "contact_id"],
            [[str(DEAL_ID_BASE + d), str(CONTACT_ID_BASE + c)] for d, c in pairs],
        ),
    }
    return seed, sources


def _streams(sources: dict[str, Path]) -> str:
    def src(name: str) -> str:
        return f'source = {{ kind = "csv", path = "{sources[name]}" }}\n'

    return (
        '[[streams]]\nname = "update_by_id"\noperation = "update"\nmodule = "Contacts"\n'
        + src("update_by_id")
        + 'match = { column = "crm_id" }\nfields = { Last_Name = "last_name" }\n\n'
        '[[streams]]\nname = "update_by_external_id"\noperation = "update"\nmodule = "Contacts"\n'
        + src("update_by_external_id")
        + 'match = { column = "erp_id", field = "External_Contact_ID" }\nfields = { Last_Name = "last_name" }\n\n'
        '[[streams]]\nname = "upsert"\noperation = "upsert"\nmodule = "Contacts"\n'
        + src("upsert")
        + 'match = { column = "erp_id", field = "External_Contact_ID" }\nfields = { Last_Name = "last_name" }\n\n'
        '[[streams]]\nname = "update_related"\noperation = "update_related"\nmodule = "Deals"\n'
        'related_list = "Contacts"\n'
        + src("update_related")
        + 'parent = { column = "deal_erp_id", field = "External_Deal_ID" }\n'
        'match = { column = "contact_erp_id", field = "External_Contact_ID" }\n\n'
        '[[streams]]\nname = "delete_related_by_ids"\noperation = "delete_related"\nmodule = "Deals"\n'
        'related_list = "Contacts"\n'
        + src("delete_related_by_ids")
        + 'parent = { column = "deal_id" }\nmatch = { column = "contact_id" }\n'
    )


def run_credits(work: Path) -> list[CreditsRow]:
    work.mkdir(parents=True, exist_ok=True)
    seed, sources = _inputs(work)
    rows: list[CreditsRow] = []
    with sandbox_server(data=seed, concurrency=10) as server:
        config = engine_config(
            work / "credits.toml",
            base=server.base,
            ledger=work / "credits.db",
            source=sources["update_by_id"],
            concurrency=10,
            streams=_streams(sources),
        )
        for name in sources:  # in order: delete_related removes what update_related linked
            before = server.stats()
            run = run_engine(config, stream=name)
            after = server.stats()
            calls = int(after["calls_total"]) - int(before["calls_total"])
            credits = int(after["credits_used"]) - int(before["credits_used"])
            throttled = int(after["throttled_429_total"]) - int(before["throttled_429_total"])
            rows.append(
                CreditsRow(
                    operation=name,
                    changes=run.read,
                    succeeded=run.succeeded,
                    engine_calls=int(run.finished["calls"]),
                    sandbox_calls=calls,
                    calls_per_1000=round(calls * 1000 / max(1, run.read), 2),
                    credits=credits,
                    credits_per_1000=round(credits * 1000 / max(1, run.read), 1),
                    throttled=throttled,
                )
            )
    return rows
