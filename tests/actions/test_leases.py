"""Action leases on a real Redis: a reclaimed batch never starts a second copy of an action
that still runs elsewhere, and a stale executor (stalled past its lease) cannot record over
the one that took the action over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.dispatch.dispatcher import Dispatcher
from automations.dispatch.lease import Leases
from automations.dispatch.ledger import DONE, Begun, Ledger, Recorded, Start
from automations.dispatch.retries import RetryQueue
from automations.keys import DISPATCH_GROUP, Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.entries import Entry
from tests.actions.stories import action_events, automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response
from tests.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


async def test_the_record_script_fences_a_stale_token(
    redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    ledger = Ledger(redis, keys, settings, RetryQueue(redis, keys))
    old, new = Leases(redis, keys, 60_000, "a").keeper(), Leases(redis, keys, 60_000, "b").keeper()
    assert await ledger.begin([Start("f:0")], old.token) == [Begun.RUN]
    assert await ledger.begin([Start("f:0")], new.token) == [Begun.BUSY]  # no second copy
    assert await ledger.begin([Start("f:0")], old.token) == [Begun.RUN]  # its own batch again

    await redis.delete(keys.action_lease("f:0"))  # the old executor stalled past its lease
    assert await old.leases.renew(["f:0"], old.token) == ["f:0"]  # lost, not taken back
    assert await ledger.begin([Start("f:0")], new.token) == [Begun.RUN]
    assert await ledger.commit("f:0", token=old.token, done=DONE) is Recorded.FENCED
    assert not await redis.exists(keys.done("f:0"))
    assert await ledger.commit("f:0", token=new.token, done=DONE) is Recorded.WRITTEN
    assert await ledger.commit("f:0", token=new.token, done=DONE) is Recorded.ALREADY
    # After the new one's lease is gone, the old one is still refused: the action is done.
    await redis.delete(keys.action_lease("f:0"))
    assert await ledger.commit("f:0", token=old.token, done=DONE) is Recorded.FENCED
    assert await ledger.begin([Start("f:0")], old.token) == [Begun.SKIP]


async def test_a_reclaimed_batch_does_not_start_a_second_copy(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    """A runs a slow action without keeping its entry claimed (as when its claims cannot
    reach Redis); B reclaims the entry after ``claim_idle_ms``, finds the action's lease held,
    and waits for it instead of calling the webhook a second time."""
    settings = fast.model_copy(update={"dispatch_readers": 1})
    http_sink.script("/slow", Response(200, delay=2.0))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/slow"))))
    firing = await fire(redis, keys, a, disk_event())
    ports = build_ports(redis, settings, keys)
    first = Dispatcher(redis, settings, ports=ports, keys=keys, consumer="first")
    second = Dispatcher(redis, settings, ports=ports, keys=keys, consumer="second")
    await first.consumers[0].ensure_group()
    reply: Any = await redis.xreadgroup(DISPATCH_GROUP, "first", {keys.partition(0).firings: ">"},
                                        count=10)
    entries = [Entry(i.decode(), f, 1) for i, f in reply[0][1]]
    async with first, second, anyio.create_task_group() as tg:
        tg.start_soon(first.handle_batch, entries)  # no reader: its claim is not kept fresh
        tg.start_soon(second.run)
        await http_sink.wait_for(1, "/slow")
        await wait_until(lambda: second.counts["busy"] >= 1, timeout=10,
                         what="the second dispatcher finding the action busy")
        await wait_until(lambda: redis.exists(keys.done(f"{firing.id}:0")), timeout=10)
        await wait_until(lambda: second.counts["skipped"] >= 1, timeout=10,
                         what="the waiting job finding the action done")
        second.stop()
    assert len(http_sink.received("/slow")) == 1
    assert first.counts["executed"] == 1 and second.counts["executed"] == 0
    assert second.consumers[0].claimed >= 1  # it did reclaim the batch
    executed = [e for e in await action_events(redis, keys) if e["event"].endswith(".executed")]
    assert len(executed) == 1
    assert await second.retries.pending() == 0


async def test_actions_running_elsewhere_are_noted_with_bounded_connections(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink,
) -> None:
    """A batch whose every action another dispatcher holds: each is only noted for a later
    check, at most ``action_concurrency`` at once (each had opened a connection of its own:
    past redis-py's pool of 100 that read as Redis being away)."""
    settings = fast.model_copy(update={"dispatch_readers": 1, "action_concurrency": 4})
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/hook"))))
    firings = [await fire(redis, keys, a, disk_event()) for _ in range(120)]
    ledger = Ledger(redis, keys, settings, RetryQueue(redis, keys))
    held = await ledger.begin([Start(f"{f.id}:0") for f in firings], "elsewhere")
    assert held == [Begun.RUN] * len(firings)
    own = aioredis.Redis.from_url(str(settings.redis_url))
    dispatcher = Dispatcher(own, settings, ports=build_ports(own, settings, keys), keys=keys,
                            consumer="d")
    await dispatcher.consumers[0].ensure_group()
    reply: Any = await own.xreadgroup(DISPATCH_GROUP, "d", {keys.partition(0).firings: ">"},
                                      count=len(firings))
    entries = [Entry(i.decode(), f, 1) for i, f in reply[0][1]]
    try:
        async with dispatcher:
            assert await dispatcher.handle_batch(entries) == []
        pool = own.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)
    finally:
        await own.aclose()
    assert dispatcher.counts["busy"] == len(firings)
    assert await dispatcher.retries.pending() == len(firings)
    assert opened <= settings.action_concurrency + 4, opened
    assert http_sink.received("/hook") == []


