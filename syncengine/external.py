"""Updates by external value that work whatever Zoho accepts: the strategy ladder.

Zoho documents one form of update by external value, the single record ``PUT /{Module}/{ext}`` with
``X-EXTERNAL``; the bulk form (``PUT /{Module}``, records carrying the external field and no ``id``) is
not documented, and the update-records page says every bulk record needs an ``id``
(``../shared/zoho-fidelity.md`` row 1). A stream's ``external_update`` picks how its updates go out:

- ``bulk``: the bulk form, 100 records a call;
- ``resolve``: the record ids are looked up first, 50 values per COQL call (``select id, Ext from Module
  where Ext in (...)``, 1 credit each), remembered in the ledger per org, so a second run costs no lookups;
  then the records are updated by id, 100 a call. A value no record holds is ``REJECTED`` as Zoho answers
  it in the bulk form (INVALID_DATA "The value of the external field is invalid."); an id the CRM no
  longer knows (deleted, merged) is forgotten and looked up once more;
- ``single``: the documented one-record form, one call per record;
- ``auto`` (the default): the first payload goes out in bulk while the stream's other payloads wait for
  its answer. If Zoho answers that the records need an ``id``, the stream switches to ``resolve`` (and to
  ``single`` when COQL is not allowed) for the rest of the run, the payload is sent again that way, and the
  answer is remembered for the org; if any record succeeds, bulk works and that is remembered too.

Nothing is lost or reported twice across a switch: the refused bulk try has no outcome of its own (nothing
was applied), and the records' outcomes come from the try that decided them. Values a COQL literal may not
carry safely (a quote or a backslash: Zoho documents no escape) are sent in the single form.

``ExternalUpdates`` sits in front of the sender with the sender's interface, so a Worker neither knows nor
cares which form a record went out in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final, Protocol
from urllib.parse import quote

import anyio
import structlog

from syncengine.config import StreamConfig
from syncengine.crm.coql import IN_LIMIT, LOOKUP_CREDITS, LookupRefusal, id_lookup, literal_safe, read_ids
from syncengine.crm.requests import Call, build_call, build_single_update
from syncengine.crm.responses import Action, RecordResult, Records, Refused, bad_key_result, unknown_external_value
from syncengine.errors import StreamHalted
from syncengine.model import JSON, Operation, Payload, PayloadItem, Target
from syncengine.sender import Answered, CallStats, GaveUp, Sender, Sent, Stopping, wait_any

__all__ = [
    "ExternalUpdates",
    "IdStore",
    "Strategy",
    "StrategyReport",
    "StrategyUse",
    "applies",
    "ladder_for",
    "org_key",
]

_log = structlog.get_logger("syncengine.external")

_ADVICE: Final = (
    " (external_update = 'resolve' needs the scope ZohoCRM.coql.READ; 'single' needs none, one call a record)"
)


class Strategy(Enum):
    AUTO = "auto"
    BULK = "bulk"
    RESOLVE = "resolve"
    SINGLE = "single"


class IdStore(Protocol):
    """Where looked-up ids and the org's answers are kept: the ledger (``ledger/crmids.py``)."""

    async def crm_ids(self, org: str, module: str, field: str, values: Sequence[str]) -> dict[str, str]: ...
    async def remember_ids(self, org: str, module: str, field: str, ids: Mapping[str, str]) -> None: ...
    async def forget_ids(self, org: str, module: str, field: str, values: Sequence[str]) -> None: ...
    async def org_fact(self, org: str, name: str) -> str | None: ...
    async def set_org_fact(self, org: str, name: str, value: str) -> None: ...


class _Inner(Protocol):
    """The sender behind the ladder (``sender.Sender``)."""

    stats: CallStats
    stopping: anyio.Event | None

    async def send(
        self, payload: Payload, call: Call, stream: str, *, journal: Callable[[], object] | None = None
    ) -> Sent | GaveUp: ...

    async def query(self, call: Call, stream: str, *, cost: int) -> Answered | GaveUp: ...

    async def pause(self, seconds: float) -> None: ...


