"""The dispatcher survives Redis going away and delivers what fires once it is back."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.connection import CONNECTION_ERRORS
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import DISPATCH_GROUP, Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from bench.redis_server import RedisServer
from tests.actions.stories import automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response
from tests.wait import logged, wait_until


async def test_dispatcher_rides_out_a_redis_restart(
    own_redis: RedisServer, fast: Settings, http_sink: HttpSink, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = fast.model_copy(update={"redis_url": own_redis.url})
    keys = Keys.from_settings(settings)
    client = aioredis.Redis.from_url(own_redis.url)
    store = AutomationStore(client, keys)
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/after"))))
    dispatcher = Dispatcher(client, settings, ports=build_ports(client, settings, keys), keys=keys)
    try:
        async with dispatcher, anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            await fire(client, keys, a, disk_event())
            await http_sink.wait_for(1, "/after")
            own_redis.stop()
            # the readers and the retry loop hit the dead server
            await logged(caplog, f"{keys.partition(0).firings}/{DISPATCH_GROUP}: Redis unreachable")
            await logged(caplog, "action retries: Redis unreachable")
            own_redis.start()  # without persistence: the automation is stored again
            [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/after"))))
            await fire(client, keys, a, disk_event())
            await http_sink.wait_for(2, "/after", timeout=15)
            dispatcher.stop()
    finally:
        await client.aclose()


async def test_effect_done_during_an_outage_is_recorded_not_repeated(
    own_redis: RedisServer, fast: Settings, http_sink: HttpSink, caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis goes away while a webhook is in flight: the dispatcher keeps trying to record the
    done effect until Redis is back, instead of failing the batch (whose redelivery would
    call the webhook a second time)."""
    settings = fast.model_copy(update={"redis_url": own_redis.url, "claim_idle_ms": 10_000})
    keys = Keys.from_settings(settings)
    client = aioredis.Redis.from_url(own_redis.url)
    store = AutomationStore(client, keys)
    http_sink.script("/slow", Response(200, b"ok", delay=0.5))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/slow"))))
    dispatcher = Dispatcher(client, settings, ports=build_ports(client, settings, keys), keys=keys)
    try:
        async with dispatcher, anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            firing = await fire(client, keys, a, disk_event())
            key = f"{firing.id}:0"
            await http_sink.wait_for(1, "/slow")
            await client.save()  # the restarted server comes back with the firing pending
            own_redis.stop()
            await wait_until(lambda: any(key in r.message and "Redis unreachable" in r.message
                                         for r in caplog.records),
                             what="the failed record of the done effect")
            own_redis.start()
            await wait_until(lambda: client.exists(keys.done(key)), tolerate=CONNECTION_ERRORS)
            dispatcher.stop()
        pending: Any = await client.xpending(keys.partition(0).firings, DISPATCH_GROUP)
        assert pending["pending"] == 0
    finally:
        await client.aclose()
    assert len(http_sink.received("/slow")) == 1
