"""The example configs in configs/: each one loads, holds no secret, and is set up for the use it documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncengine.config import Config, load_config
from syncengine.model import Operation

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FILES = sorted(CONFIGS.glob("*.toml"))
# The one per use DESIGN §6 promises; they talk to Zoho itself, not to the sandbox.
PER_USE = ("nightly-migration.toml", "backfill.toml", "continuous-sync.toml")

# What a credential pasted into a file looks like, comments included.
SECRET_LOOKING = {
    "credential assignment": re.compile(
        r"(?i)\b(zoho_)?(client_secret|refresh_token|access_token|client_id)\b\s*[=:]\s*['\"]?[A-Za-z0-9._-]{6,}"
    ),
    "zoho token": re.compile(r"\b1000\.[0-9a-f]{16,}"),
    "authorization header": re.compile(r"(?i)zoho-oauthtoken\s+\S+"),
    "long random string": re.compile(r"\b(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[a-zA-Z])[A-Za-z0-9]{32,}\b"),
}


def test_every_use_has_an_example() -> None:
    """configs/ holds the demo and one example per use."""
    assert {"demo.toml", *PER_USE} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_config_loads(path: Path) -> None:
    """Every example config loads and validates."""
    config = load_config(path)
    assert config.streams


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_config_holds_no_secret(path: Path) -> None:
    """No example config carries anything that looks like a credential, not even in a comment."""
    text = path.read_text(encoding="utf-8")
    found = {what: m.group(0) for what, pattern in SECRET_LOOKING.items() if (m := pattern.search(text))}
    assert found == {}


@pytest.mark.parametrize("name", PER_USE)
def test_per_use_config_talks_to_zoho(name: str) -> None:
    """The per-use examples name a Zoho data centre (https), not the sandbox, and say where secrets come from."""
    text = (CONFIGS / name).read_text(encoding="utf-8")
    config = load_config(CONFIGS / name)
    assert re.search(r'(?m)^data_centre = "(us|eu)"', text)
    assert config.crm.api_domain.startswith("https://www.zohoapis.")
    assert not re.search(r"(?m)^\s*(api_domain|accounts_url)\s*=", text)
    assert "ZOHO_CLIENT_SECRET" in text and "secrets_file" in text


def _load(name: str) -> Config:
    return load_config(CONFIGS / name)


def test_nightly_migration_settings() -> None:
    """Nightly: CSV exports matched by external ID, no workflows fired, sub-concurrency below Zoho's 10."""
    config = _load("nightly-migration.toml")
    assert config.crm.trigger == ()
    assert config.crm.sub_concurrency < 10 and config.crm.secrets_file is not None
    assert all(s.source.kind == "csv" and s.match.field for s in config.streams)


def test_backfill_settings() -> None:
    """Backfill: JSONL sources in full batches of 100, under a credit budget, no workflows."""
    config = _load("backfill.toml")
    assert config.crm.credit_budget is not None and config.crm.trigger == ()
    assert all(s.source.kind == "jsonl" and s.batch_size == 100 for s in config.streams)


def test_continuous_sync_settings() -> None:
    """Continuous sync: tables followed by a cursor, a small linger, relation deletes with a guardrail."""
    config = _load("continuous-sync.toml")
    assert all(s.linger <= 0.1 for s in config.streams)
    assert all(getattr(s.source, "cursor", None) for s in config.streams)
    related = [s for s in config.streams if s.target.operation is Operation.UPDATE_RELATED]
    assert related and all(s.delete_when is not None and s.max_deletes for s in related)
