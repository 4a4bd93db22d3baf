"""Peer: the naive asyncio script everyone writes first.

``python -m benchmarks.peer_naive --base URL --source CSV`` reads the CSV, builds every 100-record body,
and fires them all at once with ``asyncio.gather`` from one default aiohttp session (whose connector
allows 100 connections): no limiter, no retry. A record counts as lost unless its entry came back
SUCCESS. The clock includes the token fetch. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from itertools import islice
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.bare import fetch_token

__all__ = ["main"]


async def run(base: str, source: Path) -> dict[str, Any]:
    started = time.perf_counter()
    cpu0 = time.process_time()
    bodies: list[tuple[int, bytes]] = []
    with source.open(newline="") as handle:
        rows = csv.DictReader(handle)
        while chunk := list(islice(rows, 100)):
            data = [
                {"Last_Name": r["last_name"], "Title": r["title"], "External_Contact_ID": r["erp_id"]} for r in chunk
            ]
            bodies.append((len(chunk), orjson.dumps({"data": data})))
    counts = {"calls": 0, "succeeded": 0, "throttled": 0, "lost": 0, "read": sum(n for n, _ in bodies)}
    async with aiohttp.ClientSession() as session:
        token = await fetch_token(session, base)
        headers = {
            "Authorization": f"Zoho-oauthtoken {token}",
            "Content-Type": "application/json",
            "X-EXTERNAL": "Contacts.External_Contact_ID",
        }

        async def send(n: int, body: bytes) -> None:
            async with session.put(f"{base}/crm/v7/Contacts", data=body, headers=headers) as response:
                raw = await response.read()
                status = response.status
            counts["calls"] += 1
            if status == 429:
                counts["throttled"] += 1
            answer = orjson.loads(raw) if raw else {}
            entries = answer.get("data") if isinstance(answer, dict) else None
            ok = sum(1 for e in entries or [] if e.get("code") == "SUCCESS")
            counts["succeeded"] += ok
            counts["lost"] += n - ok

        await asyncio.gather(*(send(n, body) for n, body in bodies))
    elapsed = time.perf_counter() - started
    return {
        **counts,
        "elapsed_s": round(elapsed, 3),
        "rate": round(counts["succeeded"] / elapsed, 1),
        "cpu_s": round(time.process_time() - cpu0, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_naive")
    parser.add_argument("--base", required=True)
    parser.add_argument("--source", type=Path, required=True)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args.base, args.source))).decode())


if __name__ == "__main__":
    main()
