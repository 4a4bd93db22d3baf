"""Bad input end to end: every kind of broken row, file, key, value and ledger, through the pipeline and the CLI.

Promise 1 under bad input: every change read gets exactly one outcome (INVALID before sending, REJECTED by the
CRM), the good rows around the bad ones still go through, the summary adds up, and a ledger that cannot be
written stops the run with a clear message and loses nothing it had committed. Reader- and config-level cases
live in tests/readers/ and tests/test_config.py; these run whole syncs.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from syncengine.config import load_config
from syncengine.ledger import SqliteLedger
from syncengine.model import Status
from syncengine.sandbox import Sandbox
from tests.conftest import run, write_config, write_csv

REPO = Path(__file__).resolve().parents[1]
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ZOHO_")}
CREDENTIALS = {
    "ZOHO_CLIENT_ID": "sandbox-client-id",
    "ZOHO_CLIENT_SECRET": "sandbox-client-secret",
    "ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
}
LONG_TITLE = "T" * 101  # Contacts.Title holds 100 characters in the sandbox's schema


async def ledger_rows(ledger: Path, run_id: int) -> list[Any]:
    async with SqliteLedger(ledger) as opened:
        return [row async for row in opened.outcomes(run_id)]


def by_position(rows: list[Any]) -> dict[tuple[str, int], Any]:
    positions = {(r.stream, r.seq): r for r in rows}
    assert len(positions) == len(rows), "two outcome rows for one change"
    return positions


# --------------------------------------------------------------------------------------------------
# One run, every kind of bad row at once

# The contacts CSV: a BOM, an unknown column (shoe_size), and a bad row of every kind between good ones.
# seq -> (row bytes, expected (status, code)); seq counts data records (the header is not one).
CONTACT_ROWS: list[tuple[bytes, Status, str]] = [
    (b"C0,Ada,CFO,ada@example.com,41,44", Status.SUCCESS, "SUCCESS"),
    (b"C1,Bob,CTO,bob@example.com,42,45,surplus", Status.INVALID, "BAD_ROW"),  # ragged: one cell too many
    (b"C2,Cy", Status.INVALID, "BAD_ROW"),  # ragged: too few
    (b'C3,"Dee"x,CEO,dee@example.com,1,2', Status.INVALID, "BAD_ROW"),  # bad quoting
    (b"C4,Z\xe9ta,COO,zeta@example.com,1,2", Status.INVALID, "BAD_ROW"),  # latin-1 byte in a UTF-8 file
    (b",Nokey,VP,nokey@example.com,1,2", Status.INVALID, "MISSING_KEY"),
    (b"   ,Blank,VP,blank@example.com,1,2", Status.INVALID, "MISSING_KEY"),  # a key of spaces is no key
    (b"C5,First,VP,first@example.com,1,2", Status.SUCCESS, "SUCCESS"),  # C5 again below: the last wins
    (b"C6,Long," + LONG_TITLE.encode() + b",long@example.com,1,2", Status.REJECTED, "INVALID_DATA"),  # too long
    (b"C7,Old,VP,old@example.com,very old,2", Status.INVALID, "BAD_VALUE"),  # not an integer
    (b"C8,Mail,VP,not-an-email,1,2", Status.REJECTED, "INVALID_DATA"),  # the CRM's type check
    (b"C9,Dup,VP,taken@example.com,1,2", Status.REJECTED, "DUPLICATE_DATA"),  # Email is unique: C10 has it
    (b"C404,Ghost,VP,ghost@example.com,1,2", Status.REJECTED, "INVALID_DATA"),  # no such external ID
    (b"C5,Second,SVP,second@example.com,1,2", Status.SUCCESS, "SUCCESS"),
    (b"C11,Eve,CMO,eve@example.com,7,39", Status.SUCCESS, "SUCCESS"),
    (b'C12,"Multi\nLine",CIO,multi@example.com,3,40', Status.SUCCESS, "SUCCESS"),  # a quoted cell spans lines
]

# The leads JSONL, by record id. Blank lines are skipped but still counted in seq (the line number).
L = [str(111111000003000000 + i) for i in range(8)]
LEAD_LINES: list[tuple[bytes, Status | None, str | None]] = [
    (b'\xef\xbb\xbf{"id": "' + L[0].encode() + b'", "company": "Acme"}', Status.SUCCESS, "SUCCESS"),
    (b'{"id": "' + L[1].encode() + b'", "company": "Beta", "revenue": "lots"}', Status.INVALID, "BAD_VALUE"),
    (b"not json at all", Status.INVALID, "BAD_ROW"),
    (b"[1, 2, 3]", Status.INVALID, "BAD_ROW"),
    (b"null", Status.INVALID, "BAD_ROW"),
    (b"", None, None),  # blank: no change
    (b'{"company": "NoKey"}', Status.INVALID, "MISSING_KEY"),
    (b'{"id": "", "company": "EmptyKey"}', Status.INVALID, "MISSING_KEY"),
    (b'{"id": null, "company": "NullKey"}', Status.INVALID, "MISSING_KEY"),
    (b'{"id": {"x": 1}, "company": "ObjectKey"}', Status.INVALID, "BAD_KEY"),
    (b'{"id": true, "company": "BoolKey"}', Status.INVALID, "BAD_KEY"),
    (b'{"id": 1.5, "company": "FloatKey"}', Status.INVALID, "BAD_KEY"),
    (b'{"id": "abc", "company": "NotAnId"}', Status.INVALID, "BAD_KEY"),  # record ids are all digits
    (b'{"id": "' + L[2].encode() + b'", "last_name": null}', Status.REJECTED, "MANDATORY_NOT_FOUND"),
    (b'{"id": "' + L[3].encode() + b'", "opt_out": "maybe"}', Status.REJECTED, "INVALID_DATA"),  # not a boolean
    (b'{"id": "' + L[4].encode() + b'", "company": "Caf\xe9"}', Status.INVALID, "BAD_ROW"),  # not UTF-8
    (
        b'{"id": "' + L[5].encode() + b'", "company": "Five", "unmapped": 1, "nested": {"a": [1]}}',
        Status.SUCCESS,
        "SUCCESS",
    ),
    (b'{"id": 111111000009999999, "company": "ghost"}', Status.REJECTED, "INVALID_DATA"),  # an int id, unknown
    (b'{"id": "' + L[6].encode() + b'", "company": "Six", "revenue": 12.5}', Status.SUCCESS, "SUCCESS"),
    (b'{"id": "' + L[7].encode() + b'", "company": ', Status.INVALID, "BAD_ROW"),  # truncated line
]


def _seed(sb: Sandbox) -> dict[str, str]:
    sb.state.load(
        {
            "records": {
                "Contacts": [
                    *({"External_Contact_ID": f"C{i}", "Last_Name": f"L{i}", "Title": "Old"} for i in range(10)),
                    {"External_Contact_ID": "C10", "Last_Name": "Holder", "Email": "taken@example.com"},
                    {"External_Contact_ID": "C11", "Last_Name": "L11"},
                    {"External_Contact_ID": "C12", "Last_Name": "L12"},
                ],
                "Leads": [{"id": i, "Last_Name": "Lead", "Company": "Old"} for i in L],
                "Deals": [{"External_Deal_ID": f"D{i}", "Deal_Name": f"Deal {i}"} for i in range(2)],
            }
        }
    )
    ids = {f"C{i}": str(sb.state.find_id("Contacts", "External_Contact_ID", f"C{i}")) for i in range(13)}
    ids |= {f"D{i}": str(sb.state.find_id("Deals", "External_Deal_ID", f"D{i}")) for i in range(2)}
    return ids


def _streams(
    tmp_path: Path, ids: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], tuple[Status, str]]]:
    """Write every source; return the streams and the expected (status, code) per (stream, seq)."""
    expected: dict[tuple[str, int], tuple[Status, str]] = {}

    contacts = tmp_path / "contacts.csv"
    lines = [b"\xef\xbb\xbferp_id,last_name,title,email,age,shoe_size"] + [row for row, _, _ in CONTACT_ROWS]
    contacts.write_bytes(b"\r\n".join(lines) + b"\r\n")
    expected |= {("contacts", seq): (st, code) for seq, (_, st, code) in enumerate(CONTACT_ROWS, start=1)}

    leads = tmp_path / "leads.jsonl"
    leads.write_bytes(b"\n".join(line for line, _, _ in LEAD_LINES) + b"\n")
    expected |= {("leads", seq): (st, code) for seq, (_, st, code) in enumerate(LEAD_LINES, start=1) if st and code}

    # Related records by record id: one parent that does not exist (404), one row with no parent at all.
    missing_deal = "111111000009999998"
    by_id = write_csv(
        tmp_path / "links_by_id.csv",
        ["deal", "contact", "role"],
        [[ids["D0"], ids["C0"], "111111000000026002"], [missing_deal, ids["C1"], ""], [ids["D0"], ids["C2"], ""],
         ["", ids["C3"], ""]],
    )  # fmt: skip
    expected |= {
        ("links_by_id", 1): (Status.SUCCESS, "SUCCESS"),
        ("links_by_id", 2): (Status.REJECTED, "INVALID_DATA"),
        ("links_by_id", 3): (Status.SUCCESS, "SUCCESS"),
        ("links_by_id", 4): (Status.INVALID, "MISSING_PARENT"),
    }
    # ... and by external IDs: an unknown parent is a whole-call 400, only its own records rejected.
    by_ext = tmp_path / "links_by_ext.jsonl"
    by_ext.write_bytes(
        b"".join(
            orjson.dumps(row) + b"\n"
            for row in [
                {"deal": "D1", "contact": "C5"},
                {"deal": "NO-SUCH-DEAL", "contact": "C6"},
                {"deal": "NO-SUCH-DEAL", "contact": "C7"},
                {"deal": "D1", "contact": "C8"},
            ]
        )
    )
    expected |= {
        ("links_by_ext", 1): (Status.SUCCESS, "SUCCESS"),
        ("links_by_ext", 2): (Status.REJECTED, "INVALID_DATA"),
        ("links_by_ext", 3): (Status.REJECTED, "INVALID_DATA"),
        ("links_by_ext", 4): (Status.SUCCESS, "SUCCESS"),
    }

    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header_only.csv").write_bytes(b"\xef\xbb\xbferp_id,last_name\r\n")
    (tmp_path / "blank.jsonl").write_bytes(b"\n\n   \n")
    # A whole file in the wrong encoding: its header cannot be read, so the stream stops; the others go on.
    (tmp_path / "utf16.csv").write_bytes("erp_id,last_name\r\nC0,Wrong\r\n".encode("utf-16"))

    def contacts_like(name: str, path: Path) -> dict[str, Any]:
        return {
            "name": name,
            "operation": "update",
            "module": "Contacts",
            "source": {"kind": "csv", "path": str(path)},
            "match": {"column": "erp_id", "field": "External_Contact_ID"},
            "fields": {"Last_Name": "last_name"},
        }

    related = {"operation": "update_related", "module": "Deals", "related_list": "Contacts"}
    streams = [
        {
            **contacts_like("contacts", contacts),
            "fields": {
                "Last_Name": "last_name",
                "Title": "title",
                "Email": "email",
                "Description": {"column": "age", "type": "integer"},
            },
            "batch_size": 5,
        },
        {
            "name": "leads",
            "operation": "update",
            "module": "Leads",
            "source": {"kind": "jsonl", "path": str(leads)},
            "match": {"column": "id"},
            "fields": {
                "Company": "company",
                "Last_Name": "last_name",
                "Annual_Revenue": {"column": "revenue", "type": "float"},
                "Email_Opt_Out": "opt_out",
            },
        },
        {
            "name": "links_by_id",
            **related,
            "source": {"kind": "csv", "path": str(by_id)},
            "parent": {"column": "deal"},
            "match": {"column": "contact"},
            "fields": {"Contact_Role": "role"},
        },
        {
            "name": "links_by_ext",
            **related,
            "source": {"kind": "jsonl", "path": str(by_ext)},
            "parent": {"column": "deal", "field": "External_Deal_ID"},
            "match": {"column": "contact", "field": "External_Contact_ID"},
        },
        contacts_like("empty", tmp_path / "empty.csv"),
        contacts_like("header_only", tmp_path / "header_only.csv"),
        {**contacts_like("blank", tmp_path / "blank.jsonl"), "source": {"kind": "jsonl", "path": "blank.jsonl"}},
        contacts_like("utf16", tmp_path / "utf16.csv"),
    ]
    return streams, expected


async def test_every_kind_of_bad_input_in_one_run(tmp_path: Path, sandbox: Sandbox) -> None:
    """Eight streams full of bad rows: each change gets its one outcome, good rows go through, nothing is lost."""
    ids = _seed(sandbox)
    streams, expected = _streams(tmp_path, ids)
    config = write_config(tmp_path / "sync.toml", sandbox.url, streams)
    result = await run(config)
    s = result.summary

    rows = await ledger_rows(config.ledger.path, s.run_id)
    got = {pos: (r.status, r.code) for pos, r in by_position(rows).items()}
    assert got == expected
    # Nothing lost: as many ledger rows as records in the sources, and the summary says the same and adds up.
    assert len(rows) == s.read == len(expected) and s.pending == 0 and s.adds_up
    assert (s.succeeded, s.rejected, s.invalid, s.failed) == (
        sum(st is Status.SUCCESS for st, _ in expected.values()),
        sum(st is Status.REJECTED for st, _ in expected.values()),
        sum(st is Status.INVALID for st, _ in expected.values()),
        0,
    )
    counts = {c.stream: c for c in s.per_stream}
    assert all(counts[name].read == 0 and counts[name].adds_up for name in ("empty", "header_only", "blank", "utf16"))
    # The unreadable file stops its own stream only, saying which file and why.
    assert s.state == "halted" and len(result.halted) == 1
    assert result.halted[0].startswith(f"utf16: SOURCE_ERROR: {tmp_path / 'utf16.csv'}: ")

    at = by_position(rows)
    # Every refusal says why, and INVALID rows keep the row so it can be fixed and fed back.
    assert all(r.message for r in rows if r.status is not Status.SUCCESS)
    assert at["contacts", 2].message == "row has 7 cells, header has 6"
    assert at["contacts", 2].source_row == {"_raw": "C1,Bob,CTO,bob@example.com,42,45,surplus"}
    assert "quoting" in at["contacts", 4].message
    assert "0xe9" in at["contacts", 5].message and "utf-8" in at["contacts", 5].message
    assert "'age'" in at["contacts", 10].message and "'very old'" in at["contacts", 10].message
    assert at["leads", 2].source_row == {"id": L[1], "company": "Beta", "revenue": "lots"}
    # The CRM's refusals carry its code and details: the length limit, the type, the duplicate, the 404.
    assert at["contacts", 9].details["maximum_length"] == 100 and at["contacts", 9].details["api_name"] == "Title"
    assert at["contacts", 11].details["expected_data_type"] == "email"
    assert at["contacts", 12].details["duplicate_record"]["id"] == ids["C10"]
    assert at["leads", 14].details["api_name"] == "Last_Name"
    assert at["leads", 15].details["expected_data_type"] == "boolean"
    assert at["links_by_id", 2].http_status == 404
    assert at["links_by_ext", 2].http_status == 400
    # Unknown columns are not sent, but the ledger keeps them with the row.
    assert at["contacts", 15].source_row["shoe_size"] == "39"
    assert at["leads", 17].source_row["nested"] == {"a": [1]} and at["leads", 17].source_row["unmapped"] == 1

    contact = {c: sandbox.state.get_record("Contacts", ids[c]) or {} for c in ids if c.startswith("C")}
    assert (contact["C0"]["Last_Name"], contact["C0"]["Title"], contact["C0"]["Description"]) == ("Ada", "CFO", "41")
    assert "shoe_size" not in contact["C11"] and contact["C11"]["Last_Name"] == "Eve"
    assert contact["C12"]["Last_Name"] == "Multi\nLine"
    assert contact["C5"]["Last_Name"] == "Second" and contact["C5"]["Title"] == "SVP"  # the last change won
    assert [contact[c]["Title"] for c in ("C1", "C2", "C3", "C4", "C6", "C7", "C8", "C9")] == ["Old"] * 8
    assert contact["C10"]["Email"] == "taken@example.com"
    lead = {i: sandbox.state.get_record("Leads", i) or {} for i in L}
    assert lead[L[0]]["Company"] == "Acme" and lead[L[6]]["Annual_Revenue"] == 12.5
    assert [lead[L[i]]["Company"] for i in (1, 2, 3, 4, 7)] == ["Old"] * 5
    assert lead[L[2]]["Last_Name"] == "Lead"  # the null was refused, not applied
    assert sandbox.state.is_linked("Deals", ids["D0"], "Contacts", ids["C0"])
    assert sandbox.state.is_linked("Deals", ids["D1"], "Contacts", ids["C8"])
    assert not sandbox.state.is_linked("Deals", ids["D1"], "Contacts", ids["C6"])


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
async def test_a_file_in_the_wrong_encoding_is_called_that(tmp_path: Path, sandbox: Sandbox, newline: str) -> None:
    """A UTF-16 export read as UTF-8 stops its stream with a message that names the encoding, whatever its newlines."""
    (tmp_path / "utf16.csv").write_bytes(newline.join(["erp_id,last_name", "C0,Wrong", ""]).encode("utf-16"))
    stream = {
        "name": "utf16",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": "utf16.csv"},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
    }
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream])
    result = await run(config)
    assert result.summary.read == 0 and result.summary.adds_up and result.calls == 0
    assert len(result.halted) == 1 and "utf16.csv" in result.halted[0]
    assert "not valid utf-8" in result.halted[0], result.halted[0]


async def test_duplicate_keys_each_get_an_outcome_and_the_last_wins(tmp_path: Path, sandbox: Sandbox) -> None:
    """One key four times in a file, coalesced or sequenced: four outcomes, and the CRM holds the last values."""
    sandbox.state.load({"records": {"Contacts": [{"External_Contact_ID": "K", "Last_Name": "Before"}]}})
    rows = [["K", "One", "T1"], ["K", "Two", ""], ["X", "Other", "T"], ["K", "Three", ""], ["K", "Four", "T4"]]
    src = write_csv(tmp_path / "dups.csv", ["erp_id", "last_name", "title"], rows)
    stream = {
        "name": "dups",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(src)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name", "Title": "title"},
    }
    config = write_config(tmp_path / "sync.toml", sandbox.url, [stream])
    result = await run(config)
    outcomes = by_position(await ledger_rows(config.ledger.path, result.summary.run_id))
    assert [(seq, outcomes["dups", seq].status) for seq in (1, 2, 4, 5)] == [(n, Status.SUCCESS) for n in (1, 2, 4, 5)]
    assert outcomes["dups", 3].code == "INVALID_DATA"  # X is not in the CRM
    assert result.summary.read == 5 and result.summary.adds_up
    record = sandbox.state.find_by_field("Contacts", "External_Contact_ID", "K") or {}
    assert (record["Last_Name"], record["Title"]) == ("Four", "T4")


async def test_empty_sources_read_nothing_and_the_run_completes(tmp_path: Path, sandbox: Sandbox) -> None:
    """An empty file, a header alone, a BOM alone and blank JSONL lines: 0 read, run completed, no call made."""
    sources = {
        "empty.csv": b"",
        "header.csv": b"erp_id,last_name\n",
        "bom.csv": b"\xef\xbb\xbf",
        "blank.jsonl": b"\n \n",
        "empty.jsonl": b"",
    }
    streams: list[dict[str, Any]] = []
    for name, content in sources.items():
        (tmp_path / name).write_bytes(content)
        streams.append(
            {
                "name": name.replace(".", "_"),
                "operation": "update",
                "module": "Contacts",
                "source": {"kind": name.rsplit(".", 1)[1], "path": name},
                "match": {"column": "erp_id", "field": "External_Contact_ID"},
                "fields": {"Last_Name": "last_name"},
            }
        )
    config = write_config(tmp_path / "sync.toml", sandbox.url, streams)
    result = await run(config)
    s = result.summary
    assert (s.state, s.read, s.pending, result.calls) == ("completed", 0, 0, 0) and s.adds_up
    assert sorted(c.stream for c in s.per_stream) == sorted(st["name"] for st in streams)
    assert await ledger_rows(config.ledger.path, s.run_id) == []


# --------------------------------------------------------------------------------------------------
# Through the CLI: a broken config, a ledger that cannot be written


async def cli(*args: object, cwd: Path, preexec_fn: Callable[[], None] | None = None) -> tuple[int, str, str]:
    """The CLI in a subprocess, waited for in a thread so the in-process sandbox keeps serving."""
    command = [sys.executable, "-m", "syncengine", *map(str, args)]
    env = {**BASE_ENV, **CREDENTIALS}
    run = functools.partial(
        subprocess.run, command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    done = await anyio.to_thread.run_sync(functools.partial(run, preexec_fn=preexec_fn))
    return done.returncode, done.stdout, done.stderr


def contacts_config(tmp_path: Path, url: str, rows: int, *, ledger: str = "ledger.db", **extra: Any) -> Path:
    src = write_csv(tmp_path / "c.csv", ["erp_id", "last_name"], [[f"C{i}", f"New{i}-{'x' * 40}"] for i in range(rows)])
    stream = {
        "name": "contacts",
        "operation": "update",
        "module": "Contacts",
        "source": {"kind": "csv", "path": str(src)},
        "match": {"column": "erp_id", "field": "External_Contact_ID"},
        "fields": {"Last_Name": "last_name"},
        **extra,
    }
    path = tmp_path / "sync.toml"
    write_config(path, url, [stream])
    path.write_text(path.read_text().replace('path = "ledger.db"', f'path = "{ledger}"'))
    return path


def test_a_config_with_many_mistakes_reports_them_one_at_a_time(tmp_path: Path) -> None:
    """A config wrong in four places exits 2 naming the first (file, key path, expectation); fix it, the next."""
    (tmp_path / "c.csv").write_text("erp_id,last_name\nC0,A\n")
    mistakes = [
        ("concurrency = 99", "concurrency = 5", "crm.concurrency: an integer from 1 to 25, got 99"),
        ('path = ["ledger.db"]', 'path = "ledger.db"', "ledger.path: a non-empty string naming a file"),
        ('operation = "updat"', 'operation = "update"', "streams[0] (contacts).operation: one of 'update'"),
        (
            'match = { colum = "erp_id" }',
            'match = { column = "erp_id" }',
            "streams[1] (leads).match.colum: unknown key 'colum'",
        ),
    ]
    text = "\n".join(
        [
            '[crm]\napi_domain = "http://127.0.0.1:9"\naccounts_url = "http://127.0.0.1:9"\nconcurrency = 99',
            '[ledger]\npath = ["ledger.db"]',
            '[[streams]]\nname = "contacts"\noperation = "updat"\nmodule = "Contacts"',
            'source = { kind = "csv", path = "c.csv" }\nmatch = { column = "erp_id", field = "External_Contact_ID" }',
            'fields = { Last_Name = "last_name" }',
            '[[streams]]\nname = "leads"\noperation = "update"\nmodule = "Leads"',
            'source = { kind = "csv", path = "c.csv" }\nmatch = { colum = "erp_id" }\nfields = { Last_Name = "x" }',
        ]
    )
    config = tmp_path / "sync.toml"
    for wrong, right, message in mistakes:
        config.write_text(text)
        done = subprocess.run(
            [sys.executable, "-m", "syncengine", "run", "sync.toml"],
            cwd=tmp_path,
            env={**BASE_ENV, **CREDENTIALS},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"syncengine: sync.toml: {message}"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr  # the first mistake, one line
        assert not (tmp_path / "ledger.db").exists()
        text = text.replace(wrong, right, 1)
    config.write_text(text)  # every mistake fixed: it loads
    assert [s.name for s in load_config(config).streams] == ["contacts", "leads"]


def without_file_permission_override(command: list[str]) -> list[str]:
    """``command`` run so that file permissions apply even though the tests run as root."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod does not stop root's writes")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]