def start_dispatcher(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUTOMATIONS_REDIS_URL": str(settings.redis_url),
           "AUTOMATIONS_PREFIX": settings.prefix, "AUTOMATIONS_CONSUMER_NAME": "stalled",
           "AUTOMATIONS_ACTION_TIMEOUT_S": "60", "AUTOMATIONS_BLOCK_MS": "50",
           "AUTOMATIONS_CLAIM_IDLE_MS": str(settings.claim_idle_ms),
           "AUTOMATIONS_DISPATCH_READERS": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "automations", "serve", "--only",
                                 "dispatcher"], cwd=ROOT, env=env, stdout=out, stderr=out)


async def test_a_stalled_dispatcher_is_fenced_when_it_resumes(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGSTOP a dispatcher mid-request past its lease: another takes the action over and
    records it; the stalled one, resumed, gets its answer and is refused (fenced, logged)."""
    settings = fast.model_copy(update={"claim_idle_ms": 1000})
    http_sink.script("/hook", Response(200, delay=3.0), Response(200))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/hook"))))
    firing = await fire(redis, keys, a, disk_event())
    key = f"{firing.id}:0"
    log = tmp_path / "stalled.log"
    process = start_dispatcher(settings, log)
    try:
        await http_sink.wait_for(1, "/hook", timeout=20)
        process.send_signal(signal.SIGSTOP)
        survivor = Dispatcher(redis, settings, ports=build_ports(redis, settings, keys),
                              keys=keys, consumer="survivor")
        async with survivor, anyio.create_task_group() as tg:
            tg.start_soon(survivor.run)
            await wait_until(lambda: redis.exists(keys.done(key)), timeout=20,
                             what="the survivor recording the action")
            survivor.stop()
        process.send_signal(signal.SIGCONT)
        await wait_until(lambda: "fenced" in log.read_text(), timeout=20,
                         what="the stalled dispatcher's record refused")
        await wait_until(lambda: redis.exists(keys.done(key)), timeout=5)
    finally:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    # The stalled one lost its lease, so the survivor ran the action again (the documented
    # window: a stall past the lease); only one outcome is recorded.
    assert len(http_sink.received("/hook")) == 2
    assert survivor.counts["executed"] == 1
    executed = [e for e in await action_events(redis, keys) if e["event"].endswith(".executed")]
    assert len(executed) == 1
    pending: Any = await redis.xpending(keys.partition(0).firings, DISPATCH_GROUP)
    assert pending["pending"] == 0
