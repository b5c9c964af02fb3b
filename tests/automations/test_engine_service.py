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
from tests.wait import wait_until


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
        outbox = keys.partition(0).firings
        assert await wait_until(lambda: redis.xlen(outbox)) == 1  # queued before start
        await store.apply([automation({"posture": "Reactive", "expect": ["b"]}, name="on-a")])

        async def b_fires() -> bool:
            await publisher.publish([Event(event="b", resource={"prefect.resource.id": "r"})])
            return int(await redis.xlen(keys.partition(0).firings)) > 1

        # hot reload: the new trigger is in force within a second
        await wait_until(b_fires, timeout=5, poll=0.2)
        stopping.set()
    entries: Any = await redis.xinfo_groups(keys.events)
    assert entries[0]["pending"] == 0
