"""End to end: CSV/JSONL -> batcher -> workers -> the real sandbox over real sockets -> the real ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from syncengine.sandbox import Sandbox, SandboxOptions
from tests.conftest import run, stat, write_config, write_csv, write_jsonl


def seed_contacts(sb: Sandbox, n: int, *, deals: int = 0) -> None:
    sb.state.load(
        {
            "records": {
                "Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": f"L{i}"} for i in range(n)],
                **(
                    {"Deals": [{"External_Deal_ID": f"D{i}", "Deal_Name": f"Deal {i}"} for i in range(deals)]}
                    if deals
                    else {}
                ),
            }
        }
    )


def contacts_stream(path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(path)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name", "Title": "title"},
        **extra,
    }


def leads_stream(path: Path) -> dict[str, Any]:
    return {
        "name": "leads",
        "operation": "update",
        "module": "Leads",
        "source": {"kind": "jsonl", "path": str(path)},
        "match": {"column": "id"},
        "fields": {"Company": "company"},
    }


async def outcomes(config_path: Path, run_id: int) -> list[Any]:
    async with SqliteLedger(config_path.parent / "ledger.db") as ledger:
        return [row async for row in ledger.outcomes(run_id)]


async def test_update_by_external_id_applies_every_row(tmp_path: Path, sandbox: Sandbox) -> None:
    """250 contacts by external ID: three calls, every record updated, one SUCCESS row each."""
    seed_contacts(sandbox, 250)
    src = write_csv(
        tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", f"New{i}", "CFO"] for i in range(250)]
    )
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    result = await run(config)
    s = result.summary
    assert (s.read, s.succeeded, s.pending) == (250, 250, 0) and s.adds_up
    assert result.calls == 3
    record = sandbox.state.find_by_field("Contacts", "External_Contact_ID", "C7")
    assert record is not None and record["Last_Name"] == "New7" and record["Title"] == "CFO"
    rows = await outcomes(config.file, s.run_id)
    assert len(rows) == 250 and all(r.status is Status.SUCCESS and r.crm_id for r in rows)


async def test_update_by_record_id_from_jsonl(tmp_path: Path, sandbox: Sandbox) -> None:
    """Leads by record ID from JSONL; an unknown id is REJECTED with the CRM's code, the rest applied."""
    ids = [str(111111000002000000 + i) for i in range(30)]
    sandbox.state.load({"records": {"Leads": [{"id": i, "Last_Name": "X"} for i in ids]}})
    src = write_jsonl(
        tmp_path / "l.jsonl",
        [{"id": i, "company": f"Co {i}"} for i in ids] + [{"id": "111111000009999999", "company": "ghost"}],
    )
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [leads_stream(src)],
    )
    result = await run(config)
    s = result.summary
    assert (s.succeeded, s.rejected) == (30, 1) and s.adds_up
    assert (sandbox.state.get_record("Leads", ids[3]) or {})["Company"] == f"Co {ids[3]}"
    bad = [r for r in await outcomes(config.file, s.run_id) if r.status is Status.REJECTED]
    assert bad[0].code == "INVALID_DATA" and bad[0].http_status == 207


