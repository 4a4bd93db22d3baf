"""Helpers for the sandbox tests: the records the Zoho doc samples name, and an HTTP helper that
returns status, JSON body and headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from syncengine.sandbox import Sandbox

TOKEN = "test-token"
CONTACT = "111111000000085009"  # External_Contact_ID extcontact3
CONTACT2 = "111111000000085010"  # External_Contact_ID extcontact4, Email taken@example.com
DEAL = "111111000000094028"  # External_Deal_ID extdeal3
DEAL2 = "111111000000094040"  # External_Deal_ID extdeal2
DEAL_UPDATE = "3652397000003852095"  # the deal of the update-records doc sample
LEAD = "34876876000000376008"  # the lead of the v7 update-related-records sample
LEAD_V21 = "3652397000001829002"  # the lead of the v2.1 sample
CAMPAIGNS = ("3652397000000327001", "3652397000001854001")
PRODUCT = "3409643000000798007"
PRICE_BOOKS = ("3409643000002414001", "3409643000002414010")
ROLE = "111111000000026002"

SEED: dict[str, Any] = {
    "records": {
        "Contacts": [
            {
                "id": CONTACT,
                "Last_Name": "Boyle",
                "External_Contact_ID": "extcontact3",
                "Email": "p@example.com",
            },
            {
                "id": CONTACT2,
                "Last_Name": "Smith",
                "External_Contact_ID": "extcontact4",
                "Email": "taken@example.com",
            },
        ],
        "Deals": [
            {"id": DEAL, "Deal_Name": "Deal 3", "External_Deal_ID": "extdeal3"},
            {"id": DEAL2, "Deal_Name": "Deal 2", "External_Deal_ID": "extdeal2"},
            {"id": DEAL_UPDATE, "Deal_Name": "v4 deal", "Stage": "Qualification"},
        ],
        "Leads": [
            {"id": LEAD, "Last_Name": "Lead v7", "External_Lead_ID": "LEAD-EXT-1"},
            {"id": LEAD_V21, "Last_Name": "Lead v2.1"},
        ],
        "Campaigns": [{"id": c, "Campaign_Name": f"Campaign {c[-4:]}"} for c in CAMPAIGNS],
        "Products": [{"id": PRODUCT, "Product_Name": "Widget", "External_Product_ID": "PROD-EXT-1"}],
        "Price_Books": [{"id": p, "Price_Book_Name": f"Book {p[-4:]}"} for p in PRICE_BOOKS],
    },
    "relations": [],
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Res:
    """One HTTP answer."""

    status: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Api:
    """Calls a sandbox the way a client would."""

    sb: Sandbox
    session: aiohttp.ClientSession
    token: str = TOKEN

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        auth: str | None = None,
    ) -> Res:
        sent = {"Authorization": auth if auth is not None else f"Zoho-oauthtoken {token or self.token}"}
        if auth == "":
            sent = {}
        sent.update(headers or {})
        body = orjson.dumps(json) if json is not None else data
        async with self.session.request(method, self.sb.url + path, data=body, headers=sent) as resp:
            raw = await resp.read()
            return Res(status=resp.status, body=orjson.loads(raw) if raw else None, headers=dict(resp.headers))

    async def token_request(self, params: dict[str, str], *, as_query: bool = False) -> Res:
        url = self.sb.url + "/oauth/v2/token"
        ctx = self.session.post(url, params=params) if as_query else self.session.post(url, data=params)
        async with ctx as resp:
            return Res(status=resp.status, body=await resp.json(), headers=dict(resp.headers))

    async def admin(self, method: str, name: str, json: Any = None) -> Res:
        body = orjson.dumps(json) if json is not None else None
        async with self.session.request(method, f"{self.sb.url}/__sandbox/{name}", data=body) as resp:
            return Res(status=resp.status, body=await resp.json(), headers=dict(resp.headers))


def refresh_params(**overrides: str) -> dict[str, str]:
    """A valid refresh-token grant, with some parameters overridden."""
    params = {
        "grant_type": "refresh_token",
        "client_id": "sandbox-client-id",
        "client_secret": "sandbox-client-secret",
        "refresh_token": "sandbox-refresh-token",
    }
    params.update(overrides)
    return params
