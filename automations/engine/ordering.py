"""``follows`` ordering (reference 3.10, 7.7) and the events clock, shared by all engines.

Before a batch is evaluated, one script in the global slot (``lua/order.lua``) decides its
order: an event whose ``follows`` leader has not arrived is held (``keys.held_events``,
``keys.followers(leader)``, ``keys.waitlist``); every other event arrives (its id joins the
set of the current time slice, ``keys.arrived``) and releases its held followers, which are
evaluated right after it. The same step moves the events clock (``keys.events_clock``).
Deciding the order apart from the partitions keeps it correct across them: a leader and its
follower may interest automations of different partitions, or a leader none at all.

A released follower stays held until the engine has applied it to every partition and calls
``forget``: a failure in between releases it again (each partition dedupes it), so nothing
is lost; ``lost()`` hands back followers held longer than ``settings.follows_wait_s``. An
entry already older than that when first read skips the wait.

Arrivals are remembered for two to three slices of ``dedupe_ttl_s / 2``: a follower whose
leader arrived longer ago than that waits for the bounded-wait release.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.engine.intake import SKIPPED_EVENTS, Incoming, NameIndex, decode_event
from automations.errors import InvalidEvent
from automations.events import micros
from automations.keys import Keys
from automations.settings import Settings

ORDER_LUA = (Path(__file__).parent / "lua" / "order.lua").read_text()
SLICES = 3  # arrival sets looked at: the current slice and the two before it
COUNTS, FOLLOWER, REPEAT = 1, 2, 4  # event flags in the script's input and reply


@dataclass(slots=True)
class Ordered:
    """An event that goes, with the events clock as of its evaluation."""

    item: Incoming
    asof_us: int
    batch_index: int  # its index in the batch, -1 for a released follower


@dataclass(slots=True)
class OrderResult:
    items: list[Ordered]  # in evaluation order
    parked: int  # held for their leader
    new: int  # arrived for the first time (not repeats)
    released: list[tuple[str, str]]  # (leader id or "", follower id): ``forget`` once applied


def slice_us(settings: Settings) -> int:
    return max(1, math.ceil(settings.dedupe_ttl_s / 2)) * 1_000_000


class Ordering:
    """The Python half of ordering: what may wait, the order script, the bounded-wait release."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings, *,
                 declare_keys: bool = False) -> None:
        self.redis = redis
        self.keys = keys
        self.wait_us = round(settings.follows_wait_s * 1_000_000)
        self.batch_size = settings.batch_size
        self.declare_keys = declare_keys
        self._script = redis.register_script(ORDER_LUA)
        self._slice_us = slice_us(settings)
        self._static = {
            "slice": self._slice_us,
            "keep": SLICES * self._slice_us // 1_000_000 + 60,
            "fttl": max(1000, round(settings.follows_wait_s * 2000)),
            "ap": keys.arrived(0)[:-1], "fp": keys.followers(""),
            "held": keys.held_events, "wl": keys.waitlist, "ck": keys.events_clock,
            "es": keys.events,
        }

    def __repr__(self) -> str:
        return f"Ordering(wait={self.wait_us / 1e6:g}s)"

    def waits(self, entry_id: str, now: datetime) -> bool:
        """May an event read from stream entry ``entry_id`` wait for its leader? Not when
        waiting is off, nor when the entry is already older than the wait."""
        if self.wait_us <= 0:
            return False
        added_ms = int(entry_id.split("-", 1)[0])
        return micros(now) - added_ms * 1000 < self.wait_us

    async def order(self, items: list[Incoming], now: datetime) -> OrderReply:
        """The batch's evaluation order (one script call): ``resolve`` it into events once
        the batch is matched."""
        flat: list[str | int] = []
        followers: list[str | int] = []
        declared = self._declared(now)
        for number, item in enumerate(items, 1):
            flags = 0 if item.name in SKIPPED_EVENTS else COUNTS
            if item.follows and item.waits and item.entry and item.follows != item.id:
                flags |= FOLLOWER  # held, the script copies its raw JSON from the stream
                followers += (number, item.follows, item.entry)
                if self.declare_keys:
                    declared.append(self.keys.followers(item.follows))
            flat += (item.id, item.occurred_us, flags)
            if self.declare_keys:
                declared.append(self.keys.followers(item.id))
        reply = await self._script(keys=declared, args=[
            self._header(now, mode="batch"), orjson.dumps(flat), orjson.dumps(followers)])
        return OrderReply.parse(reply)

    async def lost(self, now: datetime, index: NameIndex) -> OrderResult:
        """Followers held for ``follows_wait_s`` or longer, oldest ``occurred`` first (with
        the followers they release)."""
        reply = await self._script(keys=self._declared(now), args=[self._header(
            now, mode="lost", cutoff=micros(now) - self.wait_us, limit=self.batch_size)])
        return self.resolve(OrderReply.parse(reply), [], now, index)

    async def forget(self, released: list[tuple[str, str]]) -> None:
        """The released followers were applied: they are held no more."""
        if not released:
            return
        ids = [follower for _, follower in released]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.held_events, *ids)
            pipe.zrem(self.keys.waitlist, *ids)
            for leader, follower in released:
                if leader:
                    pipe.srem(self.keys.followers(leader), follower)
            await pipe.execute()

    async def held(self) -> int:
        """How many events wait for their leader (for tests and ``repr``)."""
        return int(await self.redis.hlen(self.keys.held_events))

    def _header(self, now: datetime, **extra: Any) -> bytes:
        return orjson.dumps({**self._static, "now": micros(now), **extra})

    def _declared(self, now: datetime) -> list[str]:
        """The keys the script touches, declared to Redis on a cluster (so a slot migration
        is refused up front rather than met half way); the first one routes the call."""
        keys = [self.keys.events_clock]
        if self.declare_keys:
            current = micros(now) // self._slice_us
            keys += [self.keys.held_events, self.keys.waitlist, self.keys.events]
            keys += [self.keys.arrived(current - n) for n in range(SLICES)]
        return keys

    def resolve(self, reply: OrderReply, items: list[Incoming], now: datetime,
                index: NameIndex, wanted: Container[int] = (), *, first: bool = False
                ) -> OrderResult:
        """The events to evaluate, in order: of the batch's ``items``, those whose index is
        ``wanted`` (and the first counted one if ``first``), each released follower after
        its leader. Each carries the events clock the script moved (new counted events move
        it, in evaluation order), recomputed here from the clock before the call."""
        result = OrderResult([], reply.parked, reply.new, [])
        clock = _Clock(reply.stored, micros(now))
        held, repeats, after = reply.held, reply.repeats, reply.after
        for released in after.get(0, ()):
            self._released(result, released, clock, index)
        for number, item in enumerate(items, 1):
            if number in held:
                continue
            counted = item.name not in SKIPPED_EVENTS
            if counted and number not in repeats:
                clock.count(item.occurred_us)
            if number - 1 in wanted or (first and counted):
                result.items.append(Ordered(item, clock.value, number - 1))
                first = first and not counted
            if number in after:
                for released in after[number]:
                    self._released(result, released, clock, index)
        return result

    def _released(self, result: OrderResult, released: Released, clock: _Clock,
                  index: NameIndex) -> None:
        try:
            item = decode_event(released.raw, index)
        except InvalidEvent:  # valid when held; a changed model must not block: dropped
            stale = _id_of(released.raw)
            if stale:
                result.released.append((released.leader, stale))
            return
        item.waits = False
        if released.flags & COUNTS and not released.flags & REPEAT:
            clock.count(released.occurred_us)
        result.released.append((released.leader, item.id))
        result.items.append(Ordered(item, clock.value, -1))


