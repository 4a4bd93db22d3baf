"""The config file: every value lands where it should, and every mistake names file, key and expectation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncengine.config import (
    DATA_CENTRES,
    Config,
    FieldMapping,
    KeyConfig,
    Secrets,
    SourceConfig,
    SqlSourceConfig,
    load_config,
    load_secrets,
)
from syncengine.errors import ConfigError, SecretsError
from syncengine.model import Operation, Target

CRM = """
[crm]
data_centre = "us"
"""

CONTACTS = """
[[streams]]
name = "contacts"
operation = "update"
module = "Contacts"
source = { kind = "csv", path = "contacts.csv" }
match = { column = "erp_id", field = "External_Contact_ID" }
fields = { Last_Name = "last_name" }
"""

FULL = """
[crm]
api_domain = "http://127.0.0.1:8080/"
accounts_url = "http://localhost:8081"
api_version = "v8"
concurrency = 15
sub_concurrency = 5
requests_per_second = 20
credit_budget = 50000
trigger = ["workflow", "approval"]
timeout_seconds = 30.5
secrets_file = "secrets.toml"
ca_file = "ca.pem"

[ledger]
path = "state/ledger.db"

[[streams]]
name = "contacts"
operation = "update"
module = "Contacts"
source = { kind = "csv", path = "exports/contacts.csv", delimiter = ";", encoding = "cp1252", \
quotechar = "'", empty = "null" }
match = { column = "erp_id", field = "External_Contact_ID" }
linger_ms = 50
batch_size = 40

[streams.fields]
Last_Name = "last_name"
Email = { column = "email", required = true }
Annual_Revenue = { column = "revenue", type = "float" }
Lead_Source = { value = "ERP" }
Tags = { value = ["a", "b"] }
Since = { value = 2024-05-01 }

[[streams]]
name = "deal-contacts"
operation = "update_related"
module = "Contacts"
related_list = "Deals"
source = { kind = "jsonl", path = "/data/deal_contacts.jsonl" }
parent = { column = "contact_erp_id", field = "External_Contact_ID" }
match = { column = "deal_id" }
fields = { Contact_Role = "role" }

[[streams]]
name = "unlink"
operation = "delete_related"
module = "Products"
related_list = "Leads"
related_module = "Leads"
source = { kind = "jsonl", path = "unlink.jsonl" }
parent = { column = "product_id" }
match = { column = "lead_id" }

