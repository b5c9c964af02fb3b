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
from typing import Any, Final, TypedDict

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


# An op template: what an (event, trigger) operation needs beyond the event, built once per
# trigger and event name, or per ``for_each`` key (``plan.Step.keyed``), and shared by the
# ops that use it. A plain tuple: a call carries ~2,000 ops, and as JSON objects they cost ~8%
# more matching time and ~3% more Redis time (orjson serializes no NamedTuple). Positions, by
# the names apply.lua gives them (its T_* locals, 1-based there):
T_SPEC: Final = 0  # ``WindowSpec.ref`` of the trigger
T_BUCKET: Final = 1  # bucket key
T_LABELS: Final = 2  # triggering labels JSON
T_HELD: Final = 3  # held expect events key ("" without ``after``)
T_AFTER: Final = 4  # the event opens a window
T_EXPECT: Final = 5  # the event is counted
T_UNRESOLVED: Final = 6  # Resolved counter key of a top-level proactive trigger ("" otherwise)
OpTemplate = tuple[str, str, str, str, bool, bool, str]


class EventItem(TypedDict):
    """One event of an ``apply`` call as the script reads it (its raw JSON and ready firings
    travel apart, see ``Window.apply``)."""

    id: str
    occurred: int  # us
    seen: str  # its dedupe key
    leader_seen: str  # the seen key of the event it follows ("" when none)
    leader_followers: str  # the followers set of that event ("" when none)
    waits: bool  # may be held until its leader is processed
    followers: str  # its own followers set (released once it is processed)
    counts: bool  # moves the events clock (``prefect.log.write`` does not)
    ready: int  # firings the engine wrote for it (``add_ready``)
    ops: list[int]  # its templates (1-based numbers into the call's templates), in order


def script_source(name: str) -> str:
    """``common.lua`` followed by ``<name>.lua``: one self-contained script."""
    return (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()


@dataclass(slots=True)
class WindowBatch:
    """The events of one ``apply`` call and their (event, trigger) operations, in order.

    The script gets the specs as a JSON object by ``WindowSpec.ref``, the events as a list of
    ``EventItem`` objects (read by name: ``e.seen``, ``e.ops``...), each listing its ops as
    numbers into the list of ``OpTemplate`` arrays (read by position: ``o[T_BUCKET]``...);
    the top of ``apply.lua`` lists the same fields."""

    keys: Keys
    specs: dict[str, str] = field(default_factory=dict)  # ref -> spec JSON
    events: list[EventItem] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    ready: list[list[str]] = field(default_factory=list)  # per event: firings written here
    iso: str = ""  # the firings' `triggered` (the call's now)
    op_count: int = 0  # ops and ready firings
    _id_base: str = field(default_factory=lambda: str(uuid7())[:28])
    _id_seq: int = 0
    templates: list[OpTemplate] = field(default_factory=list)
    _template_no: dict[int, int] = field(default_factory=dict)

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

    def add_event(
        self, event_id: str, occurred_us: int, raw: bytes, *,
        follows: str | None, waits: bool, counts: bool,
    ) -> int:
        """Add an event; returns its number for ``add_op``. ``waits``: may be held for its
        leader; ``counts``: moves the events clock (``prefect.log.write`` does not)."""
        keys = self.keys
        leader = follows if follows and follows != event_id else None
        self.events.append({
            "id": event_id, "occurred": occurred_us, "seen": keys.seen(event_id),
            "leader_seen": keys.seen(leader) if leader else "",
            "leader_followers": keys.followers(leader) if leader else "",
            "waits": waits, "followers": keys.followers(event_id), "counts": counts,
            "ready": 0, "ops": [],
        })
        self.raws.append(raw)
        self.ready.append([])
        return len(self.events)

    def add_ready(self, event_no: int, spec: WindowSpec, template: OpTemplate) -> None:
        """The firing of a trigger that needs no state (``WindowSpec.fires_at_once``): written
        here, appended by the script to the event's outbox entry if the event is new."""
        self.ready[event_no - 1].append(ready_firing_json(
            self.new_id(), spec.ids_json, self.iso, template[T_LABELS], self.new_id()))
        self.events[event_no - 1]["ready"] += 1
        self.op_count += 1

    def add_op(self, event_no: int, spec: WindowSpec, template: OpTemplate) -> None:
        """One (event, trigger) operation; ``template`` (``spec`` is its trigger's) only
        depends on the trigger, the event name and the bucket; ops sharing one template object
        send it once."""
        if spec.ref not in self.specs:
            self.specs[spec.ref] = spec.json
        template_no = self._template_no.get(id(template))
        if template_no is None:  # the batch keeps ``template`` alive: its id stays unique
            self.templates.append(template)
            template_no = self._template_no[id(template)] = len(self.templates)
        self.events[event_no - 1]["ops"].append(template_no)
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
            "fs": keys.firings, "dl": keys.deadlines, "gl": keys.proactive_globals,
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
        specs = ",".join(f'"{ref}":{json}' for ref, json in batch.specs.items())
        reply: list[Any] = await self._apply(args=[
            self._header(now), "{" + specs + "}", orjson.dumps(batch.events),
            orjson.dumps(batch.templates), *batch.raws,
            *[",".join(firings) for firings in batch.ready],
        ])
        fired, processed, parked, consumed, *released = reply  # apply.lua's reply, in order
        return ApplyResult(
            fired=int(fired), processed=int(processed), parked=int(parked),
            consumed=int(consumed), released=[bytes(r) for r in released],
        )

    async def tick(self, now: datetime, limit: int = TICK_LIMIT) -> TickResult:
        """Handle every bucket due "as of" now (minus consumer lag): proactive windows that
        ended fire or roll, reactive buckets past their sweep time go."""
        reply: list[Any] = await self._tick(args=[self._header(now, limit=limit)])
        due, fired, nxt, as_of = reply  # tick.lua's reply, in order
        return TickResult(
            due=int(due), fired=int(fired),
            next_deadline=from_micros(float(nxt)) if nxt else None,
            as_of=from_micros(float(as_of)),
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
