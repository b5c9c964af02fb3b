"""Back-pressure: when the engine falls behind, publishers wait for it instead of growing the
events stream without bound, and give up with ``BusOverloaded`` (nothing lost) after
``publish_wait_s``."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from automations.errors import BusOverloaded
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.settings import Settings
from automations.streams.publish import Publisher, emit_many
from automations.streams.upkeep import TRIM_STEP

MAXLEN = 1000


def events(n: int) -> list[Event]:
    return [Event(event="load.test", resource={"prefect.resource.id": f"r{i}"})
            for i in range(n)]


@pytest.fixture
def bounded(settings: Settings) -> Settings:
    return settings.model_copy(update={"events_maxlen": MAXLEN, "publish_wait_s": 0.5})


async def behind_engine(redis: aioredis.Redis, keys: Keys) -> None:
    """An engine group that has read nothing: trimming may not pass its first entry."""
    await redis.xgroup_create(keys.events, ENGINE_GROUP, id="$", mkstream=True)


async def test_a_publisher_far_ahead_of_the_engine_waits_then_fails_keeping_its_events(
    redis: aioredis.Redis, bounded: Settings, keys: Keys
) -> None:
    await behind_engine(redis, keys)
    started = time.monotonic()
    with pytest.raises(BusOverloaded, match="were published; slow down"):
        await Publisher(redis, bounded).publish(events(MAXLEN + TRIM_STEP + 500))
    assert time.monotonic() - started >= 0.5
    assert await redis.xlen(keys.events) == MAXLEN + TRIM_STEP + 500  # nothing dropped


async def test_a_publisher_returns_once_the_engine_catches_up(
    redis: aioredis.Redis, bounded: Settings, keys: Keys
) -> None:
    await behind_engine(redis, keys)
    slow = bounded.model_copy(update={"publish_wait_s": 20.0})
    consumed = 0

    async def engine_catches_up() -> None:
        nonlocal consumed
        await anyio.sleep(0.3)  # a late engine: the publisher must be waiting by now
        while True:
            read: Any = await redis.xreadgroup(ENGINE_GROUP, "e", {keys.events: ">"}, count=1000)
            if not read:
                break
            await redis.xack(keys.events, ENGINE_GROUP, *[i for i, _ in read[0][1]])
            consumed += len(read[0][1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(engine_catches_up)
        await Publisher(redis, slow).publish(events(MAXLEN + TRIM_STEP + 500))
        assert consumed >= 500  # it did not return before the engine had read the overflow
    assert await redis.xlen(keys.events) <= MAXLEN + TRIM_STEP


async def test_publishing_within_the_bound_never_waits(
    redis: aioredis.Redis, bounded: Settings, keys: Keys
) -> None:
    await behind_engine(redis, keys)
    started = time.monotonic()
    await Publisher(redis, bounded).publish(events(MAXLEN + TRIM_STEP))
    assert time.monotonic() - started < 0.5


def test_the_sync_emit_has_the_same_back_pressure(bounded: Settings, keys: Keys,
                                                  redis_url: str) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    try:
        client.xgroup_create(keys.events, ENGINE_GROUP, id="$", mkstream=True)
        with pytest.raises(BusOverloaded):
            emit_many(events(MAXLEN + TRIM_STEP + 500), settings=bounded)
        assert client.xlen(keys.events) == MAXLEN + TRIM_STEP + 500
    finally:
        client.delete(keys.events)
        client.close()
