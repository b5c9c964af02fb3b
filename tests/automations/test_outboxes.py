"""Every partition's outbox is read: a dispatcher and an announcer on three partitions handle
each firing written to any outbox once, and a partition's dead letters land in its own dead
stream, where ``automations dead`` lists and re-drives them."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from actions.models import CallWebhook
from automations.cli.app import app
from automations.dispatch.dispatcher import Dispatcher
from automations.engine import announcer as announcer_module
from automations.engine.announcer import Announcer
from automations.insight.dead_letters import dead_keys, dead_streams, short_name
from automations.keys import ANNOUNCE_GROUP, DISPATCH_GROUP, Keys, partition_of
from automations.models import Automation
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.entries import Entry
from tests.actions.stories import automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response
from tests.wait import acknowledged, wait_until

PARTITIONS = 3


@pytest.fixture
def settings3(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "partitions": PARTITIONS, "action_retry_base_s": 0.02, "action_retry_max_s": 0.05,
        "action_timeout_s": 3.0, "action_max_attempts": 2, "action_retry_poll_s": 0.05})


@pytest.fixture
def keys3(prefix: str) -> Keys:
    return Keys(prefix, PARTITIONS)


@pytest.fixture
async def dispatcher3(redis: aioredis.Redis, settings3: Settings, keys3: Keys
                      ) -> AsyncIterator[Dispatcher]:
    ports = build_ports(redis, settings3, keys3)
    async with Dispatcher(redis, settings3, ports=ports, keys=keys3) as d:
        yield d


def one_per_partition(url: str) -> list[Automation]:
    """Automations (their ids drawn at random) until every partition holds one."""
    found: dict[int, Automation] = {}
    while len(found) < PARTITIONS:
        a = automation(CallWebhook(url=url), name=f"p-{uuid4().hex[:8]}")
        found.setdefault(partition_of(a.id, PARTITIONS), a)
    return [found[n] for n in range(PARTITIONS)]


def every_outbox_acknowledged(redis: aioredis.Redis, keys: Keys, group: str
                              ) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all([await acknowledged(redis, outbox, group) for outbox in keys.outboxes])
    return check


async def cli(settings: Settings, *args: str) -> str:
    env = {"AUTOMATIONS_REDIS_URL": str(settings.redis_url),
           "AUTOMATIONS_PREFIX": settings.prefix, "AUTOMATIONS_PARTITIONS": str(PARTITIONS)}
    result = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(app, list(args), env=env))
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return str(result.stdout)


async def test_the_dispatcher_runs_every_firing_of_every_outbox_once(
    redis: aioredis.Redis, keys3: Keys, dispatcher3: Dispatcher, http_sink: HttpSink,
) -> None:
    store = AutomationStore(redis, keys3)
    autos = await stored(store, *one_per_partition(http_sink.url("/hook")))
    assert len({c.stream for c in dispatcher3.consumers}) == PARTITIONS
    firings = [await fire(redis, keys3, a, disk_event()) for a in autos for _ in range(4)]
    assert [await redis.xlen(outbox) for outbox in keys3.outboxes] == [4] * PARTITIONS
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher3.run)
        await http_sink.wait_for(len(firings), "/hook")
        await wait_until(every_outbox_acknowledged(redis, keys3, DISPATCH_GROUP),
                         what="every outbox acknowledged")
        dispatcher3.stop()
    sent = Counter(r.headers["Idempotency-Key"] for r in http_sink.received("/hook"))
    assert sent == Counter(f"{f.id}:0" for f in firings)  # each once
    assert await dispatcher3.drain() == 0  # nothing left anywhere


async def test_one_broken_outbox_does_not_stop_the_others(
    redis: aioredis.Redis, keys3: Keys, dispatcher3: Dispatcher, http_sink: HttpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = AutomationStore(redis, keys3)
    autos = await stored(store, *one_per_partition(http_sink.url("/hook")))
    broken = keys3.partition(1).firings
    await redis.set(broken, "not a stream")  # its consumer fails (WRONGTYPE) until repaired
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher3.run)
        for a in (autos[0], autos[2]):
            await fire(redis, keys3, a, disk_event())
        await http_sink.wait_for(2, "/hook")
        await wait_until(lambda: "failed; restarting it" in caplog.text, what="the failure")
        await redis.delete(broken)
        firing = await fire(redis, keys3, autos[1], disk_event())
        [*_, last] = await http_sink.wait_for(3, "/hook")
        assert last.headers["Idempotency-Key"] == f"{firing.id}:0"
        dispatcher3.stop()


async def test_the_announcer_announces_every_firing_of_every_outbox_once(
    redis: aioredis.Redis, settings3: Settings, keys3: Keys,
) -> None:
    now = datetime.now(UTC).isoformat()
    announced: dict[str, str] = {}  # event id -> automation id
    for _ in range(30):
        automation_id, event_id = str(uuid4()), str(uuid4())
        announced[event_id] = automation_id
        firing = {"id": str(uuid4()), "automation_id": automation_id, "trigger_id": str(uuid4()),
                  "triggered": now, "automation_triggered_event_id": event_id}
        await redis.xadd(keys3.of(automation_id).firings, {b"firings": orjson.dumps([firing])})
    assert all([await redis.xlen(outbox) for outbox in keys3.outboxes])
    announcer = Announcer(redis, settings3, keys=keys3, resource_of=lambda _: None,
                          consumer="a3")

    async with anyio.create_task_group() as tg:
        tg.start_soon(announcer.run)
        await wait_until(every_outbox_acknowledged(redis, keys3, ANNOUNCE_GROUP),
                         what="every outbox announced")
        announcer.stop()
    assert await announcer.run_until_idle() == 0
    raw: Any = await redis.xrange(keys3.events)
    assert Counter(f[b"id"].decode() for _, f in raw) == Counter(list(announced))
    last: Any = await redis.hgetall(keys3.last_fired)
    assert {k.decode() for k in last} == set(announced.values())


async def test_a_partitions_dead_letters_are_its_own_and_listed(
    redis: aioredis.Redis, settings3: Settings, keys3: Keys, dispatcher3: Dispatcher,
    http_sink: HttpSink,
) -> None:
    store = AutomationStore(redis, keys3)
    http_sink.script("/hook", *[Response(503)] * 2)
    late, given_up = one_per_partition(http_sink.url("/hook"))[:2]  # partitions 0 and 1
    [given_up] = await stored(store, given_up)
    unknown = await fire(redis, keys3, late, disk_event())  # not stored: rejected
    await fire(redis, keys3, given_up, disk_event())  # 503 twice: given up
    await redis.xadd(keys3.partition(2).firings, {b"data": b"{not json"})
    await dispatcher3.drain()

    rejected = {n: await redis.xlen(keys3.partition(n).dead_firings) for n in range(3)}
    assert rejected == {0: 1, 1: 0, 2: 1}
    assert await redis.xlen(keys3.dead("firings")) == 1  # the given-up action (global slot)
    counts = await dead_streams(redis, keys3)
    assert {short_name(keys3, k): n for k, n in counts.items()} == {
        "firings": 1, "firings@0": 1, "firings@2": 1}

    listed = [orjson.loads(line) for line in (await cli(settings3, "dead", "ls", "--json"))
              .splitlines()]
    assert {(x["stream"], x["key"], x["count"]) for x in listed} == {
        ("firings", keys3.dead("firings"), 1),
        ("firings@0", keys3.partition(0).dead_firings, 1),
        ("firings@2", keys3.partition(2).dead_firings, 1)}
    merged = [orjson.loads(line) for line in
              (await cli(settings3, "dead", "ls", "firings", "--json")).splitlines()]
    assert len(merged) == 3
    [letter] = [orjson.loads(line) for line in
                (await cli(settings3, "dead", "ls", "firings@0", "--json")).splitlines()]
    assert letter["stream"] == keys3.partition(0).dead_firings
    assert letter["source"].startswith(f"{keys3.partition(0).firings} ")
    assert dead_keys(keys3, "firings@2") == [keys3.partition(2).dead_firings]

    # re-driven back to its own partition's outbox, where the dispatcher finds it
    http_sink.script("/hook", Response(200))
    await stored(store, late)
    out = await cli(settings3, "dead", "retry", letter["id"], "firings@0")
    assert f"back on {keys3.partition(0).firings}" in out
    await dispatcher3.drain()
    assert [r.headers["Idempotency-Key"] for r in http_sink.received("/hook")][-1] == \
        f"{unknown.id}:0"
    assert await redis.xlen(keys3.partition(0).dead_firings) == 0


async def test_a_batch_redelivered_after_its_announcement_is_not_announced_again(
    redis: aioredis.Redis, settings3: Settings, keys3: Keys,
) -> None:
    """The events are written before the outbox entry is acked (two slots): a crash in
    between redelivers the batch, whose events are on the stream already."""
    automation_id = str(uuid4())
    outbox = keys3.of(automation_id).firings
    firing = {"id": str(uuid4()), "automation_id": automation_id, "trigger_id": str(uuid4()),
              "triggered": datetime.now(UTC).isoformat(),
              "automation_triggered_event_id": str(uuid4())}
    await redis.xadd(outbox, {b"firings": orjson.dumps([firing])})
    announcer = Announcer(redis, settings3, keys=keys3, resource_of=lambda _: None)
    [consumer] = [c for c in announcer.consumers if c.stream == outbox]
    await consumer.ensure_group()
    reply: Any = await redis.xreadgroup(ANNOUNCE_GROUP, "x", {outbox: ">"})
    entries = [Entry(i.decode(), f, 1) for i, f in reply[0][1]]
    await announcer.handle_batch(entries, outbox=outbox)
    await announcer.handle_batch([Entry(e.id, e.fields, 2) for e in entries], outbox=outbox)
    assert announcer.announced == 1
    assert await redis.xlen(keys3.events) == 1
    assert (await redis.xpending(outbox, ANNOUNCE_GROUP))["pending"] == 0


async def test_a_batch_cut_into_several_script_calls_announces_each_event_once(
    redis: aioredis.Redis, settings3: Settings, keys3: Keys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls of at most one entry each (``CHUNK_BYTES``): a batch whose first entries were
    announced before (a crash before its ack) appends only the rest, in outbox order, and
    every firing is counted once per handling."""
    monkeypatch.setattr(announcer_module, "CHUNK_BYTES", 1)
    automation_ids = [str(uuid4()), str(uuid4())]
    outbox = keys3.partition(0).firings

    def firing(automation_id: str) -> dict[str, Any]:
        return {"id": str(uuid4()), "automation_id": automation_id, "trigger_id": str(uuid4()),
                "triggered": datetime.now(UTC).isoformat(),
                "automation_triggered_event_id": str(uuid4())}

    made = [[firing(a) for a in automation_ids] for _ in range(4)]
    for firings in made:
        await redis.xadd(outbox, {b"firings": orjson.dumps(firings)})
    announcer = Announcer(redis, settings3, keys=keys3, resource_of=lambda _: None)
    [consumer] = [c for c in announcer.consumers if c.stream == outbox]
    await consumer.ensure_group()
    reply: Any = await redis.xreadgroup(ANNOUNCE_GROUP, "x", {outbox: ">"})
    entries = [Entry(i.decode(), f, 1) for i, f in reply[0][1]]
    await announcer.handle_batch(entries[:2], outbox=outbox)
    await announcer.handle_batch([Entry(e.id, e.fields, 2) for e in entries], outbox=outbox)
    assert announcer.announced == 8
    raw: Any = await redis.xrange(keys3.events)
    assert [f[b"id"].decode() for _, f in raw] == [
        f["automation_triggered_event_id"] for firings in made for f in firings]
    assert set(await redis.hgetall(keys3.last_fired)) == {a.encode() for a in automation_ids}
    counted = {s.labels["automation"]: s.value for m in announcer.metrics.firings.collect()
               for s in m.samples if s.name.endswith("_total")}
    assert counted == {a: 6 for a in automation_ids}  # 2 + 4 entries handled, one firing each
    assert (await redis.xpending(outbox, ANNOUNCE_GROUP))["pending"] == 0
