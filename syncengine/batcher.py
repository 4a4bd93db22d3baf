"""Keyed batching: changes in, payloads of at most 100 records out.

The invariants (DESIGN §2, promise 2) live here:
- a key (module, parent, record key) is never in two payloads in flight at once: a change whose key is
  in flight, or queued behind one, waits until the worker reports that payload ``done``;
- changes to one key apply in source order: they coalesce into one record when they meet in the same
  open bucket (fields merged, later wins), and otherwise wait their turn; a group handed over with
  ``put_group`` is always one record (a resume re-sends what the killed process merged, merged the same way);
- memory is bounded: ``put`` waits while ``max_buffered`` changes are held (open, waiting or ready).

Workers pull with ``get``; there is no separate timer task, ``get`` itself seals buckets whose linger
has run out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from syncengine.model import JSON, Change, Operation, Payload, PayloadItem, Target

__all__ = [
    "Batcher",
    "Endpoint",
    "OrderKey",
    "net_start",
]

OrderKey = tuple[str, str | None, str]
Endpoint = tuple[str, Target, str | None]  # (stream, target, parent): one HTTP call's worth


@dataclass(slots=True)
class _Item:
    key: str
    fields: dict[str, JSON]
    changes: list[Change]


@dataclass(slots=True)
class _Bucket:
    endpoint: Endpoint
    max_items: int
    deadline: float
    items: dict[OrderKey, _Item] = field(default_factory=dict)
    changes: int = 0


def net_start(group: tuple[Change, ...]) -> int:
    """Where the changes that make a group's one record begin: after the last change of another kind.

    A group of one key's changes (``put_group``) may mix delinks and links of one relation (``delete_when``):
    the record is the last change's kind, and what came before a change of the other kind is superseded by
    it (a link after a delink is the link; a delink erases the links before it). The superseded changes
    still ride in the record, so each gets the record's outcome.
    """
    last = group[-1].target
    for index in range(len(group) - 1, -1, -1):
        if group[index].target != last:
            return index + 1
    return 0


class Batcher:
    """Groups changes into payloads; see the module docstring for the invariants."""

    def __init__(self, *, max_buffered: int = 10_000, clock: Callable[[], float] = anyio.current_time) -> None:
        self._max_buffered = max_buffered
        self._clock = clock
        self._buckets: dict[Endpoint, _Bucket] = {}
        self._open: dict[OrderKey, _Bucket] = {}  # key -> the open bucket holding it
        self._in_flight: set[OrderKey] = set()
        self._waiting: dict[OrderKey, deque[tuple[tuple[Change, ...], int, float]]] = {}
        self._ready: deque[Payload] = deque()
        self._buffered = 0
        self._inputs = 0
        self._halted: set[str] = set()
        self._stopped = False
        self.stopping = anyio.Event()  # set by stop(): waits that should end with the run can watch it
        # Two wake-ups, so that a change handed over wakes no worker unless it made a payload (or a
        # bucket whose linger a worker must time): with one, every put woke every idle worker.
        self._output = anyio.Event()  # get() waits on it: a payload, a new deadline, a key freed, an end
        self._space = anyio.Event()  # put() waits on it: buffered changes went out

    # -- inputs -----------------------------------------------------------------------------------

    def open_input(self) -> None:
        """A reader starts; ``get`` ends only after every opened input has closed."""
        self._inputs += 1

    def close_input(self) -> None:
        self._inputs -= 1
        self._output.set()

    async def put(self, change: Change, *, max_items: int, linger: float) -> bool:
        """Hand over one change; False (and nothing held) when its stream was halted or the run stopped."""
        return await self.put_group((change,), max_items=max_items, linger=linger)

    async def put_group(self, group: tuple[Change, ...], *, max_items: int, linger: float) -> bool:
        """Hand over changes of one key, in source order, that must go out as one record (never split)."""
        while self._buffered >= self._max_buffered and not self._stopped:
            if not self._ready:
                self._seal_all()  # full of partial buckets: send them rather than wait for linger
                self._output.set()
            await self._wait_space()
        if self._stopped or group[0].stream in self._halted:
            return False
        self._buffered += len(group)
        ready, buckets = len(self._ready), len(self._buckets)
        self._admit(group, max_items, linger)
        if len(self._ready) > ready or len(self._buckets) > buckets:
            self._output.set()
        return True

    # -- outputs ----------------------------------------------------------------------------------

    async def get(self) -> Payload | None:
        """The next payload to send, or None when every input is closed and nothing is left."""
        while True:
            if self._stopped:
                return None
            if self._ready:
                payload = self._ready.popleft()
                self._buffered -= sum(len(item.changes) for item in payload.items)
                self._space.set()
                return payload
            if self._inputs == 0:
                if not self._buckets and not self._waiting:
                    return None
                self._seal_all()
                if self._ready:
                    continue
                # only waiting changes are left: their keys are in flight
                await self._wait_output()
                continue
            now = self._clock()
            due = [b for b in self._buckets.values() if b.deadline <= now]
            for bucket in due:
                self._seal(bucket)
            if self._ready:
                continue
            deadline = min((b.deadline for b in self._buckets.values()), default=None)
            with anyio.move_on_after(None if deadline is None else max(0.0, deadline - now)):
                await self._wait_output()

    def done(self, payload: Payload) -> None:
        """The worker is finished with ``payload``: its keys are free for the changes waiting on them."""
        self._release(payload)
        self._output.set()

    def _release(self, payload: Payload) -> None:
        for item in payload.items:
            key = item.changes[0].order_key
            self._in_flight.discard(key)
            self._wake(key)

    def _wake(self, key: OrderKey) -> None:
        """``key`` is free: admit the changes queued behind it, in order."""
        if key in self._in_flight or key in self._open:
            return
        queued = self._waiting.pop(key, None)
        while queued:
            group, max_items, linger = queued.popleft()
            self._admit(group, max_items, linger)

    def stop(self) -> None:
        """Stop handing out payloads and taking changes: what is held stays pending, for a resumed run."""
        self._stopped = True
        self.stopping.set()
        self._notify()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def halt(self, stream: str) -> list[Change]:
        """Stop a stream: take back every change of it that is held and not in flight.

        Keys it frees may have changes of other streams queued behind them: those go on.
        """
        self._halted.add(stream)
        dropped: list[Change] = []
        freed: list[OrderKey] = []
        for endpoint, bucket in list(self._buckets.items()):
            if endpoint[0] == stream:
                del self._buckets[endpoint]
                for key, item in bucket.items.items():
                    del self._open[key]
                    freed.append(key)
                    dropped.extend(item.changes)
        kept: deque[Payload] = deque()
        for payload in self._ready:  # sealed but never sent: their keys were only reserved
            if payload.items[0].changes[0].stream != stream:
                kept.append(payload)
                continue
            for sealed in payload.items:
                self._in_flight.discard(sealed.changes[0].order_key)
                freed.append(sealed.changes[0].order_key)
                dropped.extend(sealed.changes)
        self._ready = kept
        for key, queued in list(self._waiting.items()):
            rest = deque(entry for entry in queued if entry[0][0].stream != stream)
            dropped.extend(change for entry in queued if entry[0][0].stream == stream for change in entry[0])
            if rest:
                self._waiting[key] = rest
            else:
                del self._waiting[key]
        self._buffered -= len(dropped)
        for key in freed:
            self._wake(key)
        self._notify()
        return dropped

    @property
    def buffered(self) -> int:
        return self._buffered

    # -- internals --------------------------------------------------------------------------------

    def _admit(self, group: tuple[Change, ...], max_items: int, linger: float) -> None:
        change = group[-1]  # a group goes out as its last change: a delink, or a link after the last delink
        key = change.order_key
        if key in self._in_flight or key in self._waiting:
            self._waiting.setdefault(key, deque()).append((group, max_items, linger))
            return
        endpoint: Endpoint = (change.stream, change.target, change.parent)
        start = net_start(group)
        holder = self._open.get(key)
        if holder is not None:
            if holder.endpoint == endpoint and start == 0:
                item = holder.items[key]
                for later in group:
                    item.fields.update(later.fields)
                    item.changes.append(later)
                holder.changes += len(group)
            else:
                self._waiting.setdefault(key, deque()).append((group, max_items, linger))
            return
        bucket = self._buckets.get(endpoint)
        if bucket is None:
            bucket = _Bucket(endpoint=endpoint, max_items=max_items, deadline=self._clock() + linger)
            self._buckets[endpoint] = bucket
        fields = dict(group[start].fields)
        for later in group[start + 1 :]:
            fields.update(later.fields)
        if start and change.target.operation is Operation.UPDATE_RELATED:
            # Links after a delink of the relation: the delink erased every relation field, so the record
            # clears the stream's fields the links do not set, as the delink and the links in turn would.
            fields = dict.fromkeys(change.target.fields) | fields
        bucket.items[key] = _Item(key=change.key, fields=fields, changes=list(group))
        bucket.changes += len(group)
        self._open[key] = bucket
        if len(bucket.items) >= bucket.max_items:
            self._seal(bucket)

    def _seal(self, bucket: _Bucket) -> None:
        del self._buckets[bucket.endpoint]
        items = []
        for key, item in bucket.items.items():
            del self._open[key]
            self._in_flight.add(key)
            items.append(PayloadItem(key=item.key, fields=item.fields, changes=tuple(item.changes)))
        _, target, parent = bucket.endpoint
        self._ready.append(Payload(target=target, parent=parent, items=tuple(items)))

    def _seal_all(self) -> None:
        for bucket in list(self._buckets.values()):
            self._seal(bucket)

    def _notify(self) -> None:
        self._output.set()
        self._space.set()

    # Callers check the state right before waiting, with no await in between, so a notification that
    # came earlier is already seen: a set event is stale and is replaced before waiting. Replacing it
    # here, not where it is set, keeps put() from allocating an event per change on the hot path.

    async def _wait_output(self) -> None:
        if self._output.is_set():
            self._output = anyio.Event()
        await self._output.wait()

    async def _wait_space(self) -> None:
        if self._space.is_set():
            self._space = anyio.Event()
        await self._space.wait()