def org_key(api_domain: str, client_id: str | None) -> str:
    """The org a ledger's ids belong to: the API host and the OAuth client (hashed: no name in the file)."""
    return hashlib.sha256(f"{api_domain}|{client_id or ''}".encode()).hexdigest()[:24]


def applies(target: Target) -> bool:
    """Does ``target`` update records by external value (the calls the ladder is for)?"""
    return target.operation is Operation.UPDATE and target.match_field is not None


@dataclass(slots=True)
class StrategyUse:
    """Per stream, for the report: the strategy the run ended with and what the ladder cost."""

    strategy: Strategy
    configured: Strategy
    switched: str | None = None  # why it left the configured strategy
    lookup_calls: int = 0
    lookup_credits: int = 0
    cached: int = 0  # values whose id the ledger already knew
    single_calls: int = 0
    _probe: anyio.Event | None = field(default=None, repr=False)  # auto: the bulk try under way
    _loaded: anyio.Event | None = field(default=None, repr=False)  # set once the org's answer is read


def ladder_for(
    sender: object,
    streams: Sequence[StreamConfig],
    api_base: str,
    client_id: str | None,
    *,
    store: IdStore,
    trigger: Sequence[str] | None,
) -> ExternalUpdates | None:
    """The ladder in front of ``sender`` when a stream updates by external value; None when none does, or when
    ``sender`` only writes calls (a dry run plans the bulk form). The ids it looks up are kept for the org."""
    strategies = {s.name: Strategy(s.external_update) for s in streams if applies(s.target)}
    if not strategies or not isinstance(sender, Sender):
        return None
    org = org_key(api_base, client_id)
    return ExternalUpdates(sender, api_base=api_base, org=org, store=store, strategies=strategies, trigger=trigger)


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyReport:
    """What a stream's updates by external value went out as, and what that cost beyond the updates."""

    stream: str
    configured: str
    strategy: str
    switched: str | None
    lookup_calls: int
    lookup_credits: int
    cached: int
    single_calls: int

    def line(self) -> str:
        """The summary's line: ``contacts: updates by external value resolve (auto: why) · 5 COQL lookups ...``."""
        how = self.strategy
        if self.strategy != self.configured:
            how += f" ({self.configured}: {self.switched})"
        parts = [f"{self.stream}: updates by external value {how}"]
        if self.lookup_calls or self.cached:
            parts.append(f"{self.lookup_calls:,} COQL lookups, {self.lookup_credits:,} credits")
            parts.append(f"{self.cached:,} ids from the ledger")
        if self.single_calls:
            parts.append(f"{self.single_calls:,} one-record calls, {self.single_calls:,} credits")
        return " · ".join(parts)


def _needs_id(result: Sent | GaveUp) -> bool | None:
    """What a bulk try says of the bulk form: True (records need an ``id``), False (it works), None (no word)."""
    if not isinstance(result, Sent):
        return None
    verdict = result.verdict
    if isinstance(verdict, Refused):
        return True if _names_id(verdict.code, verdict.details) else None
    if any(r.success for r in verdict.results):
        return False
    return True if any(_names_id(r.code, r.details) for r in verdict.results) else None


def _names_id(code: str, details: Mapping[str, JSON]) -> bool:
    return code in ("MANDATORY_NOT_FOUND", "INVALID_DATA") and details.get("api_name") == "id"


def _from_call(result: Sent | GaveUp) -> RecordResult:
    """A one-record call's answer as that record's result."""
    if isinstance(result, GaveUp):
        return RecordResult(
            success=False, transient=True, code=result.code, message=result.message, details={}, crm_id=None
        )
    verdict = result.verdict
    if isinstance(verdict, Records):
        return verdict.results[0]
    transient = verdict.action is not Action.REJECT
    return RecordResult(
        success=False,
        transient=transient,
        code=verdict.code,
        message=verdict.message,
        details=verdict.details,
        crm_id=None,
    )


