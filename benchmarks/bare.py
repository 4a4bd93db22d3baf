"""The bare aiohttp loop: the physical ceiling every syncengine figure is divided by.

``python -m benchmarks.bare --base URL --changes N --concurrency C`` makes the same calls syncengine makes
for the contacts benchmark (``PUT /crm/v7/Contacts`` with ``X-EXTERNAL: Contacts.External_Contact_ID``,
100 records a call, the same records), from one aiohttp session with C tasks in a loop, each taking the
next prebuilt body. The token is fetched once before the clock starts. Each answer is read and parsed
(orjson) and its SUCCESS entries counted, as any client must. No ledger, no batching, no retries but one
for a 429 (counted: there should be none). Prints one JSON line with the figures.

``--build`` builds each body when its call is made instead (100 record dicts from the rows, then
orjson): the least any Python client that turns rows into calls must do, a second reference.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable, Iterator
from itertools import islice

import aiohttp
import orjson

from benchmarks.common import CREDENTIALS, contact_key, contact_records

__all__ = ["bare_loop", "built_bodies", "fetch_token", "main", "prebuilt_bodies"]


def prebuilt_bodies(changes: int, per_call: int = 100) -> list[bytes]:
    records = contact_records(changes)
    bodies = []
    while chunk := list(islice(records, per_call)):
        bodies.append(orjson.dumps({"data": chunk}))
    return bodies


async def fetch_token(session: aiohttp.ClientSession, base: str) -> str:
    form = {
        "grant_type": "refresh_token",
        "client_id": CREDENTIALS["ZOHO_CLIENT_ID"],
        "client_secret": CREDENTIALS["ZOHO_CLIENT_SECRET"],
        "refresh_token": CREDENTIALS["ZOHO_REFRESH_TOKEN"],
    }
    async with session.post(f"{base}/oauth/v2/token", data=form) as response:
        return str(orjson.loads(await response.read())["access_token"])


def built_bodies(changes: int, per_call: int = 100) -> Iterator[bytes]:
    """The same bodies, each built only when it is taken: dicts from row tuples, then orjson."""
    rows = ((f"After{i}", "Buyer", contact_key(i)) for i in range(changes))
    while chunk := list(islice(rows, per_call)):
        yield orjson.dumps(
            {"data": [{"Last_Name": last, "Title": title, "External_Contact_ID": key} for last, title, key in chunk]}
        )


async def bare_loop(base: str, bodies: Iterable[bytes], concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        token = await fetch_token(session, base)
        headers = {
            "Authorization": f"Zoho-oauthtoken {token}",
            "Content-Type": "application/json",
            "X-EXTERNAL": "Contacts.External_Contact_ID",
        }
        url = f"{base}/crm/v7/Contacts"
        queue = iter(bodies)
        counts = {"calls": 0, "succeeded": 0, "throttled": 0, "other": 0}

        async def task() -> None:
            for body in queue:  # a shared iterator: each body is taken once
                while True:
                    async with session.put(url, data=body, headers=headers) as response:
                        raw = await response.read()
                        status = response.status
                    counts["calls"] += 1
                    if status == 429:
                        counts["throttled"] += 1
                        continue
                    entries = orjson.loads(raw).get("data") or []
                    ok = sum(1 for e in entries if e.get("code") == "SUCCESS")
                    counts["succeeded"] += ok
                    counts["other"] += len(entries) - ok
                    break

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(task() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    records = counts["succeeded"] + counts["other"]
    return {
        **counts,
        "records": records,
        "elapsed_s": round(elapsed, 3),
        "rate": round(records / elapsed, 1),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_call": round(cpu * 1000 / max(1, counts["calls"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare")
    parser.add_argument("--base", required=True)
    parser.add_argument("--changes", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--build", action="store_true", help="build each body per call, not beforehand")
    args = parser.parse_args()
    bodies = built_bodies(args.changes) if args.build else prebuilt_bodies(args.changes)
    result = asyncio.run(bare_loop(args.base, bodies, args.concurrency))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