[[streams]]
name = "upserts"
operation = "upsert"
module = "Leads"
source = { kind = "csv", path = "leads.csv" }
match = { column = "email", field = "Email" }
duplicate_check_fields = ["Email", "Phone"]
fields = { Last_Name = "name" }
"""


def write(tmp_path: Path, text: str, name: str = "sync.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_full_config_round_trip(tmp_path: Path) -> None:
    """Every key of a full config lands in the right object, with relative paths beside the file."""
    (tmp_path / "ca.pem").write_text("pem")
    config = load(tmp_path, FULL)
    crm = config.crm
    assert config.file == (tmp_path / "sync.toml").resolve()
    assert crm.api_domain == "http://127.0.0.1:8080"
    assert crm.api_base == "http://127.0.0.1:8080/crm/v8"
    assert crm.token_url == "http://localhost:8081/oauth/v2/token"
    assert (crm.concurrency, crm.sub_concurrency) == (15, 5)
    assert crm.requests_per_second == 20.0
    assert crm.credit_budget == 50000
    assert crm.trigger == ("workflow", "approval")
    assert crm.timeout == 30.5
    assert crm.secrets_file == tmp_path.resolve() / "secrets.toml"
    assert crm.ca_file == tmp_path.resolve() / "ca.pem"
    assert crm.allow_insecure_http is False
    assert config.ledger.path == tmp_path.resolve() / "state" / "ledger.db"

    contacts = config.stream("contacts")
    assert isinstance(contacts.source, SourceConfig)
    assert contacts.source.path == tmp_path.resolve() / "exports" / "contacts.csv"
    assert (contacts.source.delimiter, contacts.source.quotechar, contacts.source.empty) == (";", "'", "null")
    assert contacts.source.encoding == "cp1252"
    assert contacts.target == Target(
        operation=Operation.UPDATE,
        module="Contacts",
        match_field="External_Contact_ID",
        fields=("Last_Name", "Email", "Annual_Revenue", "Lead_Source", "Tags", "Since"),
    )
    assert contacts.match == KeyConfig(column="erp_id", field="External_Contact_ID")
    assert contacts.parent is None
    assert contacts.fields == (
        FieldMapping(field="Last_Name", column="last_name"),
        FieldMapping(field="Email", column="email", required=True),
        FieldMapping(field="Annual_Revenue", column="revenue", type="float"),
        FieldMapping(field="Lead_Source", column=None, value="ERP", type="json"),
        FieldMapping(field="Tags", column=None, value=["a", "b"], type="json"),
        FieldMapping(field="Since", column=None, value="2024-05-01", type="json"),
    )
    assert (contacts.batch_size, contacts.linger) == (40, 0.05)

    related = config.stream("deal-contacts")
    assert related.source.path == Path("/data/deal_contacts.jsonl")
    assert related.target == Target(
        operation=Operation.UPDATE_RELATED,
        module="Contacts",
        related_list="Deals",
        related_module="Deals",
        parent_match_field="External_Contact_ID",
        fields=("Contact_Role",),
    )
    assert related.parent == KeyConfig(column="contact_erp_id", field="External_Contact_ID")
    assert related.match == KeyConfig(column="deal_id", field=None)

    unlink = config.stream("unlink")
    assert unlink.fields == ()
    assert unlink.target.operation is Operation.DELETE_RELATED
    assert unlink.target.parent_match_field is None

    upserts = config.stream("upserts")
    assert upserts.target.duplicate_check_fields == ("Email", "Phone")
    assert [s.name for s in config.streams] == ["contacts", "deal-contacts", "unlink", "upserts"]


def test_defaults(tmp_path: Path) -> None:
    """A minimal config gets the documented defaults."""
    config = load(tmp_path, CRM + CONTACTS)
    crm = config.crm
    assert crm.api_version == "v7"
    assert (crm.concurrency, crm.sub_concurrency) == (10, 10)
    assert (crm.requests_per_second, crm.credit_budget, crm.trigger) == (None, None, None)
    assert crm.timeout == 60.0
    assert (crm.secrets_file, crm.ca_file, crm.allow_insecure_http) == (None, None, False)
    assert config.ledger.path == tmp_path.resolve() / "syncengine.db"
    stream = config.streams[0]
    assert (stream.batch_size, stream.linger) == (100, 0.2)
    source = stream.source
    assert isinstance(source, SourceConfig)
    assert (source.encoding, source.delimiter, source.quotechar, source.empty) == (
        "utf-8",
        ",",
        '"',
        "absent",
    )


def test_small_concurrency_lowers_default_sub_concurrency(tmp_path: Path) -> None:
    """sub_concurrency defaults to at most concurrency."""
    config = load(tmp_path, CRM + "concurrency = 4\n" + CONTACTS)
    assert config.crm.sub_concurrency == 4


def test_empty_trigger_list_disables_workflows(tmp_path: Path) -> None:
    """trigger = [] is kept as an empty tuple, distinct from leaving it out."""
    assert load(tmp_path, CRM + "trigger = []\n" + CONTACTS).crm.trigger == ()


def test_fields_as_inline_table(tmp_path: Path) -> None:
    """fields written inline and as [streams.fields] mean the same."""
    inline = load(tmp_path, CRM + CONTACTS).streams[0].fields
    table = load(tmp_path, CRM + CONTACTS.replace('fields = { Last_Name = "last_name" }', "")
                 + '[streams.fields]\nLast_Name = "last_name"\n').streams[0].fields  # fmt: skip
    assert inline == table == (FieldMapping(field="Last_Name", column="last_name"),)


@pytest.mark.parametrize("centre", sorted(DATA_CENTRES))
def test_each_data_centre(tmp_path: Path, centre: str) -> None:
    """Each data centre maps to its API domain and accounts server."""
    config = load(tmp_path, f'[crm]\ndata_centre = "{centre}"\n' + CONTACTS)
    assert (config.crm.api_domain, config.crm.accounts_url) == DATA_CENTRES[centre]
    assert config.crm.api_domain.startswith("https://www.zohoapis.")
    assert config.crm.token_url.endswith("/oauth/v2/token")


def test_data_centre_values() -> None:
    """The table matches zoho-api.md §5.4."""
    assert DATA_CENTRES["eu"] == ("https://www.zohoapis.eu", "https://accounts.zoho.eu")
    assert DATA_CENTRES["ca"] == ("https://www.zohoapis.ca", "https://accounts.zohocloud.ca")
    assert DATA_CENTRES["cn"] == ("https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn")
    # The audit's row 29: the UK (Zoho's accounts multi-dc page) and the UAE (WorkDrive's table, the code index).
    assert DATA_CENTRES["uk"] == ("https://www.zohoapis.uk", "https://accounts.zoho.uk")
    assert DATA_CENTRES["ae"] == ("https://www.zohoapis.ae", "https://accounts.zoho.ae")


@pytest.mark.parametrize(
    ("crm", "centre"),
    [
        pytest.param('data_centre = "uk"', "uk", id="data-centre"),
        pytest.param('api_domain = "https://a.example.com"\naccounts_url = "https://b.example.com"', None, id="pair"),
        pytest.param(
            'data_centre = "uk"\napi_domain = "https://a.example.com"\naccounts_url = "https://b.example.com"',
            None,
            id="pair-wins",
        ),
    ],
)
def test_the_data_centre_is_kept_only_when_it_chose_the_hosts(tmp_path: Path, crm: str, centre: str | None) -> None:
    """crm.data_centre is recorded when it chose the hosts (the token's api_domain may then move the calls)."""
    assert load(tmp_path, f"[crm]\n{crm}\n" + CONTACTS).crm.data_centre == centre


def test_the_token_cache_is_beside_the_ledger_by_default(tmp_path: Path) -> None:
    """No crm.token_cache: the file is syncengine-tokens.json in the ledger's directory, never the ledger."""
    config = load(tmp_path, CRM + '\n[ledger]\npath = "state/l.db"\n' + CONTACTS)
    assert config.crm.token_cache == tmp_path / "state" / "syncengine-tokens.json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('"tokens/cache.json"', "tokens/cache.json", id="relative"),
        pytest.param('"/var/tmp/syncengine-tokens.json"', "/var/tmp/syncengine-tokens.json", id="absolute"),
        pytest.param("false", None, id="off"),
    ],
)
def test_token_cache_setting(tmp_path: Path, value: str, expected: str | None) -> None:
    """crm.token_cache names the file (relative to the config) or, false, turns the cache off."""
    config = load(tmp_path, CRM + f"token_cache = {value}\n" + CONTACTS)
    assert config.crm.token_cache == (None if expected is None else tmp_path / expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("true", "a file path, or false", id="true"),
        pytest.param("3", "a file path, or false", id="number"),
        pytest.param('"syncengine.db"', "not the ledger", id="the-ledger"),
    ],
)
def test_a_bad_token_cache_is_named(tmp_path: Path, value: str, message: str) -> None:
    """A token_cache that is not a path, or is the ledger itself, names the key."""
    caught = error(tmp_path, CRM + f"token_cache = {value}\n" + CONTACTS)
    assert caught.key == "crm.token_cache" and message in str(caught)


