"""A dispatcher process killed (SIGKILL) after an action's effect but before the batch was
acked: the redelivered firing does not repeat the effect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import DISPATCH_GROUP, Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response
from tests.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


def start_dispatcher_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUTOMATIONS_REDIS_URL": str(settings.redis_url),
           "AUTOMATIONS_PREFIX": settings.prefix, "AUTOMATIONS_CONSUMER_NAME": "doomed",
           "AUTOMATIONS_ACTION_TIMEOUT_S": "60", "AUTOMATIONS_BLOCK_MS": "50",
           # its action leases expire as soon as its entries may be reclaimed
           "AUTOMATIONS_CLAIM_IDLE_MS": str(settings.claim_idle_ms),
           "AUTOMATIONS_DISPATCH_READERS": "1"}  # both firings in one batch
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "automations", "serve", "--only",
                                 "dispatcher"], cwd=ROOT, env=env, stdout=out, stderr=out)


async def test_kill_between_effect_and_ack_does_not_repeat_the_effect(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink, tmp_path: Path,
) -> None:
    http_sink.script("/hang", Response(200, delay=60))  # holds the batch (and its ack) open
    quick = automation(CallWebhook(url=http_sink.url("/once")), name="quick")
    stuck = automation(CallWebhook(url=http_sink.url("/hang")), name="stuck")
    quick, stuck = await stored(store, quick, stuck)
    done_firing = await fire(redis, keys, quick, disk_event())
    await fire(redis, keys, stuck, disk_event())

    process = start_dispatcher_process(fast, tmp_path / "dispatcher.log")
    try:
        async def effect_recorded() -> bool:
            return bool(http_sink.received("/hang")) and bool(
                await redis.exists(keys.done(f"{done_firing.id}:0")))
        await wait_until(effect_recorded, timeout=15)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    pending = await redis.xpending(keys.partition(0).firings, DISPATCH_GROUP)
    assert pending["pending"] == 2, (tmp_path / "dispatcher.log").read_text()

    http_sink.script("/hang", Response(200))
    async with Dispatcher(redis, fast, ports=build_ports(redis, fast, keys), keys=keys) as survivor:
        async def redelivered() -> bool:
            await survivor.drain()
            return len(http_sink.received("/hang")) == 2
        await wait_until(redelivered, timeout=15)

    assert len(http_sink.received("/once")) == 1
    assert survivor.counts["skipped"] == 1
    assert (await redis.xpending(keys.partition(0).firings, DISPATCH_GROUP))["pending"] == 0
    executed = [e for e in await action_events(redis, keys)
                if e["event"].endswith(".executed")]
    assert len(executed) == 2
