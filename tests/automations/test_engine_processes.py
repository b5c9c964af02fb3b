"""The two multi-process guarantees with real ``automations serve --only engine`` processes on
one stream: no lost firing and no double firing, also when one engine is SIGKILLed mid-run
(its pending entries are reclaimed by the other; events it already evaluated are seen)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from automations.engine.outbox import firings_of
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import Publisher
from tests.automations.engine_harness import automation
from tests.wait import acknowledged, wait_until
from triggers.firing import Firing

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("automations"))
EVENTS = 3000


def spawn(procs: list[subprocess.Popen[str]], redis_url: str, prefix: str, name: str) -> None:
    env = {
        **os.environ, "AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix,
        "AUTOMATIONS_BLOCK_MS": "50", "AUTOMATIONS_BATCH_SIZE": "100",
        "AUTOMATIONS_CLAIM_IDLE_MS": "500", "AUTOMATIONS_CLAIM_INTERVAL_S": "0.2",
        "AUTOMATIONS_CONSUMER_NAME": name,
    }
    procs.append(subprocess.Popen(
        [EXE, "serve", "--only", "engine"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # (an unread pipe would block)
    ))


async def _firings(redis: aioredis.Redis, keys: Keys) -> list[Firing]:
    entries: Any = await redis.xrange(keys.partition(0).firings)
    return [firing for _, f in entries for firing in firings_of(f)]


async def _until(redis: aioredis.Redis, keys: Keys, count: int, seconds: float) -> list[Firing]:
    """At least ``count`` firings, read once the engines have acknowledged every event (so a
    double firing would be among them)."""

    async def settled() -> list[Firing] | None:
        if not await acknowledged(redis, keys.events, ENGINE_GROUP):
            return None
        firings = await _firings(redis, keys)
        return firings if len(firings) >= count else None

    return await wait_until(settled, timeout=seconds)


async def _both_consuming(redis: aioredis.Redis, keys: Keys) -> None:
    """Both engines have read from the group (one may start slower than the other)."""

    async def both() -> bool:
        consumers: Any = await redis.xinfo_consumers(keys.events, ENGINE_GROUP)
        return {c["name"] for c in consumers} >= {b"engine-a", b"engine-b"}

    await wait_until(both, timeout=30)


@pytest.mark.parametrize("kill_one", [False, True])
async def test_two_engine_processes_fire_exactly_once(
    redis: aioredis.Redis, settings: Settings, keys: Keys, redis_url: str, prefix: str,
    procs: list[subprocess.Popen[str]], kill_one: bool,
) -> None:
    every = automation({"posture": "Reactive", "expect": ["job.done"]}, name="every")
    fifth = automation({"posture": "Reactive", "expect": ["job.done"], "threshold": 5,
                        "for_each": ["prefect.resource.id"]}, name="every-fifth")
    await AutomationStore(redis, keys).apply([every, fifth])
    for name in ("engine-a", "engine-b"):
        spawn(procs, redis_url, prefix, name)
    events = [Event(event="job.done", resource={"prefect.resource.id": f"r{i % 10}"})
              for i in range(EVENTS)]
    publisher = Publisher(redis, settings)
    await publisher.publish(events[:1000])
    await _until(redis, keys, 100, 30)
    await _both_consuming(redis, keys)
    if kill_one:
        procs[0].send_signal(signal.SIGKILL)
    await publisher.publish(events[1000:])
    expected = EVENTS + EVENTS // 5
    firings = await _until(redis, keys, expected, 60)
    by_automation = Counter(f.automation_id for f in firings)
    assert by_automation == {every.id: EVENTS, fifth.id: EVENTS // 5}
    fired_for = Counter(
        f.triggering_event["id"] for f in firings
        if f.automation_id == every.id and f.triggering_event is not None
    )
    assert set(fired_for.values()) == {1}
    assert len(fired_for) == EVENTS
    consumers: Any = await redis.xinfo_consumers(keys.events, "engine")
    assert {c["name"] for c in consumers} >= {b"engine-a", b"engine-b"}
    survivors = procs[1:] if kill_one else procs
    for proc in survivors:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