def test_explicit_domains_override_data_centre(tmp_path: Path) -> None:
    """api_domain and accounts_url win over data_centre."""
    config = load(
        tmp_path,
        """
        [crm]
        data_centre = "eu"
        api_domain = "https://crm.example.com"
        accounts_url = "https://accounts.example.com"
        """
        + CONTACTS,
    )
    assert config.crm.api_base == "https://crm.example.com/crm/v7"
    assert config.crm.token_url == "https://accounts.example.com/oauth/v2/token"


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1:8080", "http://127.3.2.1", "http://[::1]:9000", "http://localhost:1"]
)
def test_plain_http_to_loopback_is_fine(tmp_path: Path, host: str) -> None:
    """The sandbox on loopback needs no TLS."""
    config = load(tmp_path, f'[crm]\napi_domain = "{host}"\naccounts_url = "{host}"\n' + CONTACTS)
    assert config.crm.api_domain == host


def test_plain_http_elsewhere_needs_opt_in(tmp_path: Path) -> None:
    """allow_insecure_http = true lets http:// reach a non-loopback host."""
    text = '[crm]\napi_domain = "http://10.0.0.5"\naccounts_url = "http://10.0.0.5"\n'
    text += "allow_insecure_http = true\n"
    assert load(tmp_path, text + CONTACTS).crm.allow_insecure_http is True


def test_unknown_stream_name(tmp_path: Path) -> None:
    """Config.stream names the known streams when asked for another."""
    config = load(tmp_path, CRM + CONTACTS)
    with pytest.raises(ConfigError) as caught:
        config.stream("leads")
    assert caught.value.key == "streams"
    assert "'leads'" in caught.value.expected and "contacts" in caught.value.expected


def stream(**changes: str | None) -> str:
    """CONTACTS with some lines replaced (None: removed), keyed by the TOML key."""
    lines = []
    for line in CONTACTS.strip().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in changes:
            if changes[key] is not None:
                lines.append(f"{key} = {changes[key]}")
        else:
            lines.append(line)
    extra = [f"{k} = {v}" for k, v in changes.items() if v is not None and k not in CONTACTS]
    return "\n".join(lines + extra) + "\n"


