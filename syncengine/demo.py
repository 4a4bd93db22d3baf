"""`syncengine demo`: a realistic ERP export, synced into the bundled sandbox, reported on.

The export has thousands of contacts updated by external ID, leads by record ID, deal–contact
relations with roles, relation deletes, and a handful of bad rows of every kind, so the summary
shows each way a record can end.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import anyio
import orjson
from rich.console import Console

from syncengine.config import Secrets, load_config
from syncengine.ledger import SqliteLedger, write_report
from syncengine.model import Status
from syncengine.pipeline import RunOptions
from syncengine.runner import exit_code, run_with_progress
from syncengine.sandbox import Sandbox, SandboxOptions

__all__ = [
    "CITIES",
    "ERRORS",
    "FIRST",
    "LAST",
    "ROLES",
    "STATUSES",
    "TITLES",
    "run_demo",
    "write_sample",
]

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Linus", "Radia"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Perlman"]
CITIES = [("Chennai", "India"), ("Austin", "USA"), ("Utrecht", "Netherlands"), ("Osaka", "Japan"), ("Leeds", "UK")]
TITLES = ["Buyer", "CFO", "Head of IT", "Procurement Lead", "Engineer", "Office Manager"]
STATUSES = ["Contacted", "Not Contacted", "Attempted to Contact", "Pre-Qualified", "Contact in Future"]
ERRORS = frozenset({Status.REJECTED, Status.FAILED, Status.INVALID})
ROLES = ["111111000000026002", "111111000000026003", "111111000000026004"]  # contact role ids


def write_sample(workdir: Path, *, contacts: int, seed: int = 7) -> Path:
    """Write the sandbox seed (the CRM before the sync) and the ERP export. Returns the seed file."""
    rng = random.Random(seed)
    exports = workdir / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    deals = max(10, contacts // 10)
    leads = max(10, contacts // 4)
    lead_ids = [str(111111000001000000 + i) for i in range(leads)]
    old_links = sorted({(rng.randrange(deals), rng.randrange(contacts)) for _ in range(max(10, contacts // 20))})
    seed_file = workdir / "crm-before.json"
    seed_file.write_bytes(orjson.dumps(_crm_before(rng, contacts, deals, lead_ids, old_links)))
    _write_contacts(exports, rng, contacts)
    _write_leads(exports, rng, lead_ids)
    _write_links(exports, rng, contacts, deals, old_links)
    return seed_file


def _crm_before(
    rng: random.Random, contacts: int, deals: int, lead_ids: list[str], old_links: list[tuple[int, int]]
) -> dict[str, Any]:
    """The CRM before the sync: contacts, deals, leads, and relations from earlier syncs."""
    return {
        "records": {
            "Contacts": [
                {
                    "id": _contact_id(i),
                    "External_Contact_ID": f"C{i:06d}",
                    "Last_Name": rng.choice(LAST),
                    "First_Name": rng.choice(FIRST),
                    "Email": f"c{i}@old.example.com",
                }
                for i in range(contacts)
            ],
            "Deals": [
                {"id": _deal_id(i), "External_Deal_ID": f"D{i:05d}", "Deal_Name": f"Deal {i}", "Stage": "Qualification"}
                for i in range(deals)
            ],
            "Leads": [
                {"id": lid, "Last_Name": rng.choice(LAST), "Company": f"Company {n}"} for n, lid in enumerate(lead_ids)
            ],
        },
        # Relations the CRM has from earlier syncs; the ERP has since removed some of them.
        "relations": [
            {
                "module": "Deals",
                "id": _deal_id(d),
                "related_list": "Contacts",
                "related_id": _contact_id(c),
                "fields": {"Contact_Role": ROLES[0]},
            }
            for d, c in old_links
        ],
    }


def _write_contacts(exports: Path, rng: random.Random, contacts: int) -> None:
    with (exports / "contacts.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "erp_id",
                "first_name",
                "last_name",
                "email",
                "phone",
                "title",
                "city",
                "country",
                "birth_date",
                "opt_out",
                "erp_note",
            ]
        )
        for i in range(contacts):
            city, country = rng.choice(CITIES)
            out.writerow(
                [
                    f"C{i:06d}",
                    rng.choice(FIRST),
                    rng.choice(LAST),
                    f"c{i}@example.com",
                    f"+1-555-{i:07d}",
                    rng.choice(TITLES),
                    city,
                    country,
                    f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                    rng.choice(["yes", "no", ""]),
                    "unmapped column: kept in the ledger, not sent",
                ]
            )
        # The bad rows, one of each kind:
        out.writerow(["", "No", "Key", "nokey@example.com", "", "", "", "", "", "", "missing key"])
        out.writerow(["C999999", "Not", "InCrm", "ghost@example.com", "", "", "", "", "", "", "unknown ext id"])
        out.writerow(["C000001", "Bad", "Email", "not-an-email", "", "", "", "", "", "", "bad email"])
        out.writerow(["C000002", "Long", "Title", "", "", "T" * 150, "", "", "", "", "title too long"])
        out.writerow(["C000003", "Bad", "Date", "", "", "", "", "", "31/02/1990", "", "bad date"])
        out.writerow(["C000004", "Dup", "Email", "c5@example.com", "", "", "", "", "", "", "duplicate email"])


def _write_leads(exports: Path, rng: random.Random, lead_ids: list[str]) -> None:
    with (exports / "leads.jsonl").open("wb") as handle:
        for lid in lead_ids:
            handle.write(
                orjson.dumps(
                    {
                        "crm_id": lid,
                        "status": rng.choice(STATUSES),
                        "revenue": round(rng.uniform(1e4, 5e6), 2),
                        "employees": rng.randint(1, 5000),
                    }
                )
                + b"\n"
            )
        handle.write(orjson.dumps({"crm_id": "111111999999999999", "status": "Contacted"}) + b"\n")
        handle.write(orjson.dumps({"crm_id": "not-a-number", "status": "Contacted"}) + b"\n")
        handle.write(b'{"crm_id": "111111000001000001", "status": \n')
        handle.write(orjson.dumps({"crm_id": lead_ids[2], "last_name": None}) + b"\n")
        handle.write(orjson.dumps({"crm_id": lead_ids[3], "employees": "many"}) + b"\n")


def _write_links(
    exports: Path, rng: random.Random, contacts: int, deals: int, old_links: list[tuple[int, int]]
) -> None:
    with (exports / "deal_contacts.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["deal_erp_id", "contact_erp_id", "role_id"])
        for d in range(deals):
            for c in rng.sample(range(contacts), k=min(4, contacts)):
                out.writerow([f"D{d:05d}", f"C{c:06d}", rng.choice(ROLES)])
        out.writerow(["D99999", "C000001", ROLES[0]])  # a deal the CRM does not have

    with (exports / "deal_contacts_removed.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["deal_erp_id", "contact_erp_id"])
        for d, c in old_links:
            out.writerow([f"D{d:05d}", f"C{c:06d}"])
        out.writerow(["D00000", "C999998"])  # never linked: "relation not found"


def _contact_id(i: int) -> str:
    return str(111111000003000000 + i)


def _deal_id(i: int) -> str:
    return str(111111000004000000 + i)


def run_demo(*, workdir: Path, config_file: Path, contacts: int, console: Console, strict: bool = False) -> int:
    """Write the sample, start the sandbox where the config points (``strict``: its real-Zoho profile), sync,
    and report. Returns the exit code."""
    config = load_config(config_file)
    workdir.mkdir(parents=True, exist_ok=True)
    seed_file = write_sample(workdir, contacts=contacts)
    if config.ledger.path.exists():
        config.ledger.path.unlink()  # each demo starts from a clean ledger
    port = int(config.crm.api_domain.rsplit(":", 1)[1])
    options = SandboxOptions(
        port=port,
        data_file=seed_file,
        concurrency=config.crm.concurrency,
        latency_ms=(20.0, 80.0),
        seed=1,
        strict=strict,
    )
    secrets = Secrets(
        client_id=options.client_id,
        client_secret=options.client_secret,
        refresh_token=options.refresh_token,
        access_token=None,
    )
    errors_file = workdir / "errors.csv"

    async def main() -> int:
        async with Sandbox(options) as sandbox:
            profile = ", strict: the real-Zoho profile" if strict else ""
            console.print(f"Sandbox (a Zoho CRM v7 emulator{profile}) at {sandbox.url}, seeded from {seed_file}")
            result = await run_with_progress(config, secrets, RunOptions(), console)
            (workdir / "crm-after.json").write_bytes(sandbox.state.dump_bytes())
        async with SqliteLedger(config.ledger.path) as ledger:
            with errors_file.open("w", newline="", encoding="utf-8") as handle:
                await write_report(ledger, result.summary.run_id, handle, fmt="csv", statuses=ERRORS)
        console.print(f"\nLedger:       {config.ledger.path}")
        console.print(f"Error report: {errors_file}  (fix the source columns and feed it back as a source)")
        console.print(f"CRM after:    {workdir / 'crm-after.json'}")
        console.print(f"Explore:      syncengine report --ledger {config.ledger.path} --errors")
        console.print("              (run `. .venv/bin/activate` first to have `syncengine` on your PATH)")
        return exit_code(result)

    code = anyio.run(main)
    # The demo's bad rows are deliberate: it succeeded if the run completed and its summary adds up.
    return 0 if code in (0, 1) else code
