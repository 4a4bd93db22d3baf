"""The batcher's invariants: ≤ max per payload, a key never in two payloads in flight, order per key."""

from __future__ import annotations

import random

import anyio
import pytest

from syncengine.batcher import Batcher
from syncengine.model import Change, Operation, Target

UPDATE = Target(operation=Operation.UPDATE, module="Contacts", match_field="External_Contact_ID")
LINK = Target(
    operation=Operation.UPDATE_RELATED,
    module="Contacts",
    related_list="Deals",
    related_module="Deals",
    match_field="External_Deal_ID",
    parent_match_field="External_Contact_ID",
)
UNLINK = Target(operation=Operation.DELETE_RELATED, module="Contacts", related_list="Deals", related_module="Deals")


def change(seq: int, key: str, target: Target = UPDATE, parent: str | None = None, **fields: object) -> Change:
    return Change(stream="s", seq=seq, target=target, key=key, parent=parent, fields=dict(fields))  # type: ignore[arg-type]


async def test_full_buckets_are_sealed_at_max_items() -> None:
    """250 distinct keys become payloads of 100, 100 and 50."""
    batcher = Batcher()
    batcher.open_input()
    for i in range(250):
        await batcher.put(change(i, f"k{i}"), max_items=100, linger=60)
    batcher.close_input()
    sizes = []
    while (p := await batcher.get()) is not None:
        sizes.append(len(p.items))
        batcher.done(p)
    assert sizes == [100, 100, 50]


async def test_repeated_key_in_one_bucket_coalesces_later_wins() -> None:
    """Two changes to one key that meet in a bucket become one record; both changes travel with it."""
    batcher = Batcher()
    batcher.open_input()
    await batcher.put(change(1, "a", Email="old@x.com", Phone="1"), max_items=100, linger=60)
    await batcher.put(change(2, "a", Email="new@x.com"), max_items=100, linger=60)
    batcher.close_input()
    payload = await batcher.get()
    assert payload is not None and len(payload.items) == 1
    item = payload.items[0]
    assert dict(item.fields) == {"Email": "new@x.com", "Phone": "1"}
    assert [c.seq for c in item.changes] == [1, 2]


async def test_key_in_flight_waits_for_done() -> None:
    """A change whose key is in flight is not handed out until the first payload is done."""
    batcher = Batcher()
    batcher.open_input()
    await batcher.put(change(1, "a"), max_items=1, linger=60)
    first = await batcher.get()
    assert first is not None
    await batcher.put(change(2, "a"), max_items=1, linger=60)
    await batcher.put(change(3, "b"), max_items=1, linger=60)
    second = await batcher.get()
    assert second is not None and second.items[0].key == "b"  # "a" must wait
    batcher.done(second)
    batcher.close_input()
    batcher.done(first)
    third = await batcher.get()
    assert third is not None and [c.seq for c in third.changes] == [2]


async def test_different_operations_on_one_key_keep_source_order() -> None:
    """A link then an unlink of the same pair never travel together nor overtake each other."""
    batcher = Batcher()
    batcher.open_input()
    await batcher.put(change(1, "d1", LINK, parent="c1", Contact_Role="x"), max_items=100, linger=60)
    await batcher.put(change(2, "d1", UNLINK, parent="c1"), max_items=100, linger=60)
    batcher.close_input()
    first = await batcher.get()
    assert first is not None and first.target is LINK
    batcher.done(first)
    second = await batcher.get()
    assert second is not None and second.target is UNLINK
    batcher.done(second)
    assert await batcher.get() is None


async def test_linger_seals_a_partial_bucket() -> None:
    """A lone change goes out after its linger even though input stays open."""
    batcher = Batcher()
    batcher.open_input()
    await batcher.put(change(1, "a"), max_items=100, linger=0.05)
    with anyio.fail_after(5):
        payload = await batcher.get()
    assert payload is not None and payload.items[0].key == "a"