@pytest.mark.parametrize(
    ("parent_field", "related_field"),
    [
        ("External_Deal_ID", "External_Contact_ID"),
        (None, None),
        (None, "External_Contact_ID"),
        ("External_Deal_ID", None),
    ],
    ids=["both-external", "both-ids", "related-external", "parent-external"],
)
async def test_update_then_delete_related(
    tmp_path: Path, sandbox: Sandbox, parent_field: str | None, related_field: str | None
) -> None:
    """Links with a relation field, then delinks, in every addressing form; the CRM ends as expected."""
    seed_contacts(sandbox, 20, deals=3)
    deal_id = {f"D{i}": sandbox.state.find_id("Deals", "External_Deal_ID", f"D{i}") for i in range(3)}
    contact_id = {f"C{i}": sandbox.state.find_id("Contacts", "External_Contact_ID", f"C{i}") for i in range(20)}

    def parent(d: str) -> str:
        return d if parent_field else str(deal_id[d])

    def related(c: str) -> str:
        return c if related_field else str(contact_id[c])

    links = [(f"D{d}", f"C{c}") for d in range(3) for c in range(d, 20, 2)]
    write_csv(
        tmp_path / "links.csv",
        ["deal", "contact", "role"],
        [[parent(d), related(c), "111111000000026002"] for d, c in links],
    )
    removed = links[::3]
    write_csv(tmp_path / "unlinks.csv", ["deal", "contact"], [[parent(d), related(c)] for d, c in removed])
    common = {
        "module": "Deals",
        "related_list": "Contacts",
        "parent": {"column": "deal", **({"field": parent_field} if parent_field else {})},
        "match": {"column": "contact", **({"field": related_field} if related_field else {})},
    }
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [
            {
                "name": "link",
                "operation": "update_related",
                **common,
                "source": {"kind": "csv", "path": str(tmp_path / "links.csv")},
                "fields": {"Contact_Role": "role"},
            },
        ],
    )
    first = await run(config)
    assert first.summary.succeeded == len(links) and first.summary.adds_up
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [
            {
                "name": "unlink",
                "operation": "delete_related",
                **common,
                "source": {"kind": "csv", "path": str(tmp_path / "unlinks.csv")},
            },
        ],
    )
    second = await run(config)
    assert second.summary.succeeded == len(removed) and second.summary.adds_up
    for d, c in links:
        linked = str(contact_id[c]) in sandbox.state.related("Deals", str(deal_id[d]), "Contacts")
        assert linked == ((d, c) not in removed)


async def test_upsert_inserts_and_updates(tmp_path: Path, sandbox: Sandbox) -> None:
    """Upsert by a duplicate-check field: existing records updated, new ones inserted, ids recorded."""
    sandbox.state.load({"records": {"Leads": [{"Last_Name": "Old", "Email": "a@x.com"}]}})
    src = write_csv(tmp_path / "u.csv", ["email", "name"], [["a@x.com", "A"], ["b@x.com", "B"]])
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [
            {
                "name": "up",
                "operation": "upsert",
                "module": "Leads",
                "source": {"kind": "csv", "path": str(src)},
                "match": {"column": "email", "field": "Email"},
                "duplicate_check_fields": ["Email"],
                "fields": {"Last_Name": "name"},
            }
        ],
    )
    result = await run(config)
    assert result.summary.succeeded == 2
    assert (sandbox.state.find_by_field("Leads", "Email", "a@x.com") or {})["Last_Name"] == "A"
    assert (sandbox.state.find_by_field("Leads", "Email", "b@x.com") or {})["Last_Name"] == "B"


async def test_bad_rows_are_invalid_and_the_run_goes_on(tmp_path: Path, sandbox: Sandbox) -> None:
    """Missing keys and bad values become INVALID outcomes with reasons; good rows still go through."""
    seed_contacts(sandbox, 5)
    src = write_csv(
        tmp_path / "c.csv",
        ["erp_id", "last_name", "title", "age"],
        [["C0", "A", "x", "1"], ["", "B", "x", "2"], ["C1", "C", "x", "old"], ["C2", "D", "x", "3"]],
    )
    stream = contacts_stream(src)
    stream["fields"] = {**stream["fields"], "Description": {"column": "age", "type": "integer"}}
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream])
    result = await run(config)
    s = result.summary
    assert (s.read, s.succeeded, s.invalid) == (4, 2, 2) and s.adds_up
    codes = sorted(r.code for r in await outcomes(config.file, s.run_id) if r.status is Status.INVALID)
    assert codes == ["BAD_VALUE", "MISSING_KEY"]


