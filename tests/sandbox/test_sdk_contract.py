"""Contract tests: the official Zoho Python SDK (zohocrmsdk7-0) drives the sandbox and parses every answer.

The SDK is synchronous and global (one Initializer), so each test initializes it against its own
sandbox and runs it in a worker thread while the sandbox serves in the test's event loop. The SDK
refreshes its token through the sandbox's accounts endpoint and fetches field and related-list
metadata first, as it does against Zoho.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import CAMPAIGNS, CONTACT, CONTACT2, DEAL, SEED

pytest.importorskip(
    "zohocrmsdk.src.com.zoho.crm.api.initializer",
    reason="the official Zoho SDK (zohocrmsdk7-0, a dev dependency) is not installed",
)

from zohocrmsdk.src.com.zoho.api.authenticator.oauth_token import OAuthToken
from zohocrmsdk.src.com.zoho.api.authenticator.store.file_store import FileStore
from zohocrmsdk.src.com.zoho.api.logger import Logger
from zohocrmsdk.src.com.zoho.crm.api import HeaderMap, ParameterMap
from zohocrmsdk.src.com.zoho.crm.api import related_records as rr
from zohocrmsdk.src.com.zoho.crm.api.dc.data_center import DataCenter
from zohocrmsdk.src.com.zoho.crm.api.initializer import Initializer
from zohocrmsdk.src.com.zoho.crm.api.record import BodyWrapper, Record, RecordOperations
from zohocrmsdk.src.com.zoho.crm.api.sdk_config import SDKConfig
from zohocrmsdk.src.com.zoho.crm.api.util import Choice


@pytest.fixture
async def sdk_sandbox() -> AsyncIterator[Sandbox]:
    """A sandbox with OAuth only (the SDK gets its token from the accounts endpoint)."""
    async with Sandbox(SandboxOptions()) as sb:
        sb.state.load(SEED)
        yield sb


def _init(url: str, tmp: Path) -> None:
    # The custom environment of zoho-api.md §8: every URL points at the sandbox.
    env = DataCenter.Environment(url, url + "/oauth/v2/token", url)
    token = OAuthToken(
        client_id="sandbox-client-id",
        client_secret="sandbox-client-secret",
        refresh_token="sandbox-refresh-token",
        find_user=False,
    )
    Initializer.initialize(
        environment=env,
        token=token,
        store=FileStore(str(tmp / "sdk_tokens.txt")),
        sdk_config=SDKConfig(auto_refresh_fields=False, pick_list_validation=True, update_api_domain=False),
        resource_path=str(tmp),
        logger=Logger.get_instance(level=Logger.Levels.INFO, file_path=str(tmp / "sdk.log")),
    )


def _entries(response: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(class, code, details) of every entry; fails unless the SDK parsed an ActionWrapper."""
    assert response is not None, "the SDK could not parse the answer (it returns None on SDKException)"
    wrapper = response.get_object()
    assert type(wrapper).__name__ == "ActionWrapper", type(wrapper)
    out = []
    for entry in wrapper.get_data():
        assert type(entry).__name__ in ("SuccessResponse", "APIException")
        out.append((type(entry).__name__, entry.get_code().get_value(), entry.get_details()))
    return out


async def _run(sb: Sandbox, tmp: Path, work: Callable[[], Any]) -> Any:
    def job() -> Any:
        _init(sb.url, tmp)
        return work()

    result = await anyio.to_thread.run_sync(job)
    log = (tmp / "sdk.log").read_text(encoding="utf-8")
    assert "Exception" not in log and " ERROR " not in log, log[-2000:]
    return result