class ExternalUpdates:
    """The sender's interface, with the ladder in front of it for updates by external value."""

    def __init__(
        self,
        inner: _Inner,
        *,
        api_base: str,
        org: str,
        store: IdStore | None,
        strategies: Mapping[str, Strategy],
        trigger: Sequence[str] | None = None,
    ) -> None:
        self._inner = inner
        self._api_base = api_base
        self._org = org
        self._store = store
        self._trigger = trigger
        self.use: dict[str, StrategyUse] = {
            stream: StrategyUse(strategy=strategy, configured=strategy) for stream, strategy in strategies.items()
        }

    @property
    def stats(self) -> CallStats:
        return self._inner.stats

    @property
    def stopping(self) -> anyio.Event | None:
        return self._inner.stopping

    @stopping.setter
    def stopping(self, event: anyio.Event | None) -> None:
        self._inner.stopping = event

    async def pause(self, seconds: float) -> None:
        await self._inner.pause(seconds)

    def report(self) -> tuple[StrategyReport, ...]:
        """Per stream that sent updates by external value: its strategy and what the ladder cost (logged)."""
        reports = tuple(
            StrategyReport(
                stream=stream,
                configured=use.configured.value,
                strategy=use.strategy.value,
                switched=use.switched,
                lookup_calls=use.lookup_calls,
                lookup_credits=use.lookup_credits,
                cached=use.cached,
                single_calls=use.single_calls,
            )
            for stream, use in self.use.items()
            if use._loaded is not None
        )
        for used in reports:
            _log.info("syncengine.external_update_used", **{k: getattr(used, k) for k in used.__slots__})
        return reports

    async def send(
        self, payload: Payload, call: Call, stream: str, *, journal: Callable[[], object] | None = None
    ) -> Sent | GaveUp:
        use = self.use.get(stream)
        if use is None or not applies(payload.target):
            return await self._inner.send(payload, call, stream, journal=journal)
        await self._load(use, payload.target)
        while use.strategy is Strategy.AUTO:
            if use._probe is None:
                result = await self._probe(use, payload, call, stream, journal)
                if result is not None:
                    return result
                break  # the org wants ids: this payload goes again, the new way, below
            await wait_any((use._probe, self.stopping))
            if self.stopping is not None and self.stopping.is_set():
                raise Stopping("stopping: a payload waited for the bulk form's first answer")
        if use.strategy is Strategy.BULK:
            result = await self._inner.send(payload, call, stream, journal=journal)
            # On auto, bulk may be what the org answered before: an org that now wants ids is followed.
            if use.configured is not Strategy.AUTO or _needs_id(result) is not True:
                return result
            await self._decide(use, payload.target, Strategy.RESOLVE, "the bulk form was refused: records need an id")
        if use.strategy is Strategy.RESOLVE:
            try:
                return await self._resolved(use, payload, stream, journal)
            except _LookupGaveUp as exc:
                return exc.gave_up
            except _LookupRefused as exc:
                if use.configured is not Strategy.AUTO:
                    raise
                await self._decide(use, payload.target, Strategy.SINGLE, f"COQL refused ({exc.code}: {exc.message})")
        return await self._singles(use, payload, stream, journal)

    # -- strategies ---------------------------------------------------------------------------------

    async def _load(self, use: StrategyUse, target: Target) -> None:
        """``auto`` starts with what the org answered before, if the ledger knows it."""
        if use._loaded is not None:
            await use._loaded.wait()  # workers that come while the first reads it wait for the answer
            return
        use._loaded = loaded = anyio.Event()
        try:
            if use.strategy is Strategy.AUTO and self._store is not None:
                known = await self._store.org_fact(self._org, _fact(target))
                if known in (Strategy.BULK.value, Strategy.RESOLVE.value, Strategy.SINGLE.value):
                    use.strategy = Strategy(known)
                    use.switched = f"the org answered before: {known}"
        finally:
            loaded.set()

    async def _probe(
        self, use: StrategyUse, payload: Payload, call: Call, stream: str, journal: Callable[[], object] | None
    ) -> Sent | GaveUp | None:
        """``auto``'s first bulk try; None when the org wants ids (then nothing was applied)."""
        use._probe = probe = anyio.Event()
        try:
            result = await self._inner.send(payload, call, stream, journal=journal)
            needs_id = _needs_id(result)
            if needs_id is not None:
                new = Strategy.RESOLVE if needs_id else Strategy.BULK
                why = "the bulk form was refused: records need an id" if needs_id else "the bulk form works"
                await self._decide(use, payload.target, new, why)
            return None if needs_id else result
        finally:
            use._probe = None
            probe.set()

    async def _decide(self, use: StrategyUse, target: Target, strategy: Strategy, why: str) -> None:
        if use.strategy is strategy:
            return
        _log.info(
            "syncengine.external_update",
            module=target.module,
            strategy=strategy.value,
            was=use.strategy.value,
            reason=why,
        )
        use.strategy, use.switched = strategy, why
        if self._store is not None:
            await self._store.set_org_fact(self._org, _fact(target), strategy.value)

    async def _resolved(
        self, use: StrategyUse, payload: Payload, stream: str, journal: Callable[[], object] | None
    ) -> Sent | GaveUp:
        """Look the ids up (the ledger first, COQL for the rest), then update by id; an id the CRM no
        longer knows is looked up again once. Values COQL cannot carry go in the single form."""
        items = payload.items
        results: list[RecordResult | None] = [None] * len(items)
        outcome = _Tally()
        unsafe = [k for k, item in enumerate(items) if not literal_safe(item.key)]
        fresh = False  # the ids come from COQL now, not the ledger
        while todo := [k for k, r in enumerate(results) if r is None and k not in unsafe]:
            found = await self._ids(use, payload.target, stream, [items[k].key for k in todo], fresh=fresh)
            sendable = [k for k in todo if items[k].key in found]
            for k in todo:
                if items[k].key not in found:
                    results[k] = unknown_external_value(payload.target.match_field or "")
            if not sendable:
                break
            result = await self._by_id(payload, [items[k] for k in sendable], found, stream, journal)
            if not isinstance(result, Sent) or isinstance(result.verdict, Refused):
                if not fresh:  # nothing of the payload was sent before: the Worker splits or fails it whole
                    return result
                result = _each(result, len(sendable))  # the first call's records have their answers
            outcome.add(result)
            stale: list[str] = []
            for k, record in zip(sendable, _results(result), strict=True):
                if _names_id(record.code, record.details) and not fresh:
                    stale.append(items[k].key)  # deleted or merged since it was looked up: once more
                else:
                    results[k] = record
            if stale and self._store is not None:
                await self._store.forget_ids(self._org, payload.target.module, payload.target.match_field or "", stale)
            fresh, journal = True, None  # the first call's journal line names every record of the payload
        if unsafe:  # last, so that a payload refused whole above had nothing applied
            singles = await self._singles(use, replace(payload, items=tuple(items[k] for k in unsafe)), stream, journal)
            outcome.add(singles)
            for k, record in zip(unsafe, _results(singles), strict=True):
                results[k] = record
        return outcome.sent(_complete(results))

    async def _by_id(
        self,
        payload: Payload,
        items: Sequence[PayloadItem],
        ids: Mapping[str, str],
        stream: str,
        journal: Callable[[], object] | None,
    ) -> Sent | GaveUp:
        by_id = replace(payload.target, match_field=None)
        records = tuple(PayloadItem(key=ids[i.key], fields=i.fields, changes=i.changes) for i in items)
        sub = replace(payload, target=by_id, items=records)
        return await self._inner.send(
            sub, build_call(sub, self._api_base, trigger=self._trigger), stream, journal=journal
        )

    async def _singles(
        self, use: StrategyUse, payload: Payload, stream: str, journal: Callable[[], object] | None
    ) -> Sent:
        """One documented ``PUT /{Module}/{ext}`` per record."""
        results: list[RecordResult] = []
        calls = 0
        ambiguous = False
        for item in payload.items:
            sub = replace(payload, items=(item,))
            try:
                result = await self._inner.send(
                    sub, build_single_update(sub, self._api_base, trigger=self._trigger), stream, journal=journal
                )
            except StreamHalted as halted:
                if not _bad_key(halted, item.key):
                    raise
                refused = Records(http_status=404, results=(bad_key_result(halted.code, halted.message, item.key),))
                result = Sent(verdict=refused, calls=1, ambiguous=False)
            journal = None  # the line written for the first call names every record of the payload
            use.single_calls += result.calls
            calls += result.calls
            ambiguous |= result.ambiguous
            results.append(_from_call(result))
        return Sent(verdict=Records(http_status=200, results=tuple(results)), calls=calls, ambiguous=ambiguous)

    # -- lookups ------------------------------------------------------------------------------------

    async def _ids(
        self, use: StrategyUse, target: Target, stream: str, values: Sequence[str], *, fresh: bool
    ) -> dict[str, str]:
        """value -> record id for those of ``values`` some record holds. Raises StreamHalted when COQL is
        refused (no scope, a field it cannot query), _LookupGaveUp when it gave up on transient trouble."""
        module, ext = target.module, target.match_field or ""
        found: dict[str, str] = {}
        if self._store is not None and not fresh:
            found = await self._store.crm_ids(self._org, module, ext, values)
            use.cached += len(found)
        missing = sorted({v for v in values if v not in found and literal_safe(v)})
        looked_up: dict[str, str] = {}
        for start in range(0, len(missing), IN_LIMIT):
            call = id_lookup(self._api_base, module, ext, missing[start : start + IN_LIMIT])
            try:
                answer = await self._inner.query(call, stream, cost=LOOKUP_CREDITS)
                if isinstance(answer, GaveUp):
                    raise _LookupGaveUp(answer)
                use.lookup_calls += answer.calls
                use.lookup_credits += LOOKUP_CREDITS
                looked_up.update(read_ids(answer.response, ext))
            except (StreamHalted, LookupRefusal) as exc:  # no COQL scope, a field it cannot query
                why = f"the COQL lookup of {module}.{ext} was refused: {exc.message}{_ADVICE}"
                raise _LookupRefused(stream, exc.code, why) from exc
        if self._store is not None:
            await self._store.remember_ids(self._org, module, ext, looked_up)
        return found | looked_up


