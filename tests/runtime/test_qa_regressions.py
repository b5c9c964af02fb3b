"""Regressions found by fault-injection QA: raw entries on the runs stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from automations.keys import Keys
from automations.runtime.states import StateType
from automations.runtime.worker import Worker
from automations.settings import Settings
from tests.runtime.test_worker import _deploy, _start


async def test_a_non_utf8_run_id_is_dead_lettered_without_holding_up_its_batch(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    await redis.xadd(keys.runs, {b"id": b"\xff\xfe"})
    dep = await _deploy(redis, keys, tmp_path, "adder", a=1)
    store, run = await _start(redis, settings, dep, b=2)

    assert await Worker(redis, settings).run_until_idle() == 2

    assert (await store.require(run.id)).state.type == StateType.COMPLETED
    dead: Any = await redis.xrange(keys.dead(keys.runs))
    [(_, fields)] = dead
    assert fields[b"deliveries"] == b"1"
    assert b"not UTF-8" in fields[b"reason"]
