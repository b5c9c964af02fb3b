"""Publishing events: validate, encode with orjson, pipelined XADD to the events stream.

Nothing is dropped silently: an invalid event raises ``InvalidEvent`` before anything is sent,
and Redis being unreachable raises ``BusUnavailable`` naming the URL (never its password).
Retrying after ``BusUnavailable`` is safe: the engine counts an event id once.

Back-pressure: trimming never drops an entry a consumer group still needs, so when the engine
falls behind the stream grows past ``events_maxlen``. A publisher that sees it more than
``TRIM_STEP`` entries over waits (polling with a growing delay) until trimming brings it back,
for at most ``publish_wait_s``, then raises ``BusOverloaded``: stream length and Redis memory stay
bounded by the engine's pace, and producers slow down instead of filling Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import anyio
import redis
import redis.asyncio as aioredis

from automations.connection import (
    CONNECTION_ERRORS,
    connect,
    connect_sync,
    display_url,
    redis_url,
)
from automations.errors import BusOverloaded, BusUnavailable, InvalidEvent
from automations.events import RESOURCE_ID, Event
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.upkeep import TRIM_SCRIPT, TRIM_STEP, trim_acknowledged

EventLike = Event | Mapping[str, Any] | str
CHUNK = 1000  # commands per pipeline round trip
FIRST_WAIT_S = 0.05
LONGEST_WAIT_S = 1.0


def over_bound(length: int, maxlen: int) -> bool:
    """Is the stream so far past ``maxlen`` that trimming could not keep up (a backlog)?"""
    return length > maxlen + TRIM_STEP


def _overloaded(stream: str, length: int, maxlen: int, waited: float) -> BusOverloaded:
    return BusOverloaded(
        f"{stream} still holds {length} entries after {waited:.1f} s, more than "
        f"AUTOMATIONS_EVENTS_MAXLEN={maxlen}: the engine is behind (or a consumer group nobody "
        "reads keeps them: XGROUP DESTROY it). The events just sent were published; slow down."
    )


def build_event(event_or_dict: EventLike | None = None, /, **fields: Any) -> Event:
    """An ``Event`` from a model, a dict, an event name or keyword fields (which override).

    ``resource`` may be a bare string: it becomes ``{"prefect.resource.id": ...}``.
    """
    if isinstance(event_or_dict, Event):
        if not fields:
            return event_or_dict
        data: dict[str, Any] = {**event_or_dict.model_dump(), **fields}
    elif isinstance(event_or_dict, str):
        data = {"event": event_or_dict, **fields}
    elif isinstance(event_or_dict, Mapping):
        data = {**event_or_dict, **fields}
    elif event_or_dict is None:
        data = fields
    else:
        raise InvalidEvent(f"cannot build an event from {type(event_or_dict).__name__}")
    if isinstance(data.get("resource"), str):
        data["resource"] = {RESOURCE_ID: data["resource"]}
    return Event.parse(data)


def _encode(events: Iterable[Event]) -> list[tuple[bytes, str]]:
    """Encode everything first, so an oversized event fails the call before any XADD."""
    return [(e.encoded(), str(e.id)) for e in events]


def _unavailable(url: str, exc: BaseException) -> BusUnavailable:
    return BusUnavailable(f"cannot publish to Redis at {display_url(url)}: {exc}")


def client_url(client: aioredis.Redis | redis.Redis) -> str:
    """Where a client points (no password), for error messages."""
    if not hasattr(client, "connection_pool"):  # a cluster client: the node it asks first
        node = cast(Any, client).get_default_node()
        return f"redis://{node.host}:{node.port}/0" if node is not None else "Redis Cluster"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class Publisher:
    """Pipelined XADDs to one stream; trims it (safely, see ``streams.trim_acknowledged``) once it
    has grown past ``maxlen`` by a thousand entries, so the trim stays an exact, small one."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, *, stream: str | None = None,
        maxlen: int | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.stream = stream or Keys.from_settings(settings).events
        self.maxlen = maxlen or settings.events_maxlen
        self.published = 0

    def __repr__(self) -> str:
        return f"Publisher({self.stream!r}, published={self.published})"

    async def publish(self, events: Sequence[Event]) -> None:
        encoded = _encode(events)
        try:
            length = 0
            for start in range(0, len(encoded), CHUNK):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for data, event_id in encoded[start:start + CHUNK]:
                        pipe.xadd(self.stream, {b"data": data, b"id": event_id})
                    pipe.xlen(self.stream)
                    replies = await pipe.execute()
                length = int(replies[-1])
                self.published += len(replies) - 1
            if length > self.maxlen + TRIM_STEP // 2:
                length -= await trim_acknowledged(self.redis, self.stream, self.maxlen)
            if over_bound(length, self.maxlen):
                await self._wait_for_room(length)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(client_url(self.redis), exc) from exc

    async def _wait_for_room(self, length: int) -> None:
        """Back-pressure (module docstring)."""
        started = time.monotonic()
        delay = FIRST_WAIT_S
        while over_bound(length, self.maxlen):
            waited = time.monotonic() - started
            if waited >= self.settings.publish_wait_s:
                raise _overloaded(self.stream, length, self.maxlen, waited)
            await anyio.sleep(min(delay, self.settings.publish_wait_s - waited))
            delay = min(delay * 2, LONGEST_WAIT_S)
            await trim_acknowledged(self.redis, self.stream, self.maxlen)
            length = int(await self.redis.xlen(self.stream))


