"""Sources followed for `syncengine watch`: read, yield ``IDLE``, wait, read what is new, forever.

- A table (SQL source with a cursor column) is re-read from the last position read, so each poll costs
  one cheap keyset query; rows re-read inside the lag window (``replay``) that were already read by this
  process are dropped here, so a quiet table does not fill the ledger with SKIPPED rows. After a restart,
  rows above the stored position that the last watch already finished (``done``: a stop leaves the
  position below a change still pending, and the rows done after it are read again) are dropped too:
  a restarted watch never sends again a row it already applied.
- A file is re-read when its contents change (a new export dropped in place); its rows get fresh,
  increasing seqs, and skip-unchanged makes the rows that did not change cost nothing.

Seqs keep increasing for the life of the follower, as the watermark needs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import anyio
import structlog

from syncengine.config import SourceConfig
from syncengine.errors import SourceError
from syncengine.intake import IDLE
from syncengine.positions import fingerprint
from syncengine.readers import Reader, Row, open_reader
from syncengine.readers.sql import Position, SqlRow

__all__ = ["follow_file", "follow_table"]

log = structlog.get_logger("syncengine.follow")

_REPLAYS_KEPT = 100_000  # rows remembered to drop their lag-window replays: bounded memory


async def follow_file(source: SourceConfig, *, interval: float) -> AsyncIterator[Row | object]:
    """The file's rows each time its contents change, with seqs that keep increasing."""
    seen: str | None = None
    offset = 0
    while True:
        now = fingerprint(source)
        if now != seen and not now.startswith("unreadable"):
            last = 0
            try:
                async with open_reader(source) as reader:
                    async for row in reader:
                        last = row.seq
                        yield replace(row, seq=offset + row.seq)
                seen = now
            except SourceError as exc:  # replaced mid-read, say: try again at the next poll
                log.warning("syncengine.source_retrying", source=str(source.path), reason=str(exc))
            offset += last
        yield IDLE
        await anyio.sleep(interval)


async def follow_table(
    open_table: Callable[[Position | None], Reader],
    *,
    since: Position | None,
    interval: float,
    done: Callable[[SqlRow], bool] | None = None,
) -> AsyncIterator[Row | object]:
    """New and changed rows of a table after ``since``, poll after poll, less those ``done`` says an earlier
    watch finished (it is asked only until the follower has caught up once)."""
    position = since
    seq = 0
    read: OrderedDict[tuple[str, str], None] = OrderedDict()  # (key, cursor) of rows read lately
    while True:
        try:
            async with open_table(position) as reader:
                async for row in reader:
                    assert isinstance(row, SqlRow)
                    mark = (repr(row.position[1]), repr(row.position[0]))
                    if row.replay and mark in read:
                        continue  # read before by this follower, unchanged since: not a new change
                    read[mark] = None
                    if len(read) > _REPLAYS_KEPT:
                        read.popitem(last=False)
                    if not row.replay:
                        position = row.position
                    if done is not None and done(row):
                        continue  # finished by the last watch, after a change that was still pending
                    seq += 1
                    yield replace(row, seq=seq)
        except SourceError as exc:  # a locked or unreachable database: a watch waits for it
            log.warning("syncengine.source_retrying", source=str(exc.source), reason=exc.reason)
        else:
            done = None  # caught up: every row read from here on is newer than what the last watch saw
        yield IDLE
        await anyio.sleep(interval)