async def test_request_level_config_error_halts_only_that_stream(tmp_path: Path, sandbox: Sandbox) -> None:
    """INVALID_MODULE stops its stream after one call; other streams finish; every row accounted for."""
    seed_contacts(sandbox, 300)
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", "N", "T"] for i in range(300)])
    bad = contacts_stream(src, name="bad")
    bad["module"] = "Contactz"
    config = write_config(tmp_path / "sync.toml", sandbox.url, [bad, contacts_stream(src)], concurrency=1)
    result = await run(config)
    s = result.summary
    assert s.adds_up and s.succeeded == 300
    assert any("INVALID_MODULE" in h for h in result.halted)
    bad_rows = [r for r in await outcomes(config.file, s.run_id) if r.stream == "bad"]
    assert bad_rows and all(
        r.status is Status.FAILED and r.code in ("INVALID_MODULE", "STREAM_HALTED") for r in bad_rows
    )
    assert sandbox.stats.calls["update"] <= 3 + 1  # 3 good calls, 1 refused


async def test_token_expiry_mid_run_refreshes_once_per_expiry(tmp_path: Path) -> None:
    """Tokens expire during a run with 10 workers: each expiry costs exactly one refresh, nothing lost."""
    async with Sandbox(SandboxOptions(latency_ms=(5, 15))) as sb:
        seed_contacts(sb, 3000)
        src = write_csv(
            tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", f"N{i}", "T"] for i in range(3000)]
        )
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src, batch_size=10)])
        expiries = 0

        async def expire_periodically() -> None:
            nonlocal expiries
            import anyio

            for _ in range(3):
                await anyio.sleep(0.3)
                sb.expire_tokens()
                expiries += 1

        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire_periodically)
            result = await run(config)
        stats = sb.stats.snapshot()
        assert result.summary.succeeded == 3000 and result.summary.adds_up
        assert stats["max_concurrent_refreshes"] == 1
        assert result.refreshes == stat(stats, "refreshes") <= 1 + expiries


@pytest.mark.parametrize(
    "faults",
    [{"throttle_rate": 0.3}, {"error_rate": 0.2}, {"drop_rate": 0.1}, {"lock_rate": 0.1}],
    ids=["429-storm", "5xx", "dropped-connections", "record-locked"],
)
async def test_transient_faults_lose_nothing(tmp_path: Path, faults: dict[str, float]) -> None:
    """Under 429s, 500s, drops and locks every record still ends SUCCESS and the CRM has every value."""
    async with Sandbox(SandboxOptions(seed=3, **faults)) as sb:  # type: ignore[arg-type]
        seed_contacts(sb, 1000)
        src = write_csv(
            tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", f"N{i}", "T"] for i in range(1000)]
        )
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src, batch_size=20)])
        result = await run(config)
        assert result.summary.succeeded == 1000 and result.summary.adds_up
        for i in range(0, 1000, 37):
            assert (sb.state.find_by_field("Contacts", "External_Contact_ID", f"C{i}") or {})["Last_Name"] == f"N{i}"


async def test_concurrency_never_exceeds_the_limit_and_keys_never_overlap(tmp_path: Path) -> None:
    """Repeated keys under load: no 429 from a sandbox with the same limit, no key in two calls at once."""
    async with Sandbox(SandboxOptions(concurrency=4, latency_ms=(1, 5))) as sb:
        seed_contacts(sb, 50)
        rows = [[f"C{i % 50}", f"N{i}", "T"] for i in range(2000)]
        src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name", "title"], rows)
        config = write_config(
            tmp_path / "sync.toml", sb.url, [contacts_stream(src, batch_size=7)], concurrency=4, sub_concurrency=4
        )
        result = await run(config)
        stats = sb.stats.snapshot()
        assert result.summary.succeeded == 2000 and result.summary.adds_up
        assert stat(stats, "max_in_flight") <= 4 and result.throttled == 0
        assert stats["key_overlaps"] == 0
        for k in range(50):  # the last row for each key wins: order per key was kept
            last = max(i for i in range(2000) if i % 50 == k)
            assert (sb.state.find_by_field("Contacts", "External_Contact_ID", f"C{k}") or {})["Last_Name"] == f"N{last}"


async def test_dry_run_sends_nothing_and_writes_requests(tmp_path: Path, sandbox: Sandbox) -> None:
    """--dry-run builds every request, writes them, sends none, and leaves the ledger untouched."""
    seed_contacts(sandbox, 120)
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", "Z", "T"] for i in range(120)])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)])
    out = tmp_path / "requests.jsonl"
    result = await run(config, secrets=None, dry_run_path=out)
    assert result.summary.skipped == 120 and result.calls == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and "Authorization" not in out.read_text()
    assert (sandbox.state.find_by_field("Contacts", "External_Contact_ID", "C0") or {})["Last_Name"] == "L0"
    assert not (tmp_path / "ledger.db").exists()