async def test_sdk_bulk_update(sdk_sandbox: Sandbox, tmp_path: Path) -> None:
    """RecordOperations.update_records: 207 parsed into SuccessResponse and APIException entries."""

    def work() -> tuple[int, list[tuple[str, str, dict[str, Any]]]]:
        records = []
        for rid, last in ((int(CONTACT), "Smith"), (int(CONTACT2), "Jones"), (999, "X")):
            record = Record()
            record.set_id(rid)
            record.add_key_value("Last_Name", last)
            records.append(record)
        body = BodyWrapper()
        body.set_data(records)
        response = RecordOperations("Contacts").update_records(body)
        return response.get_status_code(), _entries(response)

    status, entries = await _run(sdk_sandbox, tmp_path, work)
    assert status == 207
    assert [(c, code) for c, code, _ in entries] == [
        ("SuccessResponse", "SUCCESS"),
        ("SuccessResponse", "SUCCESS"),
        ("APIException", "INVALID_DATA"),
    ]
    assert (sdk_sandbox.state.get_record("Contacts", CONTACT2) or {})["Last_Name"] == "Jones"
    assert sdk_sandbox.stats.refreshes == 1 and sdk_sandbox.stats.calls["metadata"] >= 1


async def test_sdk_update_related_by_id(sdk_sandbox: Sandbox, tmp_path: Path) -> None:
    """RelatedRecordsOperations.update_related_records links campaigns with a picklist relation field."""

    def work() -> list[tuple[str, str, dict[str, Any]]]:
        records = []
        for cid, status in zip(CAMPAIGNS, ("Active", "Planning"), strict=True):
            record = Record()
            record.set_id(int(cid))
            record.add_key_value("Member_Status", Choice(status))
            records.append(record)
        body = rr.BodyWrapper()
        body.set_data(records)
        return _entries(rr.RelatedRecordsOperations("Campaigns", "Contacts").update_related_records(int(CONTACT), body))

    entries = await _run(sdk_sandbox, tmp_path, work)
    assert [(c, code) for c, code, _ in entries] == [("SuccessResponse", "SUCCESS")] * 2
    assert sdk_sandbox.state.related("Contacts", CONTACT, "Campaigns") == {
        CAMPAIGNS[0]: {"Member_Status": "Active"},
        CAMPAIGNS[1]: {"Member_Status": "Planning"},
    }


async def test_sdk_update_related_by_external_id(sdk_sandbox: Sandbox, tmp_path: Path) -> None:
    """update_related_records_using_external_id with both external fields in X-EXTERNAL."""

    def work() -> list[tuple[str, str, dict[str, Any]]]:
        record = Record()
        record.add_key_value("External_Deal_ID", "extdeal3")
        body = rr.BodyWrapper()
        body.set_data([record])
        headers = HeaderMap()
        headers.add(
            rr.UpdateRelatedRecordsUsingExternalIDHeader.x_external,
            "Contacts.External_Contact_ID,Deals.External_Deal_ID",
        )
        ops = rr.RelatedRecordsOperations("Deals", "Contacts")
        return _entries(ops.update_related_records_using_external_id("extcontact3", body, headers))

    entries = await _run(sdk_sandbox, tmp_path, work)
    ((kind, code, details),) = entries
    assert (kind, code, details["External_Deal_ID"], str(details["id"])) == (
        "SuccessResponse",
        "SUCCESS",
        "extdeal3",
        DEAL,
    )
    assert sdk_sandbox.state.is_linked("Contacts", CONTACT, "Deals", DEAL)


async def test_sdk_delink(sdk_sandbox: Sandbox, tmp_path: Path) -> None:
    """delink_records with ids=a,b: one "relation removed", one "relation not found", both parsed."""
    sdk_sandbox.state.link(
        "Contacts", CONTACT, sdk_sandbox.state.schema.lists["Contacts"]["Campaigns"], CAMPAIGNS[0], {}
    )

    def work() -> tuple[int, list[tuple[str, str, dict[str, Any]]]]:
        params = ParameterMap()
        params.add(rr.DelinkRecordsParam.ids, CAMPAIGNS[0])
        params.add(rr.DelinkRecordsParam.ids, CAMPAIGNS[1])
        response = rr.RelatedRecordsOperations("Campaigns", "Contacts").delink_records(int(CONTACT), params)
        return response.get_status_code(), _entries(response)

    status, entries = await _run(sdk_sandbox, tmp_path, work)
    assert status == 207
    assert [(c, code) for c, code, _ in entries] == [
        ("SuccessResponse", "SUCCESS"),
        ("APIException", "INVALID_DATA"),
    ]
    assert sdk_sandbox.state.related("Contacts", CONTACT, "Campaigns") == {}
