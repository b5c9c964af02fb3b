"""The engine and timer services inside ``serve``: stored automations are loaded before the
first event, hot reload reaches the running engine, SIGTERM-style stop drains."""

from __future__ import annotations

from typing import Any

import anyio
import redis.asyncio as aioredis

from automations.events import Event
from automations.keys import Keys
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import Publisher
from tests.automations.engine_harness import automation


async def _firing_count(redis: aioredis.Redis, keys: Keys, at_least: int) -> int:
    with anyio.fail_after(10):
        while True:
            count = int(await redis.xlen(keys.firings))
            if count >= at_least:
                return count
            await anyio.sleep(0.02)


async def test_engine_service_loads_and_follows_the_store(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    store = AutomationStore(redis, keys)
    await store.apply([automation({"posture": "Reactive", "expect": ["a"]}, name="on-a")])
    publisher = Publisher(redis, settings)
    await publisher.publish([Event(event="a", resource={"prefect.resource.id": "r"})])
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(settings, ["engine", "timer"], stopping=stopping))
        assert await _firing_count(redis, keys, 1) == 1  # the event was queued before start
        await store.apply([automation({"posture": "Reactive", "expect": ["b"]}, name="on-a")])
        with anyio.fail_after(5):  # hot reload: the new trigger is in force within a second
            while True:
                await publisher.publish([Event(event="b", resource={"prefect.resource.id": "r"})])
                await anyio.sleep(0.2)
                if await redis.xlen(keys.firings) > 1:
                    break
        stopping.set()
    entries: Any = await redis.xinfo_groups(keys.events)
    assert entries[0]["pending"] == 0