MISTAKES = [
    pytest.param("", "crm", "table (missing)", id="no-crm"),
    pytest.param(CRM, "streams", "one or more [[streams]]", id="no-streams"),
    pytest.param(
        CRM + "concurency = 3\n" + CONTACTS,
        "crm.concurency",
        "unknown key 'concurency' (did you mean 'concurrency'?); expected one of: data_centre",
        id="unknown-crm-key",
    ),
    pytest.param(CRM + "[extra]\n" + CONTACTS, "extra", "unknown key 'extra'", id="unknown-top-key"),
    pytest.param(
        '[crm]\ndata_centre = "mars"\n' + CONTACTS,
        "crm.data_centre",
        "one of 'us', 'eu'",
        id="bad-data-centre",
    ),
    pytest.param(
        "[crm]\nconcurrency = 3\n" + CONTACTS,
        "crm.data_centre",
        "or both api_domain and",
        id="no-data-centre",
    ),
    pytest.param(
        '[crm]\napi_domain = "https://x.example"\n' + CONTACTS,
        "crm.accounts_url",
        "together",
        id="api-domain-alone",
    ),
    pytest.param(
        '[crm]\napi_domain = "https://x.example/crm"\naccounts_url = "https://a.example"\n' + CONTACTS,
        "crm.api_domain",
        "no path",
        id="domain-with-path",
    ),
    pytest.param(
        '[crm]\napi_domain = "ftp://x.example"\naccounts_url = "https://a.example"\n' + CONTACTS,
        "crm.api_domain",
        "an http(s) URL",
        id="domain-bad-scheme",
    ),
    pytest.param(
        '[crm]\napi_domain = "http://crm.example.com"\naccounts_url = "https://a.example"\n' + CONTACTS,
        "crm.api_domain",
        "allow_insecure_http",
        id="http-non-loopback",
    ),
    pytest.param(
        '[crm]\napi_domain = "http://127.0.0.1"\naccounts_url = "http://10.1.1.1:80"\n' + CONTACTS,
        "crm.accounts_url",
        "not loopback (10.1.1.1)",
        id="http-accounts-non-loopback",
    ),
    pytest.param(
        CRM + 'api_version = "v6"\n' + CONTACTS,
        "crm.api_version",
        "one of 'v7', 'v8', got 'v6'",
        id="bad-api-version",
    ),
    pytest.param(
        CRM + "concurrency = 0\n" + CONTACTS,
        "crm.concurrency",
        "an integer from 1 to 25, got 0",
        id="concurrency-zero",
    ),
    pytest.param(
        CRM + "concurrency = 26\n" + CONTACTS,
        "crm.concurrency",
        "from 1 to 25, got 26",
        id="concurrency-too-high",
    ),
    pytest.param(
        CRM + 'concurrency = "10"\n' + CONTACTS,
        "crm.concurrency",
        "got '10' (a string)",
        id="concurrency-string",
    ),
    pytest.param(
        CRM + "concurrency = true\n" + CONTACTS,
        "crm.concurrency",
        "got True (a boolean)",
        id="concurrency-bool",
    ),
    pytest.param(
        CRM + "sub_concurrency = 11\n" + CONTACTS,
        "crm.sub_concurrency",
        "from 1 to 10",
        id="sub-concurrency-too-high",
    ),
    pytest.param(
        CRM + "concurrency = 4\nsub_concurrency = 6\n" + CONTACTS,
        "crm.sub_concurrency",
        "at most concurrency (4), got 6",
        id="sub-above-concurrency",
    ),
    pytest.param(CRM + "requests_per_second = 0\n" + CONTACTS, "crm.requests_per_second", "> 0", id="zero-rate"),
    pytest.param(CRM + "credit_budget = -1\n" + CONTACTS, "crm.credit_budget", "an integer >= 1", id="negative-budget"),
    pytest.param(CRM + 'trigger = ["workflows"]\n' + CONTACTS, "crm.trigger[0]", "'workflow'", id="bad-trigger"),
    pytest.param(CRM + 'trigger = "workflow"\n' + CONTACTS, "crm.trigger", "an array of", id="trigger-string"),
    pytest.param(CRM + "timeout_seconds = -5\n" + CONTACTS, "crm.timeout_seconds", "> 0", id="bad-timeout"),
    pytest.param(
        CRM + 'allow_insecure_http = "yes"\n' + CONTACTS,
        "crm.allow_insecure_http",
        "true or false",
        id="bad-bool",
    ),
    pytest.param(
        CRM + 'ca_file = "missing.pem"\n' + CONTACTS,
        "crm.ca_file",
        "an existing CA certificate",
        id="missing-ca-file",
    ),
    pytest.param(
        CRM + "[ledger]\npath = 3\n" + CONTACTS,
        "ledger.path",
        "a non-empty string naming a file",
        id="bad-ledger-path",
    ),
    pytest.param(
        CRM + 'client_secret = "s3cr3t"\n' + CONTACTS,
        "crm.client_secret",
        "no secrets in the config file: client_secret comes from the environment (ZOHO_CLIENT_SECRET)",
        id="secret-in-crm",
    ),
    pytest.param(CRM + 'client_id = "abc"\n' + CONTACTS, "crm.client_id", "crm.secrets_file", id="client-id-in-crm"),
    pytest.param(
        CRM + stream(refresh_token='"r"'),
        "streams[0].refresh_token",
        "ZOHO_REFRESH_TOKEN",
        id="secret-in-stream",
    ),
    pytest.param(
        CRM + 'ZOHO_CLIENT_SECRET = "s"\n' + CONTACTS,
        "crm.ZOHO_CLIENT_SECRET",
        "comes from the environment (ZOHO_CLIENT_SECRET)",
        id="env-name-in-crm",
    ),
    pytest.param('access_token = "t"\n' + CRM + CONTACTS, "access_token", "ZOHO_ACCESS_TOKEN", id="secret-at-top"),
    pytest.param(CRM + 'streams = "contacts"\n', "crm.streams", "unknown key 'streams'", id="streams-in-crm"),
    pytest.param(
        CRM + stream(name=None),
        "streams[0].name",
        "a stream name of letters, digits, '_' and '-' (missing)",
        id="missing-name",
    ),
    pytest.param(CRM + stream(name='"con tacts"'), "streams[0].name", "got 'con tacts'", id="bad-name"),
    pytest.param(
        CRM + CONTACTS + CONTACTS,
        "streams[1] (contacts).name",
        "a unique stream name, but streams[0] is also named 'contacts'",
        id="duplicate-names",
    ),
    pytest.param(
        CRM + stream(operation='"insert"'),
        "streams[0] (contacts).operation",
        "one of 'update', 'upsert', 'update_related', 'delete_related', got 'insert'",
        id="bad-operation",
    ),
    pytest.param(CRM + stream(module=None), "streams[0] (contacts).module", "module API name", id="no-module"),
    pytest.param(
        CRM + stream(module='"My Module"'), "streams[0] (contacts).module", "got 'My Module'", id="bad-module"
    ),
    pytest.param(
        CRM + stream(batch_size="101"),
        "streams[0] (contacts).batch_size",
        "from 1 to 100",
        id="batch-too-big",
    ),
    pytest.param(CRM + stream(linger_ms="-1"), "streams[0] (contacts).linger_ms", ">= 0", id="bad-linger"),
    pytest.param(
        CRM + stream(concurency="3"),
        "streams[0] (contacts).concurency",
        "unknown key 'concurency'",
        id="unknown-stream-key",
    ),
    pytest.param(CRM + stream(source=None), "streams[0] (contacts).source", "table (missing)", id="no-source"),
    pytest.param(
        CRM + stream(source='{ kind = "xml", path = "a.xml" }'),
        "streams[0] (contacts).source.kind",
        "one of 'csv', 'jsonl', 'sqlite', 'postgres', got 'xml'",
        id="bad-source-kind",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "csv" }'),
        "streams[0] (contacts).source.path",
        "naming the source file (missing)",
        id="no-source-path",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "csv", path = "a.csv", delimiter = ";;" }'),
        "streams[0] (contacts).source.delimiter",
        "a single character",
        id="long-delimiter",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "csv", path = "a.csv", quotechar = "," }'),
        "streams[0] (contacts).source.quotechar",
        "different from the delimiter",
        id="quote-is-delimiter",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "csv", path = "a.csv", encoding = "klingon" }'),
        "streams[0] (contacts).source.encoding",
        "a known text encoding",
        id="unknown-encoding",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "csv", path = "a.csv", encoding = "utf-16" }'),
        "streams[0] (contacts).source.encoding",
        "ASCII-compatible",
        id="utf16-encoding",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "csv", path = "a.csv", empty = "blank" }'),
        "streams[0] (contacts).source.empty",
        "one of 'absent', 'null'",
        id="bad-empty-mode",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "jsonl", path = "a.jsonl", delimiter = ";" }'),
        "streams[0] (contacts).source.delimiter",
        "expected one of: kind, path, encoding",
        id="csv-option-on-jsonl",
    ),
    pytest.param(CRM + stream(match=None), "streams[0] (contacts).match", "table (missing)", id="no-match"),
    pytest.param(
        CRM + stream(match='{ field = "X" }'),
        "streams[0] (contacts).match.column",
        "a non-empty string naming a source column (missing)",
        id="match-without-column",
    ),
    pytest.param(
        CRM + stream(match='{ column = "" }'),
        "streams[0] (contacts).match.column",
        "a non-empty string naming a source column, got ''",
        id="match-empty-column",
    ),
    pytest.param(
        CRM + stream(match='{ column = "a", feild = "X" }'),
        "streams[0] (contacts).match.feild",
        "did you mean 'field'?",
        id="match-typo",
    ),
    pytest.param(
        CRM + stream(match='"erp_id"'),
        "streams[0] (contacts).match",
        "a table, got 'erp_id'",
        id="match-string",
    ),
    pytest.param(
        CRM + stream(fields=None),
        "streams[0] (contacts).fields",
        "must send something",
        id="update-without-fields",
    ),
    pytest.param(
        CRM + stream(fields="{}"),
        "streams[0] (contacts).fields",
        "a table of CRM field",
        id="update-empty-fields",
    ),
    pytest.param(
        CRM + stream(fields="{ Last_Name = 3 }"),
        "streams[0] (contacts).fields.Last_Name",
        "a column name, or a table",
        id="field-number",
    ),
    pytest.param(
        CRM + stream(fields='{ Last_Name = "" }'),
        "streams[0] (contacts).fields.Last_Name",
        "naming a source column",
        id="field-empty-column",
    ),
    pytest.param(
        CRM + stream(fields='{ Last_Name = { column = "a", value = "b" } }'),
        "streams[0] (contacts).fields.Last_Name.column",
        "exactly one of column",
        id="column-and-value",
    ),
    pytest.param(
        CRM + stream(fields='{ Last_Name = { type = "string" } }'),
        "streams[0] (contacts).fields.Last_Name.column",
        "exactly one of column",
        id="neither",
    ),
    pytest.param(
        CRM + stream(fields='{ Revenue = { column = "r", type = "decimal" } }'),
        "streams[0] (contacts).fields.Revenue.type",
        "one of 'string', 'integer', 'float', 'boolean', 'date', 'datetime', 'json', got 'decimal'",
        id="bad-type",
    ),
    pytest.param(
        CRM + stream(fields='{ Flag = { column = "f", required = "yes" } }'),
        "streams[0] (contacts).fields.Flag.required",
        "true or false",
        id="bad-required",
    ),
    pytest.param(
        CRM + stream(fields='{ Flag = { value = 1, type = "integer" } }'),
        "streams[0] (contacts).fields.Flag.type",
        "a constant is sent as written",
        id="typed-constant",
    ),
    pytest.param(
        CRM + stream(fields='{ Flag = { value = 1, colum = "x" } }'),
        "streams[0] (contacts).fields.Flag.colum",
        "unknown key 'colum'",
        id="field-typo",
    ),
    pytest.param(
        CRM + stream(fields='{ "Last Name" = "n" }'),
        "streams[0] (contacts).fields.Last Name",
        "a field API name",
        id="bad-field-name",
    ),
    pytest.param(
        CRM + stream(fields='{ id = "n" }'),
        "streams[0] (contacts).fields.id",
        "set from match.column",
        id="map-id",
    ),
    pytest.param(
        CRM + stream(fields='{ External_Contact_ID = "n" }'),
        "streams[0] (contacts).fields.External_Contact_ID",
        "set from match.column",
        id="map-match-field",
    ),
    pytest.param(
        CRM + stream(fields="{ When = { value = 2024-01-01T10:00:00 } }"),
        "streams[0] (contacts).fields.When.value",
        "a datetime with an offset",
        id="local-datetime",
    ),
    pytest.param(
        CRM + stream(fields="{ When = { value = nan } }"),
        "streams[0] (contacts).fields.When.value",
        "a finite number",
        id="nan-constant",
    ),
    pytest.param(
        CRM + stream(parent='{ column = "p" }'),
        "streams[0] (contacts).parent",
        "only for update_related and delete_related",
        id="update-with-parent",
    ),
    pytest.param(
        CRM + stream(related_list='"Deals"'),
        "streams[0] (contacts).related_list",
        "only for update_related and delete_related",
        id="update-with-related-list",
    ),
    pytest.param(
        CRM + stream(duplicate_check_fields='["Email"]'),
        "streams[0] (contacts).duplicate_check_fields",
        "only for upsert",
        id="dup-check-on-update",
    ),
    pytest.param(
        CRM + stream(operation='"upsert"', match='{ column = "id" }'),
        "streams[0] (contacts).match.field",
        "cannot match on a record id",
        id="upsert-by-id",
    ),
    pytest.param(
        CRM + stream(operation='"upsert"', duplicate_check_fields='["Email", "Email"]'),
        "streams[0] (contacts).duplicate_check_fields",
        "without repeats",
        id="dup-check-repeats",
    ),
    pytest.param(
        CRM + stream(operation='"update_related"', related_list='"Deals"'),
        "streams[0] (contacts).parent",
        "a parent key table (update_related needs one) (missing)",
        id="related-without-parent",
    ),
    pytest.param(
        CRM + stream(operation='"delete_related"', parent='{ column = "p" }'),
        "streams[0] (contacts).related_list",
        "delete_related needs one",
        id="related-without-list",
    ),
    pytest.param(
        CRM + stream(operation='"delete_related"', related_list='"Deals"', parent='{ column = "p" }'),
        "streams[0] (contacts).fields",
        "no fields: delete_related only removes the relation",
        id="delete-related-with-fields",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "postgres", dsn = "postgresql://u:pw@db/erp", table = "t", key = "id" }'),
        "streams[0] (contacts).source.dsn",
        "no connection secrets in the config file",
        id="sql-dsn-in-config",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "postgres", dsn_env = "ERP-DSN", table = "t", key = "id" }'),
        "streams[0] (contacts).source.dsn_env",
        "the name of an environment variable",
        id="sql-bad-env-name",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", key = "id" }'),
        "streams[0] (contacts).source.table",
        "exactly one of table",
        id="sql-neither-table-nor-query",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "t", query = "SELECT 1", key = "id" }'),
        "streams[0] (contacts).source.table",
        "exactly one of table",
        id="sql-table-and-query",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "t" }'),
        "streams[0] (contacts).source.key",
        "unique column (the primary key), the tie-breaker for paging (missing)",
        id="sql-no-key",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", table = "t", key = "id" }'),
        "streams[0] (contacts).source.path",
        "SQLite database file (missing)",
        id="sqlite-no-path",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "t", key = "id", lag_seconds = 5 }'),
        "streams[0] (contacts).source.lag_seconds",
        "nothing without a cursor",
        id="sql-lag-without-cursor",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "t", key = "id", cursor = "id" }'),
        "streams[0] (contacts).source.cursor",
        "a column other than the key",
        id="sql-cursor-is-key",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "t", key = "id", page_size = 0 }'),
        "streams[0] (contacts).source.page_size",
        "an integer from 1 to 100000",
        id="sql-page-size",
    ),
    pytest.param(
        CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "t", key = "id", dsn_env = "X" }'),
        "streams[0] (contacts).source.dsn_env",
        "unknown key 'dsn_env'",
        id="sqlite-with-dsn-env",
    ),
    pytest.param(CRM + "[[streams]]\nname = 3\n", "streams[0].name", "got 3 (an integer)", id="name-number"),
    pytest.param("streams = [1]\n" + CRM, "streams[0]", "a table, got 1", id="stream-not-table"),
]