@dataclass(slots=True)
class OrderReply:
    """The order script's reply: the exceptions to "every event went, for the first time"."""

    parked: int
    new: int
    stored: int | None  # the events clock before the call
    held: set[int]  # batch numbers (1-based) held for their leader
    repeats: set[int]  # batch numbers that had arrived before
    after: dict[int, list[Released]]  # released followers by the batch number they follow

    @classmethod
    def parse(cls, reply: list[Any]) -> OrderReply:
        parsed = cls(int(reply[0]), int(reply[1]), int(reply[2]) if reply[2] else None,
                     set(), set(), {})
        at = 3
        while at < len(reply):
            kind = reply[at]
            if kind == b"r":
                n, raw, leader, occurred, flags = reply[at + 1:at + 6]
                parsed.after.setdefault(int(n), []).append(
                    Released(bytes(raw), bytes(leader).decode(), int(occurred), int(flags)))
                at += 6
                continue
            (parsed.held if kind == b"h" else parsed.repeats).add(int(reply[at + 1]))
            at += 2
        return parsed


@dataclass(slots=True)
class Released:
    raw: bytes
    leader: str
    occurred_us: int
    flags: int


class _Clock:
    """The events clock as the script moves it: the latest ``min(occurred, now)``."""

    __slots__ = ("_set", "now_us", "value")

    def __init__(self, stored: int | None, now_us: int) -> None:
        self.now_us = now_us
        self._set = stored is not None
        self.value = stored if stored is not None else now_us

    def count(self, occurred_us: int) -> None:
        at = min(occurred_us, self.now_us)
        if not self._set or at > self.value:
            self.value = at
            self._set = True


def _id_of(raw: bytes) -> str | None:
    try:
        found = orjson.loads(raw).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


async def arrived(redis: aioredis.Redis, keys: Keys, event_id: str, now: datetime,
                  settings: Settings) -> bool:
    """Has the engine taken up this event (within the remembered slices)?"""
    width = slice_us(settings)
    current = micros(now) // width
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(SLICES):
            pipe.sismember(keys.arrived(current - n), event_id)
        found: list[Any] = await pipe.execute()
    return any(found)