async def test_put_blocks_at_max_buffered() -> None:
    """The batcher never holds more than max_buffered changes: put waits for get."""
    batcher = Batcher(max_buffered=10)
    batcher.open_input()
    for i in range(10):
        await batcher.put(change(i, f"k{i}"), max_items=100, linger=60)
    with anyio.move_on_after(0.2) as scope:
        await batcher.put(change(10, "k10"), max_items=100, linger=60)
    assert scope.cancelled_caught
    payload = await batcher.get()  # put sealed the partial bucket when it found itself full
    assert payload is not None and len(payload.items) == 10
    with anyio.fail_after(5):
        await batcher.put(change(10, "k10"), max_items=100, linger=60)


async def test_halt_returns_every_held_change_of_the_stream() -> None:
    """Halting a stream hands back what is open, waiting or ready, and refuses further puts."""
    batcher = Batcher()
    batcher.open_input()
    await batcher.put(change(1, "a"), max_items=1, linger=60)
    inflight = await batcher.get()
    await batcher.put(change(2, "a"), max_items=1, linger=60)  # waits on "a"
    await batcher.put(change(3, "b"), max_items=1, linger=60)  # ready
    await batcher.put(change(4, "c"), max_items=5, linger=60)  # open
    dropped = batcher.halt("s")
    assert sorted(c.seq for c in dropped) == [2, 3, 4]
    assert not await batcher.put(change(5, "d"), max_items=1, linger=60)
    assert inflight is not None
    batcher.done(inflight)
    batcher.close_input()
    assert await batcher.get() is None
    assert batcher.buffered == 0


@pytest.mark.parametrize("seed", [1, 2, 3], ids=lambda s: f"seed{s}")
async def test_concurrent_workers_never_share_a_key_and_keep_order(seed: int) -> None:
    """Random keys, several workers finishing out of order: no key twice in flight, order per key kept."""
    rng = random.Random(seed)
    batcher = Batcher(max_buffered=300)
    in_flight: set[str] = set()
    applied: dict[str, list[int]] = {}
    violations: list[str] = []

    async def feed() -> None:
        batcher.open_input()
        for seq in range(3000):
            await batcher.put(change(seq, f"k{rng.randrange(60)}"), max_items=rng.choice([1, 7, 100]), linger=0.01)
        batcher.close_input()

    async def work() -> None:
        while (p := await batcher.get()) is not None:
            keys = [item.key for item in p.items]
            if len(set(keys)) != len(keys) or in_flight & set(keys):
                violations.append(str(keys))
            in_flight.update(keys)
            await anyio.sleep(rng.random() / 500)
            for item in p.items:
                applied.setdefault(item.key, []).extend(c.seq for c in item.changes)
            in_flight.difference_update(keys)
            batcher.done(p)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        for _ in range(8):
            tg.start_soon(work)
    assert not violations
    assert sum(len(v) for v in applied.values()) == 3000
    assert all(seqs == sorted(seqs) for seqs in applied.values())


async def test_halt_wakes_other_streams_changes_queued_behind_its_keys() -> None:
    """A change of another stream waiting on a key the halted stream held goes on (no hang)."""
    batcher = Batcher()
    batcher.open_input()
    link = Change(stream="links", seq=1, target=LINK, key="d1", parent="c1", fields={"Contact_Role": "x"})
    unlink = Change(stream="unlinks", seq=1, target=UNLINK, key="d1", parent="c1")
    await batcher.put(link, max_items=100, linger=60)
    await batcher.put(unlink, max_items=100, linger=60)  # waits behind the open link bucket
    dropped = batcher.halt("links")
    assert [c.stream for c in dropped] == ["links"]
    batcher.close_input()
    with anyio.fail_after(5):
        payload = await batcher.get()
    assert payload is not None and payload.changes == (unlink,)
    batcher.done(payload)
    assert await batcher.get() is None and batcher.buffered == 0