async def aemit_many(
    events: Iterable[EventLike], *, redis: aioredis.Redis | None = None,
    settings: Settings | None = None,
) -> list[Event]:
    """Publish many events in pipelined round trips; returns them (with their ids)."""
    settings = settings or Settings()
    built = [build_event(e) for e in events]
    if redis is not None:
        await Publisher(redis, settings).publish(built)
        return built
    client = connect(settings)
    try:
        await Publisher(client, settings).publish(built)
    finally:
        await client.aclose()
    return built


async def aemit(
    event_or_dict: EventLike | None = None, /, *, redis: aioredis.Redis | None = None,
    settings: Settings | None = None, **fields: Any,
) -> Event:
    """Publish one event: ``await aemit("my.event", resource="thing.1", payload={...})``."""
    event = build_event(event_or_dict, **fields)
    await aemit_many([event], redis=redis, settings=settings)
    return event


def emit_many(events: Iterable[EventLike], *, settings: Settings | None = None) -> list[Event]:
    """Synchronous ``aemit_many`` on a short-lived sync client (for scripts and flows)."""
    settings = settings or Settings()
    built = [build_event(e) for e in events]
    encoded = _encode(built)
    stream = Keys.from_settings(settings).events
    url = redis_url(settings)
    try:
        client = connect_sync(settings)  # a cluster client asks the cluster here already
    except CONNECTION_ERRORS as exc:
        raise _unavailable(url, exc) from exc
    try:
        length = 0
        for start in range(0, len(encoded), CHUNK):
            pipe = client.pipeline(transaction=False)
            for data, event_id in encoded[start:start + CHUNK]:
                pipe.xadd(stream, {b"data": data, b"id": event_id})
            pipe.xlen(stream)
            length = int(pipe.execute()[-1])
        maxlen = settings.events_maxlen
        if length > maxlen + TRIM_STEP // 2:
            length -= int(client.eval(TRIM_SCRIPT, 1, stream, maxlen, TRIM_STEP))
        started, delay = time.monotonic(), FIRST_WAIT_S
        while over_bound(length, maxlen):  # back-pressure, as Publisher._wait_for_room
            waited = time.monotonic() - started
            if waited >= settings.publish_wait_s:
                raise _overloaded(stream, length, maxlen, waited)
            time.sleep(min(delay, settings.publish_wait_s - waited))
            delay = min(delay * 2, LONGEST_WAIT_S)
            client.eval(TRIM_SCRIPT, 1, stream, maxlen, TRIM_STEP)
            length = int(client.xlen(stream))
    except CONNECTION_ERRORS as exc:
        raise _unavailable(url, exc) from exc
    finally:
        client.close()
    return built


def emit(
    event_or_dict: EventLike | None = None, /, *, settings: Settings | None = None, **fields: Any
) -> Event:
    """Publish one event synchronously: ``emit("my.event", resource="thing.1")``."""
    event = build_event(event_or_dict, **fields)
    emit_many([event], settings=settings)
    return event