@pytest.mark.parametrize(("text", "key", "expected"), MISTAKES)
def test_mistakes_name_file_key_and_expectation(tmp_path: Path, text: str, key: str, expected: str) -> None:
    """Each mistake is a ConfigError with the exact key path and what was expected."""
    caught = error(tmp_path, text)
    assert caught.key == key
    assert expected in caught.expected
    assert key in str(caught) and expected in str(caught)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A TOML syntax error becomes a ConfigError that says where."""
    caught = error(tmp_path, '[crm]\ndata_centre = "us"\nconcurrency = = 3\n')
    assert caught.key == "line 3, column 15"
    assert caught.expected.startswith("valid TOML syntax")


def test_unreadable_config_file(tmp_path: Path) -> None:
    """A missing config file is a ConfigError too, not an OSError."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert caught.value.file == str(tmp_path / "nope.toml")
    assert "a readable TOML file" in caught.value.expected


def test_secret_in_config_never_echoes_value(tmp_path: Path) -> None:
    """Refusing a secret in the config does not repeat the secret."""
    caught = error(tmp_path, CRM + 'refresh_token = "1000.very-secret"\n' + CONTACTS)
    assert "very-secret" not in str(caught)


def test_sql_sources(tmp_path: Path) -> None:
    """sqlite and postgres sources: a table or a query, key, cursor, lag and page size; paths beside the file."""
    sqlite = load(tmp_path, CRM + stream(source='{ kind = "sqlite", path = "erp.db", table = "contacts", key = "id" }'))
    assert sqlite.streams[0].source == SqlSourceConfig(
        kind="sqlite", path=tmp_path.resolve() / "erp.db", table="contacts", key="id"
    )
    source = (
        '{ kind = "postgres", dsn_env = "ERP_DSN", query = "SELECT * FROM c", key = "id", cursor = "updated_at", '
        "lag_seconds = 5, page_size = 500 }"
    )
    postgres = load(tmp_path, CRM + stream(source=source))
    assert postgres.streams[0].source == SqlSourceConfig(
        kind="postgres",
        dsn_env="ERP_DSN",
        query="SELECT * FROM c",
        key="id",
        cursor="updated_at",
        lag_seconds=5.0,
        page_size=500,
    )


