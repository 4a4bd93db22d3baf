"""`syncengine demo` as a user runs it, in a real process, against both sandbox profiles.

Under ``--strict`` (the real-Zoho readings of the docs) the bulk update by external value is refused for a
missing id, related answers come back shuffled, unknown fields are refused: the demo must still end with
every good row ``SUCCESS``, the same deliberate bad rows refused, and the CRM holding exactly what it holds
under the default profile. Only the calls and credits may differ (the COQL lookups).
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTACTS = 600  # the demo's mix of good and bad rows, at a size a test can afford twice
_VOLATILE = {"Created_Time", "Modified_Time", "Created_By", "Modified_By"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(directory: Path, port: int) -> Path:
    """configs/demo.toml on another port, with its ledger and exports under ``directory``."""
    text = (ROOT / "configs" / "demo.toml").read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:8765", f"127.0.0.1:{port}").replace("../.demo/", "demo/")
    path = directory / "demo.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _run_demo(directory: Path, strict: bool) -> tuple[str, Counter[tuple[str, str, str]], Any]:
    directory.mkdir()
    config = _config(directory, _free_port())
    args = ["demo", "--dir", str(directory / "demo"), "--config", str(config), "--contacts", str(CONTACTS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOHO_", "SYNCENGINE_"))}
    env["SYNCENGINE_TOKEN_CACHE"] = "off"
    done = subprocess.run(
        [sys.executable, "-m", "syncengine", *args, *(["--strict"] if strict else [])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(directory / "demo" / "syncengine.db") as db:
        statuses = Counter(
            (stream, status, code or "")
            for stream, status, code in db.execute("SELECT stream, status, code FROM outcomes")
        )
    crm = orjson.loads((directory / "demo" / "crm-after.json").read_bytes())
    return done.stdout, statuses, crm


def _comparable(crm: Any) -> Any:
    records = {
        module: sorted(({k: v for k, v in r.items() if k not in _VOLATILE} for r in recs), key=lambda r: r["id"])
        for module, recs in crm["records"].items()
    }
    relations = sorted(
        crm.get("relations", []), key=lambda r: (r["module"], r["id"], r["related_list"], r["related_id"])
    )
    return records, relations


@pytest.mark.slow
def test_the_demo_against_the_strict_sandbox_ends_as_against_the_default_one(tmp_path: Path) -> None:
    """Same outcomes record by record, same CRM; strict says it resolved ids with COQL, and what that cost."""
    default_out, default_statuses, default_crm = _run_demo(tmp_path / "default", strict=False)
    strict_out, strict_statuses, strict_crm = _run_demo(tmp_path / "strict", strict=True)

    assert strict_statuses == default_statuses
    good = sum(n for (_, status, _), n in strict_statuses.items() if status == "SUCCESS")
    bad = {(stream, status, code) for (stream, status, code) in strict_statuses if status != "SUCCESS"}
    assert good >= CONTACTS and all(status in ("REJECTED", "INVALID") for _, status, _ in bad), bad
    assert _comparable(strict_crm) == _comparable(default_crm)

    assert "strict: the real-Zoho profile" in strict_out
    assert re.search(r"contacts: updates by external value resolve", strict_out), strict_out[-2000:]
    assert re.search(r"\d+ COQL lookup", strict_out), strict_out[-2000:]
    credits = [int(re.search(r"credits ([\d,]+)", out).group(1).replace(",", "")) for out in (default_out, strict_out)]  # type: ignore[union-attr]
    assert credits[1] > credits[0]  # the lookups cost credits, and the summary counts them