async def test_a_read_only_ledger_exits_2_naming_it(tmp_path: Path, sandbox: Sandbox) -> None:
    """A ledger that cannot be written stops the run before anything is sent: exit 2, the path and the reason."""
    sandbox.state.load({"records": {"Contacts": [{"External_Contact_ID": "C0", "Last_Name": "L"}]}})
    contacts_config(tmp_path, sandbox.url, 3, ledger="ro/ledger.db")
    ledger = tmp_path / "ro" / "ledger.db"
    async with SqliteLedger(ledger):
        pass
    ledger.chmod(0o444)
    ledger.parent.chmod(0o555)
    try:
        command = without_file_permission_override([sys.executable, "-m", "syncengine", "run", "sync.toml"])
        done = await anyio.run_process(
            command, cwd=tmp_path, env={**BASE_ENV, **CREDENTIALS, "PYTHONPATH": str(REPO)}, check=False
        )
    finally:
        ledger.parent.chmod(0o755)
        ledger.chmod(0o644)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 2, out + err
    assert "Traceback" not in out + err
    assert str(ledger) in out + err and ("readonly" in out + err or "not writable" in out + err)
    assert sandbox.stats.snapshot()["calls_total"] == 0


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holding the ledger's write lock."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


# The CLI as `syncengine` runs it, with the ledger's lock wait shortened from 10 s so the test stays quick.
SHORT_BUSY_CLI = (
    "import sys\n"
    "from syncengine.ledger.sqlite import SqliteLedger\n"
    "SqliteLedger.__init__.__kwdefaults__['busy_timeout'] = 0.5\n"
    "from syncengine.cli import main\n"
    "main(sys.argv[1:])\n"
)