def _bad_key(halted: StreamHalted, key: str) -> bool:
    """Zoho refused the URL of a one-record call whose key needed percent-encoding: the key, not the stream's
    config, is what it could not route (``workers.Worker._bad_key`` reads a related call's parent the same way)."""
    return halted.code == "INVALID_URL_PATTERN" and quote(key, safe="") != key


def _fact(target: Target) -> str:
    return f"external_update:{target.module}.{target.match_field}"


def _complete(results: Sequence[RecordResult | None]) -> tuple[RecordResult, ...]:
    done = tuple(r for r in results if r is not None)
    assert len(done) == len(results), "every record of a resolved payload has its result"
    return done


class _LookupRefused(StreamHalted):
    """COQL refused the lookup (a missing scope, a field it cannot query): with ``resolve`` configured the
    stream halts; on ``auto`` it goes on in the single form."""


class _LookupGaveUp(Exception):
    """A lookup's transient trouble outlasted the retries: the payload gives up with it."""

    def __init__(self, gave_up: GaveUp) -> None:
        super().__init__(gave_up.message)
        self.gave_up = gave_up


@dataclass(slots=True)
class _Tally:
    """The calls behind a payload sent in parts, summed into one Sent."""

    calls: int = 0
    ambiguous: bool = False
    http_status: int = 400  # what Zoho answers when no record of a call succeeds

    def add(self, result: Sent) -> None:
        self.calls += result.calls
        self.ambiguous |= result.ambiguous
        if self.http_status == 400 or result.verdict.http_status != 400:
            self.http_status = result.verdict.http_status

    def sent(self, results: tuple[RecordResult, ...]) -> Sent:
        return Sent(verdict=Records(http_status=self.http_status, results=results), calls=self.calls,
                    ambiguous=self.ambiguous)  # fmt: skip


def _each(result: Sent | GaveUp, count: int) -> Sent:
    """A call refused or given up as a whole, as the same answer for each of its ``count`` records."""
    record = _from_call(result)
    return Sent(
        verdict=Records(http_status=400, results=(record,) * count),
        calls=result.calls,
        ambiguous=result.ambiguous,
    )


def _results(sent: Sent) -> tuple[RecordResult, ...]:
    assert isinstance(sent.verdict, Records), "a payload sent record by record has a result per record"
    return sent.verdict.results
