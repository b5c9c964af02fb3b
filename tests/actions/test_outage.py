"""The dispatcher survives Redis going away and delivers what fires once it is back."""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import automation, disk_event, fire, stored
from tests.redis_server import RedisServer
from tests.sinks import HttpSink


async def test_dispatcher_rides_out_a_redis_restart(
    own_redis: RedisServer, fast: Settings, http_sink: HttpSink,
) -> None:
    settings = fast.model_copy(update={"redis_url": own_redis.url})
    keys = Keys(settings.prefix)
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
            await anyio.sleep(0.5)  # the readers and the retry loop hit a dead server
            own_redis.start()  # without persistence: the automation is stored again
            [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/after"))))
            await fire(client, keys, a, disk_event())
            await http_sink.wait_for(2, "/after", timeout=15)
            dispatcher.stop()
    finally:
        await client.aclose()