async def test_missing_parent_rejects_its_records_and_the_stream_goes_on(tmp_path: Path, sandbox: Sandbox) -> None:
    """404 "record does not exist" on a related call rejects that parent's records, not the stream."""
    seed_contacts(sandbox, 4, deals=1)
    deal = sandbox.state.find_id("Deals", "External_Deal_ID", "D0")
    contacts = [sandbox.state.find_id("Contacts", "External_Contact_ID", f"C{i}") for i in range(4)]
    src = write_csv(
        tmp_path / "l.csv",
        ["deal", "contact"],
        [[deal, contacts[0]], ["111111000009999999", contacts[1]], [deal, contacts[2]]],
    )
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [
            {
                "name": "link",
                "operation": "update_related",
                "module": "Deals",
                "related_list": "Contacts",
                "parent": {"column": "deal"},
                "match": {"column": "contact"},
                "source": {"kind": "csv", "path": str(src)},
            }
        ],
    )
    result = await run(config)
    s = result.summary
    assert (s.succeeded, s.rejected) == (2, 1) and s.adds_up and not result.halted
    bad = next(r for r in await outcomes(config.file, s.run_id) if r.status is Status.REJECTED)
    assert (bad.http_status, bad.code) == (404, "INVALID_DATA")


async def test_all_records_refused_is_400_with_data(tmp_path: Path, sandbox: Sandbox) -> None:
    """400 with data[] (every record failed) gives each record its own code, not a request-level error."""
    src = write_jsonl(tmp_path / "l.jsonl", [{"id": str(111111000008000000 + i), "company": "X"} for i in range(3)])
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [leads_stream(src)],
    )
    result = await run(config)
    rows = await outcomes(config.file, result.summary.run_id)
    assert [(r.status, r.code, r.http_status) for r in rows] == [(Status.REJECTED, "INVALID_DATA", 400)] * 3


@pytest.mark.parametrize(
    ("options", "secrets_token", "code"),
    [
        ({"no_permission_modules": ("Contacts",)}, None, "NO_PERMISSION"),
        ({"scoped_tokens": (("narrow-token", "ZohoCRM.modules.Leads.READ"),)}, "narrow-token", "OAUTH_SCOPE_MISMATCH"),
    ],
    ids=["403-no-permission", "401-scope-mismatch"],
)
async def test_config_level_refusal_halts_after_one_call(
    tmp_path: Path, options: dict[str, Any], secrets_token: str | None, code: str
) -> None:
    """A refusal no retry can fix stops the stream at once instead of burning credits on every payload."""
    from syncengine.config import Secrets

    async with Sandbox(SandboxOptions(**options)) as sb:
        seed_contacts(sb, 500)
        src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", "N", "T"] for i in range(500)])
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)], concurrency=1)
        secrets = Secrets(client_id=None, client_secret=None, refresh_token=None, access_token=secrets_token)
        result = await (run(config, secrets=secrets) if secrets_token else run(config))
        s = result.summary
        assert s.adds_up and s.succeeded == 0 and result.calls <= 2
        assert result.halted and code in result.halted[0]
        rows = await outcomes(config.file, s.run_id)
        assert rows and all(r.status is Status.FAILED for r in rows)


