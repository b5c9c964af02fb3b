"""Window state in Redis: typed wrappers around the Lua scripts in ``lua/``, one partition
per call.

Every read-modify-write of a bucket happens inside one script call, and the script that
makes a trigger fire also XADDs the ``Firing`` (firings stream, the outbox; the firings of
one triggering event share an entry that holds the event once, see ``triggers.firing``): a
crash can neither lose a firing nor produce it twice. Its ``prefect.automation.triggered``
event and ``last_fired`` are written from the outbox by ``announcer.Announcer``. The
firings of triggers that keep no state (immediate and top level) are written by the engine
(``WindowBatch.add_ready``) and only appended by the script if the event is new. ``apply``
runs the part of an engine batch that concerns one partition in one call (dedupe in that
partition, every bucket update; the order, ``follows`` included, was decided before by
``ordering``; the engine splits batches over ``OPS_PER_CALL`` operations); ``tick`` is the
proactive timer and expiry sweep of one partition. Inside a call, buckets and composite
hashes go through a write-back cache (read once, written once per call); immediate triggers
(reactive, within 0, threshold 1, no after) keep no bucket at all.

Scripts are registered once (EVALSHA, reloaded on NOSCRIPT by redis-py). Key names all come
from ``PartitionKeys`` and travel as arguments; KEYS holds the outbox, which routes the call
to the partition's slot, and on a Redis Cluster every key the call touches (``declare``):
Redis then refuses a call as a whole while its slot migrates (TRYAGAIN/ASK, retried),
instead of failing half way through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from automations.engine.dedupe import legacy_until_us, slices
from automations.engine.outbox import ready_firing_json
from automations.engine.specs import WindowSpec
from automations.events import from_micros, micros, to_us, uuid7
from automations.keys import Keys, PartitionKeys
from automations.settings import Settings

LUA_DIR = Path(__file__).parent / "lua"
LOOKBACK_S = 15 * 60  # first windows are backdated 15 min (reference 3.3)
SWEEP_S = 60  # reactive buckets live 60 s past their end (reference 3.8)
HELD_KEEP_S = 15 * 60  # held expect events outlive their window by 15 min
UNRESOLVED_TTL_S = 7 * 24 * 3600  # how long a proactive firing waits for its resolution
TICK_LIMIT = 500


# An op template: what an (event, trigger) operation needs beyond the event, built once per
# trigger and event name, or per ``for_each`` key (``plan.Step.keyed``), and shared by the
# ops that use it. A plain tuple: a call carries ~2,000 ops, and as JSON objects they cost ~8%
# more matching time and ~3% more Redis time (orjson serializes no NamedTuple); a call sends
# its templates as one flat JSON array (a Lua table per template costs the script more than
# the fields themselves). Positions, by the names apply.lua gives them (its T_* locals, 1-based
# there, at ``(n - 1) * TEMPLATE_FIELDS`` for template n):
T_SPEC: Final = 0  # ``WindowSpec.ref`` of the trigger
T_BUCKET: Final = 1  # bucket key
T_LABELS: Final = 2  # triggering labels JSON
T_HELD: Final = 3  # held expect events key ("" without ``after``)
T_AFTER: Final = 4  # the event opens a window
T_EXPECT: Final = 5  # the event is counted
T_UNRESOLVED: Final = 6  # Resolved counter key of a top-level proactive trigger ("" otherwise)
OpTemplate = tuple[str, str, str, str, bool, bool, str]
TEMPLATE_FIELDS: Final = 7

# One event of an ``apply`` call as the script reads it: a list of these fields, then its ops
# (1-based numbers into the call's templates), in evaluation order. The call sends its events
# as one flat JSON array (same reason as the templates); their raw JSON and ready firings
# travel apart, see ``Window.apply``. Positions, as apply.lua's E_* locals (1-based there):
E_ID: Final = 0  # event id
E_OCCURRED: Final = 1  # occurred (us)
E_ASOF: Final = 2  # the events clock once it is counted (us, ``ordering``)
E_READY: Final = 3  # firings the engine wrote for it (``add_ready``)
E_OPS: Final = 4  # how many ops follow
EventItem = list[Any]


def script_source(name: str) -> str:
    """``common.lua`` followed by ``<name>.lua``: one self-contained script."""
    return (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()


@dataclass(slots=True)
class WindowBatch:
    """The events of one ``apply`` call and their (event, trigger) operations, in order.

    The script gets the specs as a JSON object by ``WindowSpec.ref`` (and their composite
    links by ref, ``WindowSpec.links``), the events (``EventItem`` lists, each with its ops
    as numbers into the templates) and the ``OpTemplate`` fields as two flat arrays, read by
    position; the top of ``apply.lua`` lists the same fields."""

    keys: PartitionKeys
    declare: bool = False  # list every key touched (``declared``), for a Redis Cluster
    specs: dict[str, str] = field(default_factory=dict)  # ref -> spec JSON
    links: dict[str, str] = field(default_factory=dict)  # ref -> composite link JSON
    events: list[EventItem] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    ready: list[list[str]] = field(default_factory=list)  # per event: firings written here
    iso: str = ""  # the firings' `triggered` (the call's now)
    op_count: int = 0  # ops and ready firings
    _id_base: str = field(default_factory=lambda: str(uuid7())[:28])
    _id_seq: int = 0
    templates: list[OpTemplate] = field(default_factory=list)
    _template_no: dict[int, int] = field(default_factory=dict)
    declared: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        return (
            f"WindowBatch(events={len(self.events)}, ops={self.op_count}, "
            f"specs={len(self.specs)})"
        )

    def new_id(self) -> str:
        """A fresh UUID (this batch's uuid7 base and a counter, as the scripts make them)."""
        self._id_seq += 1
        return f"{self._id_base}{self._id_seq:08x}"

    def add_event(self, event_id: str, occurred_us: int, raw: bytes, asof_us: int) -> int:
        """Add an event; returns its number for ``add_op``. ``asof_us``: the events clock
        once it is counted."""
        self.events.append([event_id, occurred_us, asof_us, 0, 0])
        self.raws.append(raw)
        self.ready.append([])
        return len(self.events)

    def add_ready(self, event_no: int, spec: WindowSpec, template: OpTemplate) -> None:
        """The firing of a trigger that needs no state (``WindowSpec.fires_at_once``): written
        here, appended by the script to the event's outbox entry if the event is new."""
        self.ready[event_no - 1].append(ready_firing_json(
            self.new_id(), spec.ids_json, self.iso, template[T_LABELS], self.new_id()))
        self.events[event_no - 1][E_READY] += 1
        self.op_count += 1

    def add_op(self, event_no: int, spec: WindowSpec, template: OpTemplate) -> None:
        """One (event, trigger) operation; ``template`` (``spec`` is its trigger's) only
        depends on the trigger, the event name and the bucket; ops sharing one template object
        send it once."""
        if spec.ref not in self.specs:
            self.specs[spec.ref] = spec.call_json
            for ref, link in spec.links:
                self.links[ref] = link
            if self.declare:
                self.declared.extend(spec.state_keys)
        template_no = self._template_no.get(id(template))
        if template_no is None:  # the batch keeps ``template`` alive: its id stays unique
            self.templates.append(template)
            template_no = self._template_no[id(template)] = len(self.templates)
            if self.declare:
                self.declared.extend(k for k in (template[T_BUCKET], template[T_HELD],
                                                 template[T_UNRESOLVED]) if k)
        event = self.events[event_no - 1]
        event.append(template_no)
        event[E_OPS] += 1
        self.op_count += 1


@dataclass(frozen=True, slots=True)
class Bucket:
    """A snapshot of one bucket hash."""

    key: str
    start: datetime
    end: datetime
    count: int
    last_event_id: str | None
    labels: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"Bucket([{self.start.isoformat()}, {self.end.isoformat()}) count={self.count} "
            f"labels={self.labels} last={self.last_event_id})"
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    fired: int
    evaluated: int  # events new to the partition (not repeats)


@dataclass(frozen=True, slots=True)
class TickResult:
    due: int
    fired: int
    next_deadline: datetime | None
    as_of: datetime


class Window:
    """The bucket scripts of one Redis client; cheap to build, owned by an engine or timer."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.declare = settings.redis_cluster
        self._apply = redis.register_script(script_source("apply"))
        self._tick = redis.register_script(script_source("tick"))
        self._common = {
            "sweep": to_us(SWEEP_S), "lookback": to_us(LOOKBACK_S),
            "held_keep": to_us(HELD_KEEP_S), "uttl": UNRESOLVED_TTL_S,
            "ttl": settings.dedupe_ttl_s,
        }
        self._legacy_until_us: int | None = None  # dedupe.legacy_until_us, read once

    def __repr__(self) -> str:
        return f"Window(prefix={self.keys.prefix!r}, partitions={self.keys.partitions})"

    def batch(self, number: int, iso: str, global_keys: Sequence[str] = ()) -> WindowBatch:
        """An empty ``apply`` batch for partition ``number``; ``global_keys``: the keys of
        the partition's global proactive windows, which any call may open (declared)."""
        batch = WindowBatch(self.keys.partition(number), self.declare, iso=iso)
        if self.declare:
            batch.declared.extend(global_keys)
        return batch

    def _header(self, part: PartitionKeys, now: datetime, **extra: Any) -> bytes:
        return orjson.dumps({
            **self._common, "fs": part.firings, "dl": part.deadlines,
            "gl": part.proactive_globals, "sk": part.trigger_specs,
            "bp": part.bucket_prefix, "up": part.unresolved_prefix,
            "now": micros(now), "iso": now.isoformat(), "idb": str(uuid7())[:28], **extra,
        })

    def _static_keys(self, part: PartitionKeys) -> list[str]:
        """KEYS of a call: the outbox first (it routes the call), the rest when declared."""
        if not self.declare:
            return [part.firings]
        return [part.firings, part.deadlines, part.proactive_globals, part.trigger_specs]

    async def apply(self, batch: WindowBatch, now: datetime) -> ApplyResult:
        """Run a partition's batch: one round trip, atomic."""
        if not batch.events:
            return ApplyResult(0, 0)
        part = batch.keys
        specs = ",".join(f'"{ref}":{json}' for ref, json in batch.specs.items())
        links = ",".join(f'"{ref}":{json}' for ref, json in batch.links.items())
        seen = slices(part, now, self.settings.dedupe_ttl_s)
        legacy = await self._legacy(now)
        keys = self._static_keys(part)
        if batch.declare:
            keys += [*seen.check, *batch.declared]
            if legacy:
                keys += [part.seen(event[E_ID]) for event in batch.events]
        header = self._header(part, now, ss=seen.check, sc=seen.current, sx=seen.expire_s,
                              lg=part.seen("") if legacy else "")
        reply: list[Any] = await self._apply(keys=keys, args=[
            header, "{" + specs + "}",
            orjson.dumps(list(chain.from_iterable(batch.events))),
            orjson.dumps(list(chain.from_iterable(batch.templates))), "{" + links + "}",
            *batch.raws,
            *[",".join(firings) for firings in batch.ready],
        ])
        fired, evaluated = reply  # apply.lua's reply, in order
        return ApplyResult(fired=int(fired), evaluated=int(evaluated))

    async def _legacy(self, now: datetime) -> bool:
        """Whether this call also writes and looks at the one-key dedupe markers of the
        versions before (``dedupe``)."""
        if self._legacy_until_us is None:
            self._legacy_until_us = await legacy_until_us(
                self.redis, self.keys, self.settings.dedupe_ttl_s, now)
        return micros(now) < self._legacy_until_us

    async def events_clock(self, now: datetime) -> int:
        """The "as of" time (us) of now: now plus the events-clock offset (reference 3.7),
        so that windows are not judged for events still queued."""
        c, u = await self.redis.hmget(self.keys.events_clock, ["c", "u"])
        now_us = micros(now)
        if c is None or u is None:
            return now_us
        return now_us + min(0, int(float(c)) - int(float(u)))

    async def tick(self, number: int, now: datetime, asof_us: int,
                   limit: int = TICK_LIMIT) -> TickResult:
        """Handle every bucket of partition ``number`` due as of ``asof_us``: proactive
        windows that ended fire or roll, reactive buckets past their sweep time go."""
        part = self.keys.partition(number)
        due: list[Any] = await self.redis.zrangebyscore(
            part.deadlines, "-inf", asof_us, start=0, num=limit)
        keys = self._static_keys(part)
        if self.declare:
            keys += await self._tick_declared(part, due)
        reply: list[Any] = await self._tick(keys=keys, args=[
            self._header(part, now, asof=asof_us), orjson.dumps([bytes(k).decode() for k in due]),
        ])
        _claimed, fired, nxt, as_of = reply  # tick.lua's reply, in order
        return TickResult(
            due=len(due), fired=int(fired),
            next_deadline=from_micros(float(nxt)) if nxt else None,
            as_of=from_micros(float(as_of)),
        )

    async def _tick_declared(self, part: PartitionKeys, due: list[Any]) -> list[str]:
        """Every key a tick may touch: the due buckets, their unresolved counters, their
        triggers' composite hashes, and the global windows."""
        found: list[str] = []
        trigger_ids: dict[str, None] = {}
        for raw in due:
            key = bytes(raw).decode()
            _, trigger_id, unresolved = part.parse_bucket(key)
            found += [key, unresolved]
            trigger_ids[trigger_id] = None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hvals(part.proactive_globals)
            if trigger_ids:
                pipe.hmget(part.trigger_specs, list(trigger_ids))
            read: list[Any] = await pipe.execute()
        specs = [*read[0], *(read[1] if trigger_ids else [])]
        for raw in specs:
            if raw is None:
                continue
            spec = orjson.loads(raw)
            found += [link["k"] for link in spec.get("ch", [])]
            found += [k for k in (spec.get("gk"), spec.get("gu")) if k]
        return found

    async def register(self, specs: Sequence[WindowSpec], *, replace: bool = False) -> None:
        """Publish the specs the timer evaluates with (and the global proactive windows),
        each in its partition. ``replace``: these are all the enabled triggers; drop every
        other published spec (an automation deleted or paused while no engine ran must not
        keep firing)."""
        by_partition: dict[int, list[WindowSpec]] = {}
        for spec in specs:
            by_partition.setdefault(spec.partition, []).append(spec)
        numbers = range(self.keys.partitions) if replace else sorted(by_partition)
        for number in numbers:
            await self._register(self.keys.partition(number), by_partition.get(number, []),
                                 replace=replace)

    async def _register(self, part: PartitionKeys, specs: Sequence[WindowSpec], *,
                        replace: bool) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            if replace:
                pipe.hkeys(part.trigger_specs)
                pipe.hkeys(part.proactive_globals)
                published: list[Any] = await pipe.execute()
                wanted = {s.trigger_id.encode() for s in specs}
                stale = {k for k in (*published[0], *published[1]) if k not in wanted}
                if stale:
                    pipe.hdel(part.trigger_specs, *stale)
                    pipe.hdel(part.proactive_globals, *stale)
            if specs:
                mapping: dict[str | bytes, str | bytes] = {s.trigger_id: s.json for s in specs}
                pipe.hset(part.trigger_specs, mapping=mapping)  # type: ignore[arg-type]
                globals_: dict[str | bytes, str | bytes] = {
                    s.trigger_id: s.json for s in specs if s.global_key
                }
                if globals_:
                    pipe.hset(
                        part.proactive_globals, mapping=globals_  # type: ignore[arg-type]
                    )
            await pipe.execute()

    async def bucket(self, key: str) -> Bucket | None:
        """One bucket's state (for tests, debugging and ``explain``)."""
        raw: list[Any] = await self.redis.hmget(key, ["s", "e", "c", "i", "lb"])
        if raw[0] is None:
            return None
        return Bucket(
            key=key, start=from_micros(float(raw[0])), end=from_micros(float(raw[1])),
            count=int(raw[2]), last_event_id=raw[3].decode() if raw[3] else None,
            labels=orjson.loads(raw[4]) if raw[4] else {},
        )

    async def unregister(self, specs: Sequence[WindowSpec]) -> None:
        by_partition: dict[int, list[str]] = {}
        for spec in specs:
            by_partition.setdefault(spec.partition, []).append(spec.trigger_id)
        for number, trigger_ids in by_partition.items():
            part = self.keys.partition(number)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(part.trigger_specs, *trigger_ids)
                pipe.hdel(part.proactive_globals, *trigger_ids)
                await pipe.execute()

    async def reset(self, automation_id: str) -> int:
        """Delete every bucket, held event and composite state of an automation (its trigger
        changed). A SCAN: fine for an operator action, not for a hot path."""
        k = self.keys.of(automation_id)
        patterns = [
            k.bucket(automation_id, "*", "*"), k.held_expect(automation_id, "*", "*"),
            k.unresolved(automation_id, "*", "*"), k.composite(automation_id, "*"),
        ]
        found: list[bytes] = []
        for pattern in patterns:
            found.extend([key async for key in self.redis.scan_iter(match=pattern, count=1000)])
        if found:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*found)
                pipe.zrem(k.deadlines, *found)
                await pipe.execute()
        return len(found)
