"""A Zoho CRM v7-compatible sandbox server with real state, limits and reproducible faults.

``async with Sandbox(SandboxOptions(...)) as sb:`` serves the accounts endpoint
(``sb.url + "/oauth/v2/token"``), the CRM API (``sb.url + "/crm/v7/..."``) and an admin API
(``sb.url + "/__sandbox/..."``). ``syncengine sandbox`` runs it from the command line. See
``README.md`` next to this file.
"""

from syncengine.sandbox.fields import DEFAULT_SCHEMA
from syncengine.sandbox.options import SandboxOptions
from syncengine.sandbox.schema import FieldSpec, FieldType, ModuleSpec, RelationSpec, Schema
from syncengine.sandbox.server import Sandbox
from syncengine.sandbox.state import SandboxState
from syncengine.sandbox.stats import SandboxStats

__all__ = [
    "DEFAULT_SCHEMA",
    "FieldSpec",
    "FieldType",
    "ModuleSpec",
    "RelationSpec",
    "Sandbox",
    "SandboxOptions",
    "SandboxState",
    "SandboxStats",
    "Schema",
]