def test_field_named_like_a_secret_is_a_field(tmp_path: Path) -> None:
    """Keys under fields are CRM field names, so client_id there is not a secret."""
    config = load(tmp_path, CRM + stream(fields='{ client_id = "cid" }'))
    assert config.streams[0].fields[0].field == "client_id"


# ---- secrets

SECRET_VALUES = {
    "ZOHO_CLIENT_ID": "1000.CLIENTID",
    "ZOHO_CLIENT_SECRET": "s3cr3t-client",
    "ZOHO_REFRESH_TOKEN": "1000.refresh-xyz",
}


def crm_with_secrets(tmp_path: Path, secrets_text: str | None) -> Config:
    text = CRM
    if secrets_text is not None:
        (tmp_path / "secrets.toml").write_text(secrets_text)
        text += 'secrets_file = "secrets.toml"\n'
    return load(tmp_path, text + CONTACTS)


def test_secrets_from_environment(tmp_path: Path) -> None:
    """The three refresh-flow variables are enough."""
    secrets = load_secrets(crm_with_secrets(tmp_path, None).crm, SECRET_VALUES)
    assert secrets == Secrets(
        client_id="1000.CLIENTID", client_secret="s3cr3t-client", refresh_token="1000.refresh-xyz"
    )


def test_access_token_alone_is_enough(tmp_path: Path) -> None:
    """A ready access token needs nothing else."""
    secrets = load_secrets(crm_with_secrets(tmp_path, None).crm, {"ZOHO_ACCESS_TOKEN": "1000.access"})
    assert secrets.access_token == "1000.access"
    assert secrets.refresh_token is None


