"""The Zoho CRM client: transport (aiohttp), auth (tokens), requests (payload -> call), responses."""

from syncengine.crm.auth import TokenProvider
from syncengine.crm.requests import Call, build_call
from syncengine.crm.responses import interpret
from syncengine.crm.transport import HttpResponse, Transport

__all__ = ["Call", "HttpResponse", "TokenProvider", "Transport", "build_call", "interpret"]
