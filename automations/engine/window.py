"""Window state in Redis: typed wrappers around the Lua scripts in ``lua/``.

Every read-modify-write of a bucket happens inside one script call, and the script that
makes a trigger fire also XADDs the ``Firing`` (firings stream, the outbox; the firings of
one triggering event share an entry that holds the event once, see ``triggers.firing``): a
crash can neither lose a firing nor produce it twice. Its ``prefect.automation.triggered``
event and ``last_fired`` are written from the outbox by ``outbox.Announcer``. The
firings of triggers that keep no state (immediate and top level) are written by the engine
(``WindowBatch.add_ready``) and only appended by the script if the event is new. ``apply``
runs an engine batch in one call (dedupe, ``follows`` holding, every bucket update; the
engine splits batches over ``OPS_PER_CALL`` operations);
``tick`` is the proactive timer and expiry sweep. Inside a call, buckets and composite
hashes go through a write-back cache (read once, written once per call); immediate triggers
(reactive, within 0, threshold 1, no after) keep no bucket at all.

Scripts are registered once (EVALSHA, reloaded on NOSCRIPT by redis-py). Key names all come
from ``Keys``; they are passed to the scripts as arguments (not KEYS), so the layout is not
Redis Cluster ready (every key would need one hash tag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.engine.outbox import ready_firing_json
from automations.engine.specs import WindowSpec
from automations.events import from_micros, micros, to_us, uuid7
from automations.keys import Keys
from automations.settings import Settings

LUA_DIR = Path(__file__).parent / "lua"
LOOKBACK_S = 15 * 60  # first windows are backdated 15 min (reference 3.3)
SWEEP_S = 60  # reactive buckets live 60 s past their end (reference 3.8)
HELD_KEEP_S = 15 * 60  # held expect events outlive their window by 15 min
UNRESOLVED_TTL_S = 7 * 24 * 3600  # how long a proactive firing waits for its resolution
TICK_LIMIT = 500

OpTemplate = tuple[str, str, str, int, int, str]  # see WindowBatch.add_op


def script_source(name: str) -> str:
    """``common.lua`` followed by ``<name>.lua``: one self-contained script."""
    return (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()


@dataclass(slots=True)
class WindowBatch:
    """The events of one ``apply`` call and their (event, trigger) operations, in order."""

    keys: Keys
    specs: list[str] = field(default_factory=list)
    events: list[list[Any]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    ready: list[list[str]] = field(default_factory=list)  # per event: firings written here
    iso: str = ""  # the firings' `triggered` (the call's now)
    ready_count: int = 0
    _id_base: str = field(default_factory=lambda: str(uuid7())[:28])
    _id_seq: int = 0
    ops: list[int] = field(default_factory=list)  # flat triples: event #, spec #, template #
    templates: list[OpTemplate] = field(default_factory=list)
    _spec_no: dict[int, int] = field(default_factory=dict)
    _template_no: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        return (
            f"WindowBatch(events={len(self.events)}, ops={self.op_count}, "
            f"specs={len(self.specs)})"
        )

    @property
    def op_count(self) -> int:
        return len(self.ops) // 3 + self.ready_count

    def new_id(self) -> str:
        """A fresh UUID (this batch's uuid7 base and a counter, as the scripts make them)."""
        self._id_seq += 1
        return f"{self._id_base}{self._id_seq:08x}"

    def add_event(
        self, event_id: str, occurred_us: int, raw: bytes, *,
        follows: str | None, waits: bool, counts: bool,
    ) -> int:
        """Add an event; returns its number for ``add_op``. ``waits``: may be held for its
        leader; ``counts``: moves the events clock (``prefect.log.write`` does not)."""
        keys = self.keys
        leader = follows if follows and follows != event_id else None
        self.events.append([
            event_id, occurred_us, keys.seen(event_id),
            keys.seen(leader) if leader else "", keys.followers(leader) if leader else "",
            1 if waits else 0, keys.followers(event_id), 1 if counts else 0, 0,
        ])
        self.raws.append(raw)
        self.ready.append([])
        return len(self.events)

    def add_ready(self, event_no: int, spec: WindowSpec, labels: str) -> None:
        """The firing of a trigger that needs no state (``WindowSpec.fires_at_once``): written
        here, appended by the script to the event's outbox entry if the event is new."""
        self.ready[event_no - 1].append(ready_firing_json(
            self.new_id(), spec.ids_json, self.iso, labels, self.new_id()))
        self.events[event_no - 1][8] += 1
        self.ready_count += 1

    def add_op(self, event_no: int, spec: WindowSpec, template: OpTemplate) -> None:
        """One (event, trigger) operation; ``template`` (bucket key, labels JSON, held key,
        after/expect flags, unresolved key) only depends on the trigger, the event name and
        the bucket (``plan`` builds it); ops sharing one template object send it once."""
        number = self._spec_no.get(id(spec))
        if number is None:
            self.specs.append(spec.json)
            number = self._spec_no[id(spec)] = len(self.specs)
        template_no = self._template_no.get(id(template))
        if template_no is None:  # the batch keeps ``template`` alive: its id stays unique
            self.templates.append(template)
            template_no = self._template_no[id(template)] = len(self.templates)
        self.ops += (event_no, number, template_no)


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
    processed: int  # events evaluated (not duplicates, not held)
    parked: int  # events held for their leader
    consumed: int  # events of the batch the script went through (it stops after a release)
    released: list[bytes]  # held followers of the last processed event, to evaluate next


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
        self._apply = redis.register_script(script_source("apply"))
        self._tick = redis.register_script(script_source("tick"))
        self._static = {
            "fs": keys.firings, "es": keys.events,
            "dl": keys.deadlines, "gl": keys.proactive_globals,
            "sk": keys.trigger_specs, "ck": keys.events_clock,
            "held": keys.held_events, "wl": keys.waitlist,
            "sweep": to_us(SWEEP_S), "lookback": to_us(LOOKBACK_S),
            "held_keep": to_us(HELD_KEEP_S), "uttl": UNRESOLVED_TTL_S,
            "ttl": settings.dedupe_ttl_s,
            "fttl": max(1000, round(settings.follows_wait_s * 2000)),
        }

    def __repr__(self) -> str:
        return f"Window(prefix={self.keys.prefix!r})"

    def _header(self, now: datetime, **extra: Any) -> bytes:
        return orjson.dumps({
            **self._static, "now": micros(now), "iso": now.isoformat(),
            "idb": str(uuid7())[:28], **extra,
        })

    async def apply(self, batch: WindowBatch, now: datetime) -> ApplyResult:
        """Run a batch: one round trip, atomic. Stops after the first event that releases
        held followers (they must be evaluated right after their leader)."""
        if not batch.events:
            return ApplyResult(0, 0, 0, 0, [])
        reply: list[Any] = await self._apply(args=[
            self._header(now), "[" + ",".join(batch.specs) + "]",
            orjson.dumps(batch.events), orjson.dumps(batch.ops),
            orjson.dumps(batch.templates), *batch.raws,
            *[",".join(firings) for firings in batch.ready],
        ])
        return ApplyResult(
            fired=int(reply[0]), processed=int(reply[1]), parked=int(reply[2]),
            consumed=int(reply[3]), released=[bytes(r) for r in reply[4:]],
        )

    async def tick(self, now: datetime, limit: int = TICK_LIMIT) -> TickResult:
        """Handle every bucket due "as of" now (minus consumer lag): proactive windows that
        ended fire or roll, reactive buckets past their sweep time go."""
        reply: list[Any] = await self._tick(args=[self._header(now, limit=limit)])
        nxt = reply[2]
        return TickResult(
            due=int(reply[0]), fired=int(reply[1]),
            next_deadline=from_micros(float(nxt)) if nxt else None,
            as_of=from_micros(float(reply[3])),
        )

    async def register(self, specs: Sequence[WindowSpec], *, replace: bool = False) -> None:
        """Publish the specs the timer evaluates with (and the global proactive windows).
        ``replace``: these are all the enabled triggers; drop every other published spec (an
        automation deleted or paused while no engine ran must not keep firing)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if replace:
                pipe.hkeys(self.keys.trigger_specs)
                pipe.hkeys(self.keys.proactive_globals)
                published: list[Any] = await pipe.execute()
                wanted = {s.trigger_id.encode() for s in specs}
                stale = {k for k in (*published[0], *published[1]) if k not in wanted}
                if stale:
                    pipe.hdel(self.keys.trigger_specs, *stale)
                    pipe.hdel(self.keys.proactive_globals, *stale)
            if specs:
                mapping: dict[str | bytes, str | bytes] = {s.trigger_id: s.json for s in specs}
                pipe.hset(self.keys.trigger_specs, mapping=mapping)  # type: ignore[arg-type]
                globals_: dict[str | bytes, str | bytes] = {
                    s.trigger_id: s.json for s in specs if s.global_key
                }
                if globals_:
                    pipe.hset(
                        self.keys.proactive_globals, mapping=globals_  # type: ignore[arg-type]
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

    async def unregister(self, trigger_ids: Sequence[str]) -> None:
        if trigger_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self.keys.trigger_specs, *trigger_ids)
                pipe.hdel(self.keys.proactive_globals, *trigger_ids)
                await pipe.execute()

    async def reset(self, automation_id: str) -> int:
        """Delete every bucket, held event and composite state of an automation (its trigger
        changed). A SCAN: fine for an operator action, not for a hot path."""
        k = self.keys
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
