"""``follows`` ordering (reference 3.10, 7.7) with its state in Redis, shared by all engines.

An event whose ``follows`` leader has not been processed is held: the window script
(``lua/apply.lua``) checks ``keys.seen(leader)`` and, in the same atomic step, stores the
event in ``keys.held_events``, adds it to ``keys.followers(leader)`` and to ``keys.waitlist``
(scored by when it was held). Processing the leader (any engine) returns its followers, which
the engine evaluates right after it, in ``occurred`` order. Because holding and releasing are
both inside scripts, no follower can slip between a leader's check and its completion (the
race Prefect closes with a double check). A follower stays in ``held_events``/``waitlist``
until it is itself processed, so a crash after the release only delays it to the
bounded-wait release: ``lost()`` hands back followers held longer than
``settings.follows_wait_s``. An entry older than that when first read skips the wait.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from automations.engine.intake import Incoming, NameIndex, decode_event
from automations.errors import InvalidEvent
from automations.events import micros
from automations.keys import Keys
from automations.settings import Settings


def in_order(items: list[Incoming]) -> list[Incoming]:
    """Followers are evaluated by ``occurred``, then id (as the reference does)."""
    return sorted(items, key=lambda item: (item.occurred_us, item.id))


class FollowsOrdering:
    """The Python half of ordering: who may wait, and the bounded-wait release."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.wait_us = round(settings.follows_wait_s * 1_000_000)
        self.batch_size = settings.batch_size

    def __repr__(self) -> str:
        return f"FollowsOrdering(wait={self.wait_us / 1e6:g}s)"

    def waits(self, entry_id: str, now: datetime) -> bool:
        """May an event read from stream entry ``entry_id`` wait for its leader? Not when
        waiting is off, nor when the entry is already older than the wait."""
        if self.wait_us <= 0:
            return False
        added_ms = int(entry_id.split("-", 1)[0])
        return micros(now) - added_ms * 1000 < self.wait_us

    def decode_released(self, raws: list[bytes], index: NameIndex) -> list[Incoming]:
        items: list[Incoming] = []
        for raw in raws:
            try:
                items.append(decode_event(raw, index))
            except InvalidEvent:  # it was valid when held; a changed model must not block
                continue
        return in_order(items)

    async def lost(self, now: datetime, index: NameIndex) -> list[Incoming]:
        """Followers held for ``follows_wait_s`` or longer, oldest ``occurred`` first."""
        cutoff = micros(now) - self.wait_us
        ids: list[Any] = await self.redis.zrangebyscore(
            self.keys.waitlist, "-inf", cutoff, start=0, num=self.batch_size
        )
        if not ids:
            return []
        raws: list[Any] = await self.redis.hmget(self.keys.held_events, ids)
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self.redis.zrem(self.keys.waitlist, *gone)
        items = self.decode_released([r for r in raws if r is not None], index)
        for item in items:
            item.waits = False
        return items

    async def held(self) -> int:
        """How many events wait for their leader (for tests and ``repr``)."""
        return int(await self.redis.hlen(self.keys.held_events))