def test_secrets_from_toml_file(tmp_path: Path) -> None:
    """secrets_file supplies what the environment does not."""
    config = crm_with_secrets(
        tmp_path, 'client_id = "file-id"\nclient_secret = "file-secret"\nrefresh_token = "file-refresh"\n'
    )
    secrets = load_secrets(config.crm, {})
    assert (secrets.client_id, secrets.client_secret, secrets.refresh_token) == (
        "file-id",
        "file-secret",
        "file-refresh",
    )


def test_secrets_from_env_style_file(tmp_path: Path) -> None:
    """An env-style file with ZOHO_ names, export and quotes works too."""
    config = crm_with_secrets(
        tmp_path,
        "# zoho\nexport ZOHO_CLIENT_ID=env-id\nZOHO_CLIENT_SECRET='env secret'\n"
        'ZOHO_REFRESH_TOKEN="env-refresh"\nOTHER_TOOL=1\n',
    )
    secrets = load_secrets(config.crm, {})
    assert (secrets.client_id, secrets.client_secret, secrets.refresh_token) == (
        "env-id",
        "env secret",
        "env-refresh",
    )


def test_environment_wins_over_file(tmp_path: Path) -> None:
    """Key by key, the environment takes precedence over secrets_file."""
    config = crm_with_secrets(
        tmp_path, 'client_id = "file-id"\nclient_secret = "file-secret"\nrefresh_token = "file-refresh"\n'
    )
    secrets = load_secrets(config.crm, {"ZOHO_CLIENT_SECRET": "env-secret", "ZOHO_CLIENT_ID": ""})
    assert (secrets.client_id, secrets.client_secret, secrets.refresh_token) == (
        "file-id",
        "env-secret",
        "file-refresh",
    )


