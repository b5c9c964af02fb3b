"""Notifications are not sent twice (Apprise sends no idempotency key, so the receiver cannot
drop repeats): a receiver slower than the action timeout, or a dispatcher killed mid-send,
gets the notification once; ``retry_on_timeout`` opts into at-least-once."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from actions.models import SendNotification
from automations.dispatch.dispatcher import Dispatcher
from automations.insight.dead_letters import read, redrive
from automations.keys import DISPATCH_GROUP, Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, dead_letters, disk_event, fire, stored
from tests.actions.test_crash import start_dispatcher_process
from tests.sinks import HttpSink, Response
from tests.wait import wait_until


def outcomes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "attempt" in e["payload"]]


async def test_a_receiver_slower_than_the_timeout_gets_one_notification(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    settings = fast.model_copy(update={"action_timeout_s": 1.0})
    http_sink.script("/n", Response(200, delay=2.5), Response(200))
    [a] = await stored(store, automation(SendNotification(body="disk full",
                                                          urls=[http_sink.url("/n", "json")])))
    firing = await fire(redis, keys, a, disk_event())
    async with Dispatcher(redis, settings, ports=build_ports(redis, settings, keys),
                          keys=keys) as dispatcher:
        await dispatcher.drain()
        await redis.xadd(keys.partition(0).firings, {b"data": firing.to_json()})  # a redelivery
        await dispatcher.drain()
    assert len(http_sink.received("/n")) == 1
    [failed] = outcomes(await action_events(redis, keys))
    assert failed["event"] == "prefect.automation.action.failed"
    assert failed["payload"]["reason"] == "timeout"
    assert "timed out; may have been delivered" in failed["payload"]["message"]
    assert failed["payload"]["will_retry"] is False
    assert failed["payload"]["targets"][0]["status"] == "unconfirmed"
    [dead] = await dead_letters(redis, keys)
    assert "may have been delivered" in dead["reason"]
    assert dispatcher.counts["skipped"] == 1

    # An operator's re-drive of the dead letter is meant to send: it does.
    [letter] = await read(redis, keys.dead("firings"))
    await redrive(redis, keys, letter, now=time.time())
    async with Dispatcher(redis, settings, ports=build_ports(redis, settings, keys),
                          keys=keys) as again:
        await again.drain()
    assert len(http_sink.received("/n")) == 2
    assert outcomes(await action_events(redis, keys))[-1]["event"].endswith(".executed")


async def test_retry_on_timeout_sends_again(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    settings = fast.model_copy(update={"action_timeout_s": 1.0})
    http_sink.script("/n", Response(200, delay=2.5), Response(200))
    note = SendNotification(body="disk full", urls=[http_sink.url("/n", "json")],
                            retry_on_timeout=True)
    [a] = await stored(store, automation(note))
    await fire(redis, keys, a, disk_event())
    async with Dispatcher(redis, settings, ports=build_ports(redis, settings, keys),
                          keys=keys) as dispatcher:
        await dispatcher.drain()
    assert len(http_sink.received("/n")) == 2  # at least once: the receiver got it twice
    failed, executed = outcomes(await action_events(redis, keys))
    assert failed["payload"]["reason"] == "timeout" and failed["payload"]["will_retry"] is True
    assert executed["event"] == "prefect.automation.action.executed"


async def test_a_dispatcher_killed_mid_send_is_not_followed_by_a_second_send(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink, tmp_path: Path,
) -> None:
    """Killed while the receiver holds the request: the redelivered firing finds the send
    started and not concluded, and does not send it again (it reports it instead)."""
    http_sink.script("/n", Response(200, delay=5))
    [a] = await stored(store, automation(SendNotification(body="disk full",
                                                          urls=[http_sink.url("/n", "json")])))
    await fire(redis, keys, a, disk_event())
    process = start_dispatcher_process(fast, tmp_path / "dispatcher.log")
    try:
        await http_sink.wait_for(1, "/n", timeout=20)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    http_sink.script("/n", Response(200))
    async with Dispatcher(redis, fast, ports=build_ports(redis, fast, keys),
                          keys=keys) as survivor:
        async def redelivered() -> bool:
            await survivor.drain()
            return survivor.counts["gave_up"] == 1
        await wait_until(redelivered, timeout=15, what="the redelivered firing handled")
    assert len(http_sink.received("/n")) == 1
    failed = outcomes(await action_events(redis, keys))[-1]
    assert failed["payload"]["targets"][0]["status"] == "unconfirmed"
    assert "did not conclude" in failed["payload"]["message"]
    assert (await redis.xpending(keys.partition(0).firings, DISPATCH_GROUP))["pending"] == 0
