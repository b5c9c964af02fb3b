"""``follows`` ordering (reference 3.10, 7.7) with its state in Redis, shared by all engines.

An event whose ``follows`` leader has not been processed is held: the engine's batch script
(``triggers/lua/apply.lua``) checks ``keys.seen(leader)`` and, in the same atomic step,
stores the event in ``keys.held_events``, adds it to ``keys.followers(leader)`` and to
``keys.waitlist`` (scored by when it was held). Processing the leader (any engine) returns its
followers, which the engine evaluates right after it, in ``occurred`` order. Because holding
and releasing are both inside scripts, no follower can slip between a leader's check and its
completion (the race Prefect closes with a double check). A follower stays in
``held_events``/``waitlist`` until it is itself processed, so a crash after the release only
delays it to the bounded-wait release: ``lost()`` hands back followers held longer than
``settings.follows_wait_s``. An entry older than that when first read skips the wait.

This module also decodes stream payloads into ``Incoming`` (shared by the engine and the
release paths): the pydantic ``Event`` is built only when some trigger may care about it.
"""

from __future__ import annotations

import re
from collections.abc import Sized
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import orjson
import redis.asyncio as aioredis

from automations.errors import EventTooLarge, InvalidEvent
from automations.events import MAX_EVENT_BYTES, RESOURCE_ID, Event
from automations.keys import Keys
from automations.settings import Settings
from triggers.window import micros

SKIPPED_EVENTS = frozenset({"prefect.log.write"})
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class NameIndex(Protocol):
    """What decoding asks of an index: the triggers an event name may interest
    (``TriggerIndex`` or the engine's ``Planner``)."""

    def candidates(self, event_name: str, /) -> Sized: ...


@dataclass(slots=True)
class Incoming:
    """A decoded event on its way through one batch."""

    id: str
    name: str
    occurred_us: int
    follows: str | None
    raw: bytes
    event: Event | None  # built only when a trigger may be interested
    waits: bool = True  # may be held for its leader

    def __repr__(self) -> str:
        return f"Incoming({self.name} id={self.id} follows={self.follows})"


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a string")
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _uuid(value: Any) -> str:
    """The canonical text of a UUID (a regex check is cheaper than ``UUID()`` for the usual
    lowercase form)."""
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):
        return value
    return str(UUID(value))


def _light(data: dict[str, Any], raw: bytes) -> Incoming:
    """The fields ordering and dedupe need, without building the model."""
    name = data["event"]
    resource = data["resource"]
    if not isinstance(name, str) or not name or not isinstance(resource, dict):
        raise ValueError("bad event or resource")
    if not isinstance(resource.get(RESOURCE_ID), str) or not resource[RESOURCE_ID]:
        raise ValueError("bad resource id")
    if not isinstance(data.get("payload", {}), dict):
        raise ValueError("bad payload")  # the model says why
    if not isinstance(data.get("related", []), list):
        raise ValueError("bad related")
    follows = data.get("follows")
    return Incoming(
        id=_uuid(data["id"]), name=name, occurred_us=micros(_time(data["occurred"])),
        follows=_uuid(follows) if follows else None, raw=raw, event=None,
    )


def decode_event(raw: bytes, index: NameIndex) -> Incoming:
    """Decode one payload; raise ``InvalidEvent`` with the precise reason."""
    if len(raw) > MAX_EVENT_BYTES:  # a raw XADD bypasses the publishers' size check
        raise EventTooLarge(f"event is {len(raw)} bytes; at most {MAX_EVENT_BYTES} are allowed")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidEvent("an event must be a JSON object")
    for required in ("id", "occurred"):
        if required not in data:
            raise InvalidEvent(f"{required}: required on the stream (emit() sets it)")
    name = data.get("event")
    if isinstance(name, str) and name not in SKIPPED_EVENTS and not index.candidates(name):
        try:
            return _light(data, raw)
        except (KeyError, ValueError, TypeError, AttributeError):
            pass  # the model gives the precise message (or accepts an unusual valid form)
    event = Event.parse(data)
    return Incoming(
        id=str(event.id), name=event.event, occurred_us=micros(event.occurred),
        follows=str(event.follows) if event.follows else None, raw=raw, event=event,
    )


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
