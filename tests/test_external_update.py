"""Updates by external value under every reading of Zoho's docs: the strategy ladder (``external.py``).

Against the sandbox's strict profile (the bulk form refused: records need an ``id``) and its default one
(the bulk form works), over real sockets, with the real ledger; the CRM's state, the calls by kind and
every record's outcome are checked.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from syncengine.sandbox import Sandbox, SandboxOptions
from syncengine.sandbox.dispatch import Call
from syncengine.sandbox.envelopes import Reply, request_error
from tests.conftest import run, stat, write_config, write_csv
from tests.zoho_readings import Scripted

KNOWN = 230  # contacts the CRM holds, C0 .. C229


def seed(sb: Sandbox, n: int = KNOWN) -> None:
    sb.state.load({"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": f"L{i}"} for i in range(n)]}})


def stream(path: Path, strategy: str | None) -> dict[str, Any]:
    extra = {} if strategy is None else {"external_update": strategy}
    return {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(path)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
        **extra,
    }


def export(path: Path, keys: list[str], tag: str) -> Path:
    return write_csv(path, ["erp_id", "last_name"], [[key, f"{tag}-{key}"] for key in keys])


def names(sb: Sandbox) -> dict[str, str]:
    return {str(r["External_Contact_ID"]): str(r["Last_Name"]) for r in sb.state.records["Contacts"].values()}


async def statuses(tmp_path: Path, run_id: int) -> dict[str, tuple[Status, str]]:
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        return {str(o.key): (o.status, o.code or "") async for o in ledger.outcomes(run_id)}


def fact(tmp_path: Path) -> list[str]:
    with closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
        return [row[0] for row in db.execute("SELECT value FROM org_facts")]


KEYS = [f"C{i}" for i in range(KNOWN)] + ["NOPE1", "NOPE2"]


@pytest.fixture
async def strict() -> Any:
    async with Sandbox(SandboxOptions(strict=True)) as sb:
        yield sb


async def test_auto_switches_to_ids_when_the_bulk_form_is_refused(tmp_path: Path, strict: Sandbox) -> None:
    """Strict Zoho: the first bulk try is refused (records need an id); the stream looks the ids up and every
    known key is SUCCESS, the unknown ones REJECTED as Zoho answers them, nothing twice."""
    seed(strict)
    config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", KEYS, "v1"), None)])
    result = await run(config)
    assert result.summary.succeeded == KNOWN and result.summary.rejected == 2
    got = await statuses(tmp_path, result.run_id)
    assert {k for k, (s, _) in got.items() if s is Status.SUCCESS} == set(KEYS[:KNOWN])
    assert got["NOPE1"] == (Status.REJECTED, "INVALID_DATA")
    assert names(strict) == {f"C{i}": f"v1-C{i}" for i in range(KNOWN)}
    # 1 refused bulk probe + 3 updates by id; lookups: 232 values, 50 per COQL call -> 5.
    assert stat(strict, "calls", "update") == 4
    assert stat(strict, "calls", "coql") == 5
    assert fact(tmp_path) == ["resolve"]

    # The next run knows: no bulk probe, no lookups for known ids (the two unknown values are looked up again).
    config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", KEYS, "v2"), None)])
    before_update, before_coql = stat(strict, "calls", "update"), stat(strict, "calls", "coql")
    second = await run(config)
    assert second.summary.succeeded == KNOWN and second.summary.rejected == 2
    assert stat(strict, "calls", "update") - before_update == 3
    assert stat(strict, "calls", "coql") - before_coql == 1
    assert names(strict)["C7"] == "v2-C7"


async def test_auto_keeps_the_bulk_form_where_it_works(tmp_path: Path, sandbox: Sandbox) -> None:
    seed(sandbox)
    config = write_config(tmp_path / "c.toml", sandbox.url, [stream(export(tmp_path / "c.csv", KEYS, "v1"), None)])
    result = await run(config)
    assert result.summary.succeeded == KNOWN and result.summary.rejected == 2
    assert stat(sandbox, "calls", "update") == 3
    assert "coql" not in sandbox.stats.snapshot()["calls"]  # type: ignore[operator]
    assert fact(tmp_path) == ["bulk"]


async def test_single_is_one_documented_call_per_record(tmp_path: Path, strict: Sandbox) -> None:
    seed(strict, 20)
    keys = [f"C{i}" for i in range(20)] + ["NOPE"]
    config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", keys, "s"), "single")])
    result = await run(config)
    assert result.summary.succeeded == 20 and result.summary.rejected == 1
    assert stat(strict, "calls", "update_one") == 21
    assert names(strict) == {f"C{i}": f"s-C{i}" for i in range(20)}


async def test_a_remembered_id_the_crm_no_longer_knows_is_looked_up_again(tmp_path: Path, strict: Sandbox) -> None:
    """C3 is deleted and created again (a new id) between two runs: its cached id is refused, looked up once
    more, and the update lands on the new record."""
    seed(strict, 10)
    keys = [f"C{i}" for i in range(10)]
    config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", keys, "a"), "resolve")])
    assert (await run(config)).summary.succeeded == 10
    old = next(rid for rid, r in strict.state.records["Contacts"].items() if r["External_Contact_ID"] == "C3")
    strict.state.remove("Contacts", old)
    strict.state.load({"records": {"Contacts": [{"External_Contact_ID": "C3", "Last_Name": "again"}]}})
    config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", keys, "b"), "resolve")])
    second = await run(config)
    assert second.summary.succeeded == 10, await statuses(tmp_path, second.run_id)
    assert names(strict)["C3"] == "b-C3"


async def test_values_a_coql_literal_cannot_carry_go_in_the_single_form(tmp_path: Path, strict: Sandbox) -> None:
    odd = ["O'Brien", "back\\slash"]
    strict.state.load({"records": {"Contacts": [{"External_Contact_ID": k, "Last_Name": "x"} for k in odd]}})
    seed(strict, 5)
    keys = [f"C{i}" for i in range(5)] + odd
    config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", keys, "q"), "resolve")])
    result = await run(config)
    # The strict profile refuses a key carrying an encoded backslash in a path: that record, not the stream.
    got = await statuses(tmp_path, result.run_id)
    assert result.summary.succeeded == 6 and not result.halted, got
    assert got["back\\slash"] == (Status.REJECTED, "BAD_KEY")
    assert stat(strict, "calls", "update_one") == 1  # O'Brien; the refused URL was never routed to an update
    assert names(strict)["O'Brien"] == "q-O'Brien"


async def test_without_the_coql_scope_auto_falls_back_to_single_and_resolve_halts(tmp_path: Path) -> None:
    options = SandboxOptions(strict=True, token_scope="ZohoCRM.modules.ALL,ZohoCRM.settings.ALL")
    async with Sandbox(options) as sb:
        seed(sb, 5)
        keys = [f"C{i}" for i in range(5)]
        config = write_config(tmp_path / "c.toml", sb.url, [stream(export(tmp_path / "c.csv", keys, "n"), None)])
        result = await run(config)
        assert result.summary.succeeded == 5, await statuses(tmp_path, result.run_id)
        assert stat(sb, "calls", "update_one") == 5
        assert fact(tmp_path) == ["single"]

    async with Sandbox(options) as sb:
        seed(sb, 5)
        (tmp_path / "ledger.db").unlink()
        config = write_config(tmp_path / "c.toml", sb.url, [stream(export(tmp_path / "c.csv", keys, "r"), "resolve")])
        halted = await run(config)
        assert halted.halted and halted.summary.succeeded == 0
        assert "COQL" in str(halted.halted) or "coql" in str(halted.halted).lower()


async def test_an_org_that_answered_bulk_before_and_now_wants_ids_is_followed(tmp_path: Path) -> None:
    """The ledger remembers that bulk worked for this org; the org now refuses it (strict): every payload
    refused for a missing id is sent again by id, so the run still ends with every known key SUCCESS."""
    async with Sandbox(SandboxOptions()) as lenient:
        seed(lenient)
        config = write_config(tmp_path / "c.toml", lenient.url, [stream(export(tmp_path / "c.csv", KEYS, "a"), None)])
        assert (await run(config)).summary.succeeded == KNOWN
        assert fact(tmp_path) == ["bulk"]
        port = int(lenient.url.rsplit(":", 1)[1])  # the same host: the same org for the ledger
    async with Sandbox(SandboxOptions(strict=True, port=port)) as strict:
        seed(strict)
        config = write_config(tmp_path / "c.toml", strict.url, [stream(export(tmp_path / "c.csv", KEYS, "b"), None)])
        result = await run(config)
        got = await statuses(tmp_path, result.run_id)
        assert result.summary.succeeded == KNOWN and result.summary.rejected == 2, got
        assert names(strict) == {f"C{i}": f"b-C{i}" for i in range(KNOWN)}
        assert fact(tmp_path) == ["resolve"]
        assert [r.strategy for r in result.external] == ["resolve"]


async def test_a_resolved_payload_refused_whole_is_split_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    """The first update by id is refused as a whole (a 400 a record may cause): nothing of the payload was
    applied yet (the value a COQL literal cannot carry goes last), so the Worker splits it, and every record,
    O'Brien's single-form update included, is applied exactly once."""
    refused: list[int] = []

    def once(call: Call) -> Reply | None:
        if call.route.kind == "update" and not refused:
            refused.append(len(call.data))
            return request_error(400, "INVALID_DATA", "invalid data")
        return None

    async with Scripted(SandboxOptions(strict=True, record_history=True), refuse=once) as sb:
        seed(sb, 6)
        sb.state.load({"records": {"Contacts": [{"External_Contact_ID": "O'Brien", "Last_Name": "x"}]}})
        keys = [f"C{i}" for i in range(6)] + ["O'Brien"]
        config = write_config(tmp_path / "c.toml", sb.url, [stream(export(tmp_path / "c.csv", keys, "s"), "resolve")])
        result = await run(config)
        got = await statuses(tmp_path, result.run_id)
        applied = [h for h in sb.state.history if h.get("module") == "Contacts"]
        assert result.summary.succeeded == 7, got
        assert refused == [6] and stat(sb, "calls", "update_one") == 1
        assert names(sb) == {k: f"s-{k}" for k in keys}
        assert len(applied) == 7, applied  # each record written once
