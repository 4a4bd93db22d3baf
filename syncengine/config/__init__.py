"""One TOML file -> frozen, validated config objects.

Every mistake raises :class:`~syncengine.errors.ConfigError` naming the file, the exact key path
(``streams[1] (contacts).match.column``; stream indexes count from 0, as in the TOML array) and what
was expected. Unknown keys are mistakes too, so a typo never passes silently. Relative paths resolve
against the config file's directory. Secrets never live in this file: they come from the environment or
from the file named by ``crm.secrets_file`` (see :func:`load_secrets`).

A complete example::

    [crm]
    data_centre = "us"              # us, eu, in, au, jp, ca, cn, sa
    # or both of these together (they override data_centre), e.g. for the sandbox:
    # api_domain = "http://127.0.0.1:8080"    # CRM host, no path
    # accounts_url = "http://127.0.0.1:8080"  # token endpoint: accounts_url + "/oauth/v2/token"
    api_version = "v7"              # v7 (default) or v8
    concurrency = 10                # calls in flight, 1..25 (default 10)
    sub_concurrency = 10            # calls carrying >10 records in flight, 1..10, <= concurrency
    requests_per_second = 20.0      # optional
    credit_budget = 50000           # optional, positive
    trigger = ["workflow"]          # optional; [] disables workflows, approvals and blueprints
    timeout_seconds = 60            # per call (default 60)
    secrets_file = "secrets.toml"   # optional: client_id, client_secret, refresh_token / access_token
    allow_insecure_http = false     # http:// to a non-loopback host is refused unless true
    ca_file = "corp-ca.pem"         # optional: trust a custom CA (must exist)

    [ledger]
    path = "syncengine.db"          # default: syncengine.db beside this file

    [[streams]]
    name = "contacts"               # unique, [A-Za-z0-9_-]+
    operation = "update"            # update | upsert | update_related | delete_related
    module = "Contacts"             # for related operations: the parent's module
    source = { kind = "csv", path = "exports/contacts.csv", delimiter = ",", encoding = "utf-8",
               quotechar = '"', empty = "absent" }   # empty cells: "absent" (not sent) or "null"
    match = { column = "erp_id", field = "External_Contact_ID" }   # or { column = "crm_id" }: by record id
    linger_ms = 200                 # flush a partial batch after this long (default 200)
    batch_size = 100                # 1..100 (default 100)
    max_deletes = 500               # optional guardrail: a run that asks for more deletes stops the stream
    # update_related only: rows whose column says so become delinks of the same relation
    delete_when = { column = "deleted", values = ["true", "1", "yes"] }

    [streams.fields]                # CRM field API name = mapping
    Last_Name = "last_name"                             # a column, sent as a string
    Email = { column = "email", required = true }       # row INVALID when absent or empty
    Annual_Revenue = { column = "revenue", type = "float" }
    Lead_Source = { value = "ERP" }                     # a constant, sent as written

    [[streams]]
    name = "erp-accounts"                               # a database table, followed incrementally
    operation = "update"
    module = "Accounts"
    source = { kind = "postgres", dsn_env = "ERP_DSN",  # the DSN lives in $ERP_DSN, never in this file
               table = "sales.accounts",                # or query = "SELECT ... FROM ..." (one of the two)
               key = "id",                              # unique tie-breaker (the primary key), required
               cursor = "updated_at",                   # optional: read in (cursor, key) order, resumably
               lag_seconds = 5,                         # optional: re-read this far back for late commits
               page_size = 1000 }                       # rows per page (default 1000)
    # kind = "sqlite" takes path = "erp.db" instead of dsn_env; the other keys are the same.
    match = { column = "id", field = "ERP_Account_ID" }
    fields = { Account_Name = "name" }

    [[streams]]
    name = "deal-contacts"
    operation = "update_related"
    module = "Contacts"                                 # the parent's module
    related_list = "Deals"
    related_module = "Deals"                            # default: related_list
    source = { kind = "jsonl", path = "exports/deal_contacts.jsonl" }
    parent = { column = "contact_erp_id", field = "External_Contact_ID" }
    match = { column = "deal_erp_id", field = "External_Deal_ID" }   # addresses the related record
    fields = { Contact_Role = "role_id" }               # relation fields (delete_related: none)

Field types: string (default), integer, float, boolean, date (YYYY-MM-DD), datetime (ISO 8601 with
an offset), json (the cell holds JSON text). A constant (``value``) takes no ``type``: it is sent as the
TOML value it is written as (a TOML date or offset datetime is sent as its ISO string). ``upsert``
streams may add ``duplicate_check_fields = ["Email"]`` and must match on a field, not a record id.
"""

from syncengine.config.secrets import load_secrets
from syncengine.config.toml import load_config
from syncengine.config.values import (
    DATA_CENTRES,
    FIELD_TYPES,
    SECRET_ENV,
    Config,
    CrmConfig,
    DeleteWhen,
    FieldMapping,
    KeyConfig,
    LedgerConfig,
    Secrets,
    SourceConfig,
    SqlSourceConfig,
    StreamConfig,
)

__all__ = [
    "DATA_CENTRES",
    "FIELD_TYPES",
    "SECRET_ENV",
    "Config",
    "CrmConfig",
    "DeleteWhen",
    "FieldMapping",
    "KeyConfig",
    "LedgerConfig",
    "Secrets",
    "SourceConfig",
    "SqlSourceConfig",
    "StreamConfig",
    "load_config",
    "load_secrets",
]
