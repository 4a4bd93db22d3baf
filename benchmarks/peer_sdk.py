"""Peer: the official Zoho Python SDK (zohocrmsdk7-0), used the way its README shows.

``python -m benchmarks.peer_sdk --base URL --source CSV --work DIR`` initializes the SDK against the
sandbox (a custom ``DataCenter.Environment`` whose every URL is the sandbox, as tests/sandbox does),
then reads the same CSV as syncengine and sends it as bulk updates of 100 records, one call at a time
(``RecordOperations("Contacts").update_records`` with ``X-EXTERNAL: Contacts.External_Contact_ID``).
No retries: a call the CRM refuses (429 or otherwise) loses its records. The clock includes the SDK's
token fetch and metadata reads, as syncengine's includes its own start. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import time
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

__all__ = ["main"]


def _init(base: str, work: Path) -> None:
    from zohocrmsdk.src.com.zoho.api.authenticator.oauth_token import OAuthToken
    from zohocrmsdk.src.com.zoho.api.authenticator.store.file_store import FileStore
    from zohocrmsdk.src.com.zoho.api.logger import Logger
    from zohocrmsdk.src.com.zoho.crm.api.dc.data_center import DataCenter
    from zohocrmsdk.src.com.zoho.crm.api.initializer import Initializer
    from zohocrmsdk.src.com.zoho.crm.api.sdk_config import SDKConfig

    environment = DataCenter.Environment(base, base + "/oauth/v2/token", base)
    token = OAuthToken(
        client_id="sandbox-client-id",
        client_secret="sandbox-client-secret",
        refresh_token="sandbox-refresh-token",
        find_user=False,
    )
    Initializer.initialize(
        environment=environment,
        token=token,
        store=FileStore(str(work / "sdk_tokens.txt")),
        sdk_config=SDKConfig(auto_refresh_fields=False, pick_list_validation=False, update_api_domain=False),
        resource_path=str(work),
        logger=Logger.get_instance(level=Logger.Levels.ERROR, file_path=str(work / "sdk.log")),
    )


def run(base: str, source: Path, work: Path) -> dict[str, Any]:
    from zohocrmsdk.src.com.zoho.crm.api import HeaderMap
    from zohocrmsdk.src.com.zoho.crm.api.record import BodyWrapper, Record, RecordOperations, UpdateRecordsHeader

    started = time.perf_counter()
    cpu0 = time.process_time()
    _init(base, work)
    operations = RecordOperations("Contacts")
    counts = {"calls": 0, "succeeded": 0, "throttled": 0, "lost": 0, "read": 0}
    with source.open(newline="") as handle:
        rows = csv.DictReader(handle)
        while chunk := list(islice(rows, 100)):
            counts["read"] += len(chunk)
            records = []
            for row in chunk:
                record = Record()
                record.add_key_value("Last_Name", row["last_name"])
                record.add_key_value("Title", row["title"])
                record.add_key_value("External_Contact_ID", row["erp_id"])
                records.append(record)
            body = BodyWrapper()
            body.set_data(records)
            headers = HeaderMap()
            headers.add(UpdateRecordsHeader.x_external, "Contacts.External_Contact_ID")
            response = operations.update_records(body, headers)
            counts["calls"] += 1
            ok = 0
            if response is not None:
                if response.get_status_code() == 429:
                    counts["throttled"] += 1
                wrapper = response.get_object()
                if type(wrapper).__name__ == "ActionWrapper":
                    ok = sum(1 for entry in wrapper.get_data() if entry.get_code().get_value() == "SUCCESS")
            counts["succeeded"] += ok
            counts["lost"] += len(chunk) - ok
    elapsed = time.perf_counter() - started
    return {
        **counts,
        "elapsed_s": round(elapsed, 3),
        "rate": round(counts["succeeded"] / elapsed, 1),
        "cpu_s": round(time.process_time() - cpu0, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_sdk")
    parser.add_argument("--base", required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(orjson.dumps(run(args.base, args.source, args.work)).decode())


if __name__ == "__main__":
    main()