def test_missing_secrets_name_where_they_were_looked_for(tmp_path: Path) -> None:
    """SecretsError lists the missing variables and the file, and no value."""
    config = crm_with_secrets(tmp_path, 'client_id = "file-id-value"\n')
    with pytest.raises(SecretsError) as caught:
        load_secrets(config.crm, {"ZOHO_CLIENT_SECRET": "s3cr3t-client"})
    message = str(caught.value)
    assert "ZOHO_REFRESH_TOKEN" in message and "ZOHO_ACCESS_TOKEN" in message
    assert "missing: ZOHO_REFRESH_TOKEN" in message
    assert str(tmp_path.resolve() / "secrets.toml") in message
    assert "s3cr3t-client" not in message and "file-id-value" not in message


def test_no_secrets_at_all(tmp_path: Path) -> None:
    """With neither environment nor file, SecretsError names all the variables."""
    with pytest.raises(SecretsError, match="missing: ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN"):
        load_secrets(crm_with_secrets(tmp_path, None).crm, {"HOME": "/root"})


def test_missing_secrets_file(tmp_path: Path) -> None:
    """A secrets_file that cannot be read is a SecretsError naming it."""
    config = load(tmp_path, CRM + 'secrets_file = "gone.toml"\n' + CONTACTS)
    with pytest.raises(SecretsError, match=r"gone\.toml"):
        load_secrets(config.crm, SECRET_VALUES)


def test_malformed_secrets_file_does_not_echo_content(tmp_path: Path) -> None:
    """A secrets file that is neither TOML nor KEY=value is refused without quoting it."""
    config = crm_with_secrets(tmp_path, "client_secret: hunter2-value\n")
    with pytest.raises(SecretsError) as caught:
        load_secrets(config.crm, {})
    assert "line 1" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_secrets_repr_hides_values() -> None:
    """repr and str of Secrets show only whether each value is set."""
    secrets = Secrets(client_id="1000.CLIENTID", client_secret="s3cr3t", refresh_token="1000.rt", access_token=None)
    for text in (repr(secrets), str(secrets), f"{secrets}", f"{secrets!r}", repr([secrets])):
        for value in ("1000.CLIENTID", "s3cr3t", "1000.rt"):
            assert value not in text
    assert repr(secrets) == "Secrets(client_id=set, client_secret=***, refresh_token=***, access_token=unset)"


def test_external_update_strategy(tmp_path: Path) -> None:
    """external_update is auto unless set; only an update matched on a field takes it, only the four values."""
    assert load(tmp_path, CRM + CONTACTS).streams[0].external_update == "auto"
    for value in ("auto", "bulk", "resolve", "single"):
        assert load(tmp_path, CRM + stream(external_update=f'"{value}"')).streams[0].external_update == value
    wrong = error(tmp_path, CRM + stream(external_update='"search"'))
    assert wrong.key == "streams[0] (contacts).external_update"
    assert "'auto', 'bulk', 'resolve', 'single'" in wrong.expected
    by_id = error(tmp_path, CRM + stream(match='{ column = "crm_id" }', external_update='"resolve"'))
    assert by_id.key == "streams[0] (contacts).external_update" and "match.field" in by_id.expected
