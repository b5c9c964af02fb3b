"""A batch applied to one partition but refused by another (here: an ACL that denies the
engine partition 1's keys, then grants them) is redelivered whole; partition 0 skips the
events it has already counted, partition 1 counts them now. Nothing is lost, nothing counted
twice, each firing written once."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import redis.asyncio as aioredis

from automations.engine.engine import Engine
from automations.engine.outbox import firings_of
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.models import Automation
from automations.settings import Settings
from automations.streams.publish import Publisher
from tests.automations.engine_harness import automation
from tests.wait import wait_until

EVENTS = 40


def in_partition(keys: Keys, number: int, trigger: dict[str, Any], name: str) -> Automation:
    """An automation whose id falls in partition ``number``."""
    while True:
        made = automation(trigger, name=name)
        if keys.of(made.id).number == number:
            return made


def counter(keys: Keys, number: int) -> Automation:
    return in_partition(keys, number, {"posture": "Reactive", "expect": ["load"],
                                       "threshold": 10**9, "within": 3600}, f"count-{number}")


def pairs(keys: Keys, number: int) -> Automation:
    return in_partition(keys, number, {"posture": "Reactive", "expect": ["load"],
                                       "threshold": 2, "within": 3600,
                                       "for_each": ["prefect.resource.id"]}, f"pairs-{number}")


async def count(redis: aioredis.Redis, keys: Keys, made: Automation) -> int:
    part = keys.of(made.id)
    value = await redis.hget(part.bucket(str(made.id), str(made.trigger.id), ""), "c")
    return int(value or 0)


async def firings(redis: aioredis.Redis, keys: Keys) -> list[tuple[str, str]]:
    found = []
    for outbox in keys.outboxes:
        entries: Any = await redis.xrange(outbox)
        for _, fields in entries:
            found += [(str(f.automation_id), str(f.triggering_labels["prefect.resource.id"]))
                      for f in firings_of(fields)]
    return found


async def test_a_batch_refused_by_one_partition_is_applied_once_everywhere(
    redis: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    settings = settings.model_copy(update={"partitions": 2, "decision_log": False,
                                           "reconnect_max_s": 0.2})
    keys = Keys.from_settings(settings)
    user, password = f"engine-{uuid.uuid4().hex[:8]}", "pw"
    allowed = [f"~{keys.g}:*", f"~{keys.partition(0).base}:*"]
    await redis.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}",
                                "+@all", "&*", "~*")
    engine_redis = aioredis.Redis.from_url(
        redis_url.replace("redis://", f"redis://{user}:{password}@"))
    counters = [counter(keys, 0), counter(keys, 1)]
    pairing = [pairs(keys, 0), pairs(keys, 1)]
    await redis.xgroup_create(keys.events, ENGINE_GROUP, id="0", mkstream=True)
    engine = Engine(engine_redis, settings, consumer="engine")
    await engine.load([*counters, *pairing])
    await redis.execute_command("ACL", "SETUSER", user, "resetkeys", *allowed)
    events = [Event(event="load", resource={"prefect.resource.id": f"r{i // 2}"})
              for i in range(EVENTS)]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            await Publisher(redis, settings).publish(events)
            await wait_until(lambda: engine.failed_batches >= 2, timeout=20)
            assert await count(redis, keys, counters[0]) == EVENTS  # applied before the refusal
            assert await count(redis, keys, counters[1]) == 0
            await redis.execute_command("ACL", "SETUSER", user, f"~{keys.partition(1).base}:*")

            async def both_counted() -> bool:
                return [await count(redis, keys, c) for c in counters] == [EVENTS, EVENTS]

            await wait_until(both_counted, timeout=20)
            await wait_until(lambda: engine.processed >= EVENTS, timeout=20)
            engine.stop()
        assert [await count(redis, keys, c) for c in counters] == [EVENTS, EVENTS]
        fired = await firings(redis, keys)
        expected = {(str(a.id), f"r{n}") for a in pairing for n in range(EVENTS // 2)}
        assert sorted(fired) == sorted(expected)  # each pair once, in both partitions
    finally:
        await engine_redis.aclose()
        await redis.execute_command("ACL", "DELUSER", user)
