"""Several dispatchers share one firings stream; a retry leased by a dead dispatcher comes
back; the dispatcher service drains on stop."""

from __future__ import annotations

import time

import anyio
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.dispatch.dispatcher import Dispatcher
from automations.dispatch.retries import RetryJob, RetryQueue
from automations.keys import Keys
from automations.service import build_ports, serve
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response
from tests.wait import wait_until


async def test_two_dispatchers_run_each_action_once(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/hook"))))
    for _ in range(40):
        await fire(redis, keys, a, disk_event())
    small = fast.model_copy(update={"batch_size": 5})
    ports = build_ports(redis, small, keys)
    one = Dispatcher(redis, small, ports=ports, keys=keys, consumer="one")
    two = Dispatcher(redis, small, ports=ports, keys=keys, consumer="two")
    async with one, two, anyio.create_task_group() as tg:
        tg.start_soon(one.run)
        tg.start_soon(two.run)
        await http_sink.wait_for(40, "/hook")
        one.stop()
        two.stop()
    keys_seen = [r.headers["Idempotency-Key"] for r in http_sink.received("/hook")]
    assert len(keys_seen) == len(set(keys_seen)) == 40
    assert one.counts["executed"] > 0 and two.counts["executed"] > 0


async def test_leased_retry_of_a_dead_dispatcher_becomes_due_again(
    redis: aioredis.Redis, keys: Keys,
) -> None:
    queue = RetryQueue(redis, keys)
    job = RetryJob(key="f:0", firing="{}", automation_id="a", index=0,
                   action_type="do-nothing", attempt=2)
    async with redis.pipeline(transaction=True) as pipe:
        queue.schedule(pipe, job, due=100.0)
        await pipe.execute()
    assert await queue.claim(99.0, lease_s=50, limit=10) == []
    assert await queue.claim(100.0, lease_s=50, limit=10) == [job]
    assert await queue.claim(120.0, lease_s=50, limit=10) == []  # leased until 150
    assert await queue.claim(150.0, lease_s=50, limit=10) == [job]  # the holder died


async def test_dispatcher_service_runs_and_stops(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/svc"))))
    stopping = anyio.Event()
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(fast, ["dispatcher"], stopping=stopping))
        await fire(redis, keys, a, disk_event())
        await http_sink.wait_for(1, "/svc")
        stopping.set()
    assert time.monotonic() - started < 5


async def test_a_slow_batch_is_not_reclaimed_by_another_dispatcher(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    # claim_idle_ms is 500 ms in tests: without the in-flight heartbeat, the second
    # dispatcher would reclaim the entry after half a second and call the webhook again.
    http_sink.script("/slow", Response(200, delay=1.5))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/slow"))))
    await fire(redis, keys, a, disk_event())
    ports = build_ports(redis, fast, keys)
    one = Dispatcher(redis, fast, ports=ports, keys=keys, consumer="one")
    two = Dispatcher(redis, fast, ports=ports, keys=keys, consumer="two")
    async with one, two, anyio.create_task_group() as tg:
        tg.start_soon(one.run)
        await http_sink.wait_for(1, "/slow")
        tg.start_soon(two.run)
        await wait_until(lambda: one.counts["executed"] + two.counts["executed"])
        # Nothing to wait for: one more claim idle time in which a wrong reclaim would show.
        await anyio.sleep(0.6)
        one.stop()
        two.stop()
    assert len(http_sink.received("/slow")) == 1
    assert two.counts["executed"] == 0 and two.counts["skipped"] == 0
