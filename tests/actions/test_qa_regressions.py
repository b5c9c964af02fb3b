"""Regressions found by fault-injection QA (issue: bad input and faults)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from actions.models import CallWebhook, DoNothing
from automations.connection import CONNECTION_ERRORS
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import DISPATCH_GROUP, Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import (
    action_events,
    automation,
    dead_letters,
    disk_event,
    fire,
    stored,
)
from tests.redis_server import RedisServer
from tests.sinks import HttpSink, Response


async def test_every_action_gets_its_own_running_index(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    """Two ``actions`` and one ``actions_on_trigger`` are numbered 0, 1, 2: with a gap the
    third shared the second's idempotency key and was skipped as already done."""
    a = automation(
        CallWebhook(url=http_sink.url("/a")), CallWebhook(url=http_sink.url("/b")),
        actions_on_trigger=[CallWebhook(url=http_sink.url("/c"))],
    )
    [a] = await stored(store, a)
    firing = await fire(redis, keys, a, disk_event())

    await dispatcher.drain()

    keys_seen = [http_sink.received(p)[0].headers["Idempotency-Key"] for p in ("/a", "/b", "/c")]
    assert keys_seen == [f"{firing.id}:{i}" for i in range(3)]
    executed = [e["payload"]["action_index"] for e in await action_events(redis, keys)
                if e["event"].endswith(".executed")]
    assert sorted(executed) == [0, 1, 2]


async def test_effect_done_during_an_outage_is_recorded_not_repeated(
    own_redis: RedisServer, fast: Settings, http_sink: HttpSink, caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis goes away while a webhook is in flight: the dispatcher keeps trying to record the
    done effect until Redis is back, instead of failing the batch (whose redelivery would
    call the webhook a second time)."""
    settings = fast.model_copy(update={"redis_url": own_redis.url, "claim_idle_ms": 10_000})
    keys = Keys(settings.prefix)
    client = aioredis.Redis.from_url(own_redis.url)
    store = AutomationStore(client, keys)
    http_sink.script("/slow", Response(200, b"ok", delay=0.5))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/slow"))))
    dispatcher = Dispatcher(client, settings, ports=build_ports(client, settings, keys), keys=keys)
    try:
        async with dispatcher, anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            firing = await fire(client, keys, a, disk_event())
            await http_sink.wait_for(1, "/slow")
            await client.save()  # the restarted server comes back with the firing pending
            own_redis.stop()
            await _wait_for_log(caplog, "effect done but Redis unreachable")
            own_redis.start()
            await _wait_until(lambda: client.exists(keys.done(f"{firing.id}:0")))
            dispatcher.stop()
        pending: Any = await client.xpending(keys.firings, DISPATCH_GROUP)
        assert pending["pending"] == 0
    finally:
        await client.aclose()
    assert len(http_sink.received("/slow")) == 1


async def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    with anyio.fail_after(10):
        while text not in caplog.text:
            await anyio.sleep(0.02)


async def _wait_until(check: Callable[[], Awaitable[int]]) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                if await check():
                    return
            except CONNECTION_ERRORS:
                pass
            await anyio.sleep(0.02)


async def test_an_invalid_firing_is_dead_lettered_with_the_field_path(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(DoNothing()))
    firing = await fire(redis, keys, a, disk_event())
    broken = orjson.loads(firing.to_json()) | {"triggering_event": [1]}
    await redis.xadd(keys.firings, {b"data": orjson.dumps(broken)})

    await dispatcher.drain()

    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith("invalid firing: triggering_event: ")
    assert dispatcher.counts["executed"] == 1