async def test_a_locked_ledger_exits_2_naming_it(tmp_path: Path, sandbox: Sandbox) -> None:
    """Another process holding the ledger's lock: the run waits, then exits 2 saying so; nothing is sent."""
    contacts_config(tmp_path, sandbox.url, 3)
    async with SqliteLedger(tmp_path / "ledger.db"):
        pass
    with write_locked(tmp_path / "ledger.db"):
        done = await anyio.run_process(
            [sys.executable, "-c", SHORT_BUSY_CLI, "run", "sync.toml"],
            cwd=tmp_path,
            env={**BASE_ENV, **CREDENTIALS, "PYTHONPATH": str(REPO)},
            check=False,
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 2, out + err
    assert "Traceback" not in out + err
    assert str(tmp_path / "ledger.db") in out + err and "locked" in out + err
    assert sandbox.stats.snapshot()["calls_total"] == 0


def _fill_the_disk_at(limit: int) -> None:
    """In the child: no file may grow past ``limit`` bytes, as if the disk were full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


async def test_a_full_disk_stops_the_run_and_resume_finishes_it(tmp_path: Path, sandbox: Sandbox) -> None:
    """The ledger cannot grow mid-run: exit 2 naming it, committed outcomes kept, and --resume finishes the run."""
    n = 5000
    sandbox.state.load(
        {"records": {"Contacts": [{"External_Contact_ID": f"C{i}", "Last_Name": "L"} for i in range(n)]}}
    )
    # The same disk-full run in three fresh directories: how the run dies depends on which tasks are mid-send.
    full = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        contacts_config(tmp_path / name, sandbox.url, n, batch_size=10)
        ledger = tmp_path / name / "ledger.db"
        async with SqliteLedger(ledger):
            pass
        limit = ledger.stat().st_size + 640 * 1024  # room for the first batches of outcomes, not for all

        def disk_full(limit: int = limit) -> None:
            _fill_the_disk_at(limit)

        full.append((ledger, await cli("run", "sync.toml", cwd=tmp_path / name, preexec_fn=disk_full)))

    ledger = full[0][0]
    before = by_position(await ledger_rows(ledger, 1))
    assert 0 < len(before) < n
    assert all(r.status is Status.SUCCESS for r in before.values())
    for (_, seq), row in before.items():  # what the ledger says was applied, was
        record = sandbox.state.find_by_field("Contacts", "External_Contact_ID", row.key) or {}
        assert record["Last_Name"] == f"New{seq - 1}-{'x' * 40}"

    code, out, err = await cli("run", "sync.toml", "--resume", cwd=ledger.parent)
    assert code == 0, out + err
    after = by_position(await ledger_rows(ledger, 1))
    assert sorted(seq for _, seq in after) == list(range(1, n + 1))  # one outcome per change, in the same run
    assert all(r.status is Status.SUCCESS for r in after.values())
    assert all(after[pos].finished_at == row.finished_at for pos, row in before.items())  # kept, not redone
    async with SqliteLedger(ledger) as opened:
        summary = await opened.summary(1)
        assert await opened.latest_run_id() == 1
    assert (summary.state, summary.read, summary.succeeded, summary.pending) == ("completed", n, n, 0)
    last = sandbox.state.find_by_field("Contacts", "External_Contact_ID", f"C{n - 1}") or {}
    assert last["Last_Name"] == f"New{n - 1}-{'x' * 40}"

    # Checked last, so that a wrong exit still shows whether anything was lost: each run said why it stopped.
    for where, (code, out, err) in full:
        assert str(where) in out + err and ("disk" in out + err or "full" in out + err)
        assert "Traceback" not in out + err, err[-3000:]
        assert code == 2, out + err