async def test_delink_retried_after_an_applied_drop_is_success(tmp_path: Path) -> None:
    """Drops after the delink was applied make the retry find "relation not found": recorded as SUCCESS."""
    async with Sandbox(SandboxOptions(seed=5, drop_rate=0.5)) as sb:
        seed_contacts(sb, 40, deals=1)
        deal = str(sb.state.find_id("Deals", "External_Deal_ID", "D0"))
        contacts = [str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{i}")) for i in range(40)]
        sb.state.load(
            {
                "relations": [
                    {"module": "Deals", "id": deal, "related_list": "Contacts", "related_id": c} for c in contacts
                ]
            }
        )
        src = write_csv(tmp_path / "u.csv", ["deal", "contact"], [[deal, c] for c in contacts])
        config = write_config(
            tmp_path / "sync.toml",
            sb.url,
            [
                {
                    "name": "unlink",
                    "operation": "delete_related",
                    "module": "Deals",
                    "related_list": "Contacts",
                    "parent": {"column": "deal"},
                    "match": {"column": "contact"},
                    "source": {"kind": "csv", "path": str(src)},
                    "batch_size": 5,
                }
            ],
        )
        result = await run(config)
        assert result.summary.succeeded == 40 and result.summary.adds_up
        assert sb.state.related("Deals", deal, "Contacts") == {}
        assert stat(sb, "drops_after") > 0
        notes = [r.note for r in await outcomes(config.file, result.summary.run_id) if r.note]
        assert notes and all("ambiguous retry" in n for n in notes)


async def test_spent_credits_pause_the_run_with_the_rest_pending(tmp_path: Path) -> None:
    """When every call gets 429 (credits gone) the run pauses, says so, and leaves the rest pending."""
    async with Sandbox(SandboxOptions(credits=3)) as sb:
        seed_contacts(sb, 1000)
        src = write_csv(
            tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", "N", "T"] for i in range(1000)]
        )
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src)], concurrency=1)
        result = await run(config)
        s = result.summary
        assert s.state == "paused" and result.stopped and "credits" in result.stopped
        assert s.adds_up and s.succeeded == 100 and s.pending == s.read - 100 and s.failed == 0


async def test_credit_budget_is_never_exceeded(tmp_path: Path, sandbox: Sandbox) -> None:
    """A configured credit budget stops the run at the budget, the rest pending."""
    seed_contacts(sandbox, 1000)
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", "N", "T"] for i in range(1000)])
    config = write_config(tmp_path / "sync.toml", sandbox.url, [contacts_stream(src)], credit_budget=25)
    result = await run(config)
    assert stat(sandbox, "credits_used") <= 25
    assert result.summary.state == "paused" and result.summary.succeeded == 200 and result.summary.adds_up


async def test_unknown_external_parent_is_one_call_not_a_bisection(tmp_path: Path, sandbox: Sandbox) -> None:
    """A related call refused for its parent is not split record by record: one call, every record rejected."""
    seed_contacts(sandbox, 50)
    src = write_csv(tmp_path / "l.csv", ["deal", "contact"], [["NO-SUCH-DEAL", f"C{i}"] for i in range(50)])
    config = write_config(
        tmp_path / "sync.toml",
        sandbox.url,
        [
            {
                "name": "link",
                "operation": "update_related",
                "module": "Deals",
                "related_list": "Contacts",
                "parent": {"column": "deal", "field": "External_Deal_ID"},
                "match": {"column": "contact", "field": "External_Contact_ID"},
                "source": {"kind": "csv", "path": str(src)},
            }
        ],
    )
    result = await run(config)
    assert result.calls == 1 and result.summary.rejected == 50 and result.summary.adds_up


async def test_an_outage_stops_the_run_instead_of_failing_every_record(tmp_path: Path) -> None:
    """Call after call giving up means the CRM is down: the run pauses with the rest pending and resumable."""
    from syncengine.workers import RetryPolicy

    async with Sandbox(SandboxOptions(error_rate=1.0)) as sb:
        seed_contacts(sb, 2000)
        src = write_csv(
            tmp_path / "c.csv", ["erp_id", "last_name", "title"], [[f"C{i}", "N", "T"] for i in range(2000)]
        )
        config = write_config(tmp_path / "sync.toml", sb.url, [contacts_stream(src, batch_size=10)], concurrency=2)
        policy = RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.002, outage_give_ups=4)
        result = await run(config, policy=policy)
        s = result.summary
        assert s.state == "paused" and result.stopped and "unavailable" in result.stopped and not result.fatal
        assert s.adds_up and s.failed <= 10 * 5 and s.pending == s.read - s.failed  # not every record FAILED
