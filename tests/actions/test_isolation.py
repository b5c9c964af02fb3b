"""Per-firing and per-action isolation in the dispatcher: a firing that cannot be run, or an
action whose ledger write fails, affects only itself (its own dead letter with the real cause);
every other firing of the batch is delivered once, also through a Redis blip."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import DISPATCH_GROUP, Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from bench.redis_server import RedisServer
from tests.actions.stories import action_events, automation, dead_letters, disk_event, fire, stored
from tests.sinks import HttpSink, Response
from tests.wait import acknowledged, wait_until


def nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for _ in range(depth):
        payload = {"a": payload}
    return payload


def no_exception_group(caplog: pytest.LogCaptureFixture, dead: list[dict[str, str]]) -> None:
    assert not [d["reason"] for d in dead if "ExceptionGroup" in d["reason"]]
    assert not [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and "ExceptionGroup" in r.getMessage()]


async def test_poison_firings_are_dead_lettered_alone_and_the_others_delivered(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink, caplog: pytest.LogCaptureFixture,
) -> None:
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/good"))))
    good = [await fire(redis, keys, a, disk_event()) for _ in range(2)]
    # An engine entry whose event nests 300 levels: readable, but its firing cannot be
    # encoded again (beyond ~254 levels); before, it failed the whole batch.
    deep = {**disk_event().to_dict(), "payload": nested(300)}
    compact = [{"id": str(uuid4()), "automation_id": str(a.id),
                "trigger_id": str(a.trigger.id), "triggered": datetime.now(UTC).isoformat()}]
    await redis.xadd(keys.partition(0).firings, {b"firings": orjson.dumps(compact),
                                    b"event": json.dumps(deep).encode(),  # orjson: <255 levels
                                    b"event_id": deep["id"].encode()})
    # A firing whose triggering event is too deep for an event (64 levels).
    firing = orjson.loads(good[0].to_json()) | {"id": str(uuid4()), "triggering_event": deep}
    await redis.xadd(keys.partition(0).firings, {b"data": json.dumps(firing).encode()})
    good += [await fire(redis, keys, a, disk_event()) for _ in range(2)]

    await dispatcher.drain()

    requests = http_sink.received("/good")
    assert sorted(r.headers["Idempotency-Key"] for r in requests) == sorted(
        f"{f.id}:0" for f in good)
    dead = await dead_letters(redis, keys)
    reasons = sorted(d["reason"] for d in dead)
    assert len(reasons) == 2
    assert reasons[0].startswith(f"firing {compact[0]['id']} cannot be encoded: ValueError: ")
    assert reasons[1] == "invalid firing: event nests more than 64 levels (payload at most 63)"
    assert dispatcher.consumers[0].failures == 0  # one pass: the batch never failed
    assert dispatcher.counts["executed"] == 4
    no_exception_group(caplog, dead)


async def test_an_action_whose_record_fails_does_not_cancel_its_siblings(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
    http_sink: HttpSink, caplog: pytest.LogCaptureFixture,
) -> None:
    """One action's ledger writes fail for good (its lease key is clobbered with a hash while
    it runs: WRONGTYPE); its siblings, still in flight, are recorded once, the batch's re-run
    repeats none of them, and the bad one is dead-lettered with the real error."""
    settings = fast.model_copy(update={"dispatch_readers": 1})
    http_sink.script("/bad", Response(200, delay=0.5))
    http_sink.script("/good", Response(200, delay=1.5))
    bad, ok = await stored(store, automation(CallWebhook(url=http_sink.url("/bad")), name="bad"),
                           automation(CallWebhook(url=http_sink.url("/good")), name="ok"))
    siblings = [await fire(redis, keys, ok, disk_event()) for _ in range(3)]
    poisoned = await fire(redis, keys, bad, disk_event())
    dispatcher = Dispatcher(redis, settings, ports=build_ports(redis, settings, keys), keys=keys)
    async with dispatcher, anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        await http_sink.wait_for(1, "/bad")
        lease = keys.action_lease(f"{poisoned.id}:0")
        await redis.delete(lease)
        await redis.hset(lease, "clobbered", "1")
        outbox = keys.partition(0).firings
        await wait_until(lambda: acknowledged(redis, outbox, DISPATCH_GROUP), timeout=20,
                         what="the batch acknowledged")
        dispatcher.stop()
    await redis.delete(lease)
    assert len(http_sink.received("/good")) == 3
    assert len(http_sink.received("/bad")) == 1
    for firing in siblings:
        assert await redis.get(keys.done(f"{firing.id}:0")) == b"done"
    [dead] = await dead_letters(redis, keys)
    assert "WRONGTYPE" in dead["reason"]
    assert orjson.loads(dead["data"])["id"] == str(poisoned.id)
    assert dispatcher.counts["executed"] == 3
    assert dispatcher.counts["skipped"] == 3  # the re-run of the batch skipped the siblings
    no_exception_group(caplog, [dead])


def outcome_records_failing(caplog: pytest.LogCaptureFixture) -> int:
    return len({r.getMessage().split(":")[0] for r in caplog.records
                if "recording its outcome: Redis unreachable" in r.getMessage()})


async def test_a_redis_blip_while_an_action_fails_repeats_no_sibling(
    own_redis: RedisServer, fast: Settings, http_sink: HttpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The measured failure: one action fails while Redis is away; the failure's record rides
    out the outage like the siblings' done records, and no sibling's request is repeated."""
    settings = fast.model_copy(update={"redis_url": own_redis.url, "claim_idle_ms": 20_000,
                                       "dispatch_readers": 1})
    keys = Keys.from_settings(settings)
    client = aioredis.Redis.from_url(own_redis.url)
    http_sink.script("/fail", Response(500, delay=0.8), Response(200))
    http_sink.script("/ok", Response(200, delay=1.2))
    store = AutomationStore(client, keys)
    failing, ok = await stored(store, automation(CallWebhook(url=http_sink.url("/fail")),
                                                 name="failing"),
                               automation(CallWebhook(url=http_sink.url("/ok")), name="ok"))
    dispatcher = Dispatcher(client, settings, ports=build_ports(client, settings, keys),
                            keys=keys)
    try:
        async with dispatcher, anyio.create_task_group() as tg:
            await fire(client, keys, failing, disk_event())
            for _ in range(3):
                await fire(client, keys, ok, disk_event())
            tg.start_soon(dispatcher.run)
            await http_sink.wait_for(1, "/fail")
            await http_sink.wait_for(3, "/ok")
            await client.save()  # comes back with the batch begun and pending
            own_redis.stop()
            # The 500 and the three 200s all come back while Redis is away.
            await wait_until(lambda: outcome_records_failing(caplog) == 4, timeout=10,
                             what="four outcome records waiting for Redis")
            own_redis.start()
            await http_sink.wait_for(2, "/fail", timeout=20)
            await wait_until(lambda: dispatcher.counts["executed"] == 4, timeout=20,
                             what="every action executed")
            dispatcher.stop()
        events = await action_events(client, keys)
        assert await dead_letters(client, keys) == []
    finally:
        await client.aclose()
    assert len(http_sink.received("/ok")) == 3
    assert len(http_sink.received("/fail")) == 2
    assert len([e for e in events if e["event"].endswith(".executed")]) == 4
    assert dispatcher.counts["skipped"] == 0 and dispatcher.counts["retried"] == 1
