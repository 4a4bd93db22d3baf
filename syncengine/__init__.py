"""syncengine: push changes from business systems into Zoho CRM, fast, losing nothing, record by record."""

from syncengine.errors import ConfigError, CrmError, SyncError
from syncengine.model import Change, Operation, Outcome, Payload, PayloadItem, Status, Target

__all__ = [
    "Change",
    "ConfigError",
    "CrmError",
    "Operation",
    "Outcome",
    "Payload",
    "PayloadItem",
    "Status",
    "SyncError",
    "Target",
]
__version__ = "0.1.0"
