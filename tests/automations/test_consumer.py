"""The shared consumer: batches, acks, rejects, retries, dead letters, reclaiming, trimming."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from automations.dispatch.dispatcher import Dispatcher
from automations.engine.engine import Engine
from automations.keys import Keys
from automations.runtime.worker import Worker
from automations.service import build_ports
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer
from automations.streams.entries import Entry, Reject
from automations.streams.upkeep import require_redis_version, trim_acknowledged
from tests.wait import wait_until


class Recorder:
    """A handler that records what it got and can fail or reject on demand."""

    def __init__(self, *, fail_times: int = 0, reject: set[bytes] | None = None) -> None:
        self.batches: list[list[Entry]] = []
        self.fail_times = fail_times
        self.reject = reject or set()

    async def __call__(self, entries: list[Entry]) -> Sequence[Reject] | None:
        self.batches.append(entries)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("boom")
        return [Reject(e, "bad entry") for e in entries if e.fields[b"data"] in self.reject]

    @property
    def data(self) -> list[bytes]:
        return [e.fields[b"data"] for batch in self.batches for e in batch]


def consumer(redis: aioredis.Redis, settings: Settings, handler: Any, **kw: Any) -> StreamConsumer:
    keys = Keys.from_settings(settings)
    return StreamConsumer(redis, settings, stream=keys.events, group="g", handler=handler,
                          dead_stream=keys.dead(keys.events), **kw)


async def add(redis: aioredis.Redis, stream: str, n: int, start: int = 0) -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(start, start + n):
            pipe.xadd(stream, {b"data": f"e{i}".encode(), b"id": f"id-{i}".encode()})
        ids = await pipe.execute()
    return [i.decode() for i in ids]


async def pending(redis: aioredis.Redis, stream: str, group: str = "g") -> int:
    info: Any = await redis.xpending(stream, group)
    return int(info["pending"])


async def idle_for(redis: aioredis.Redis, stream: str, ms: int, group: str = "g") -> bool:
    """Whether the oldest pending entry has gone ``ms`` without a delivery."""
    entries: Any = await redis.xpending_range(stream, group, "-", "+", 1)
    return int(entries[0]["time_since_delivered"]) >= ms


async def test_round_trip_in_batches_acks_everything(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 25)
    handler = Recorder()
    c = consumer(redis, settings, handler, batch_size=10)
    assert await c.run_until_idle() == 25
    assert [len(b) for b in handler.batches] == [10, 10, 5]
    assert handler.data == [f"e{i}".encode() for i in range(25)]
    assert all(e.deliveries == 1 for b in handler.batches for e in b)
    assert await pending(redis, keys.events) == 0
    assert "handled=25" in repr(c)


async def test_group_created_from_start_sees_earlier_entries(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 3)
    handler = Recorder()
    await consumer(redis, settings, handler).run_until_idle()
    assert len(handler.data) == 3


async def test_rejects_are_acked_and_dead_lettered_with_reason(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    ids = await add(redis, keys.events, 3)
    handler = Recorder(reject={b"e1"})
    assert await consumer(redis, settings, handler).run_until_idle() == 3
    assert await pending(redis, keys.events) == 0
    dead: Any = await redis.xrange(keys.dead(keys.events))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"data"] == b"e1" and fields[b"id"] == b"id-1"
    assert fields[b"reason"] == b"bad entry"
    assert fields[b"source_id"] == ids[1].encode()
    assert fields[b"deliveries"] == b"1"
    assert len(handler.batches) == 1


async def test_failed_batch_is_retried_then_acked(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 2)
    handler = Recorder(fail_times=2)
    c = consumer(redis, settings, handler)
    assert await c.run_until_idle() == 2
    assert [[e.deliveries for e in b] for b in handler.batches] == [[1, 1], [2, 2], [3, 3]]
    assert await pending(redis, keys.events) == 0
    assert await redis.xlen(keys.dead(keys.events)) == 0
    assert c.failures == 2


async def test_outage_in_a_handler_logs_one_line_and_keeps_entries_pending(
    redis: aioredis.Redis, settings: Settings, keys: Keys, caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection errors raised by several tasks of a batch (an ExceptionGroup) are an outage:
    a warning without a traceback per task; the entries stay pending for redelivery."""
    calls = 0

    async def handler(entries: list[Entry]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ExceptionGroup("batch", [ConnectionError("gone"), ConnectionError("gone")])

    await add(redis, keys.events, 1)
    assert await consumer(redis, settings, handler).run_until_idle() == 1
    assert calls == 2
    [record] = [r for r in caplog.records if "Redis unreachable" in r.message]  # one line
    assert record.exc_info is None


async def test_an_outage_longer_than_max_deliveries_dead_letters_nothing(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    """Each batch an outage failed is read again (a delivery to Redis), but only failures
    outside an outage count against ``max_deliveries``: after the outage the batch goes
    through, and a real failure then still has its retries."""
    settings = settings.model_copy(update={"max_deliveries": 3})
    outages = 5

    async def handler(entries: list[Entry]) -> None:
        nonlocal outages
        if outages:
            outages -= 1
            raise redis_exceptions.ConnectionError("gone")
        await recorder(entries)

    recorder = Recorder(fail_times=2)  # then two real failures: under the limit of 3
    await add(redis, keys.events, 2)
    c = consumer(redis, settings, handler)
    assert await c.run_until_idle() == 2
    assert [[e.deliveries for e in b] for b in recorder.batches] == [[6, 6], [7, 7], [8, 8]]
    assert await redis.xlen(keys.dead(keys.events)) == 0
    assert await pending(redis, keys.events) == 0
    assert c.dead == 0


async def test_dead_letter_after_max_deliveries_keeps_entry_error_and_count(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    settings = settings.model_copy(update={"max_deliveries": 3})
    await add(redis, keys.events, 1)
    handler = Recorder(fail_times=100)
    c = consumer(redis, settings, handler)
    assert await c.run_until_idle() == 0
    assert len(handler.batches) == 3
    assert await pending(redis, keys.events) == 0
    dead: Any = await redis.xrange(keys.dead(keys.events))
    fields = dead[0][1]
    assert fields[b"data"] == b"e0"
    assert fields[b"reason"] == b"RuntimeError: boom"
    assert fields[b"deliveries"] == b"3"
    assert fields[b"group"] == b"g"
    assert c.dead == 1


async def test_stale_entries_of_another_consumer_are_reclaimed(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 4)
    ghost = consumer(redis, settings, Recorder(), consumer="ghost")
    await ghost.ensure_group()
    # The ghost reads and dies without acking.
    await redis.xreadgroup("g", "ghost", {keys.events: ">"}, count=4)
    handler = Recorder()
    c = consumer(redis, settings, handler, consumer="rescuer")
    assert await c.run_until_idle() == 0  # not idle long enough yet

    async def reclaimed() -> bool:
        await c.run_until_idle()
        return bool(handler.data)

    await wait_until(reclaimed, timeout=5, poll=0.1)
    assert handler.data == [b"e0", b"e1", b"e2", b"e3"]
    assert all(e.deliveries == 2 for e in handler.batches[0])
    assert await pending(redis, keys.events) == 0
    assert c.claimed == 4


async def test_an_entry_that_keeps_killing_consumers_is_dead_lettered(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    settings = settings.model_copy(update={"max_deliveries": 2, "claim_idle_ms": 100})
    await add(redis, keys.events, 1)
    await consumer(redis, settings, Recorder()).ensure_group()
    await redis.xreadgroup("g", "a", {keys.events: ">"})
    await wait_until(lambda: idle_for(redis, keys.events, 100))
    await redis.xautoclaim(keys.events, "g", "b", 100)  # delivery 2, dies too
    await wait_until(lambda: idle_for(redis, keys.events, 100))
    handler = Recorder()
    c = consumer(redis, settings, handler)
    await c.run_until_idle()
    assert handler.data == []
    dead: Any = await redis.xrange(keys.dead(keys.events))
    assert dead[0][1][b"deliveries"] == b"3"
    assert b"without being acknowledged" in dead[0][1][b"reason"]


async def test_run_stops_after_the_batch_in_hand(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 3)
    c: StreamConsumer

    async def slow(entries: list[Entry]) -> None:
        c.stop()
        c.stop()  # idempotent
        await anyio.sleep(0.2)  # slow work: the stop arrives while the batch is in hand

    c = consumer(redis, settings, slow)
    with anyio.fail_after(5):
        await c.run()
    assert c.handled == 3
    assert await pending(redis, keys.events) == 0


async def test_run_consumes_live_entries(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    handler = Recorder()
    c = consumer(redis, settings, handler)
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.run)
        await add(redis, keys.events, 5)
        await wait_until(lambda: len(handler.data) >= 5)
        c.stop()
    assert await pending(redis, keys.events) == 0


async def test_trim_never_drops_what_a_group_still_needs(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    stream = keys.events
    ids: list[str] = []
    for batch in range(10):  # spread over time so the length target can be interpolated
        ids += await add(redis, stream, 300, start=batch * 300)
        await anyio.sleep(0.003)
    await redis.xgroup_create(stream, "slow", id="0")
    await redis.xgroup_create(stream, "fast", id="0")
    # "slow" has 100 entries pending from entry 1000 on; "fast" acked everything.
    await redis.xgroup_setid(stream, "slow", ids[999])
    await redis.xreadgroup("slow", "c", {stream: ">"}, count=100)
    await redis.xgroup_setid(stream, "fast", ids[-1])
    await trim_acknowledged(redis, stream, 1000)
    first: Any = await redis.xrange(stream, count=1)
    assert first[0][0].decode() <= ids[1000]  # the oldest pending entry survived
    assert await redis.xlen(stream) >= 2000
    # Once "slow" acks, the stream is trimmed towards 1000 entries (approximately).
    await redis.xack(stream, "slow", *ids[1000:1100])
    await redis.xgroup_setid(stream, "slow", ids[-1])
    await trim_acknowledged(redis, stream, 1000)
    assert 1000 <= await redis.xlen(stream) < 1100


async def test_a_large_surplus_converges_over_repeated_trims(
    redis: aioredis.Redis, keys: Keys
) -> None:
    for batch in range(8):
        await add(redis, keys.events, 1000, start=batch * 1000)
        await anyio.sleep(0.002)  # ids of later milliseconds: the trim target is interpolated
    lengths = []
    for _ in range(6):
        await trim_acknowledged(redis, keys.events, 1000)
        lengths.append(await redis.xlen(keys.events))
    assert lengths == sorted(lengths, reverse=True)
    assert all(n >= 1000 for n in lengths)
    assert lengths[-1] < 1100


async def test_trim_keeps_undelivered_entries(redis: aioredis.Redis, keys: Keys) -> None:
    ids = []
    for batch in range(5):
        ids += await add(redis, keys.events, 400, start=batch * 400)
        await anyio.sleep(0.003)  # ids of later milliseconds, as in a live stream
    await redis.xgroup_create(keys.events, "new", id="0")
    await trim_acknowledged(redis, keys.events, 1000)
    assert await redis.xlen(keys.events) == 2000


async def test_redis_version_is_checked(redis: aioredis.Redis) -> None:
    version = await require_redis_version(redis)
    assert tuple(int(p) for p in version.split(".")[:2]) >= (6, 2)


async def test_each_service_trims_its_stream_with_that_streams_setting(
    redis: aioredis.Redis, keys: Keys
) -> None:
    settings = Settings(prefix=keys.prefix, events_maxlen=5_000, firings_maxlen=7_000)
    engine = Engine(redis, settings, keys=keys)
    assert engine._consumer.maxlen == 5_000
    assert {c.maxlen for c in engine.announcer.consumers} == {7_000}
    dispatcher = Dispatcher(redis, settings, ports=build_ports(redis, settings, keys), keys=keys)
    assert {c.maxlen for c in dispatcher.consumers} == {7_000}
    assert Worker(redis, settings).consumer.maxlen == 5_000  # runs: as long as events
    assert consumer(redis, settings, Recorder()).maxlen is None  # unless asked: never


async def test_housekeeping_forgets_idle_consumers_with_nothing_pending(
    redis: aioredis.Redis, settings: Settings, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add(redis, keys.events, 2)
    c = consumer(redis, settings, Recorder(), consumer="me")
    await c.ensure_group()
    await redis.xreadgroup("g", "gone", {keys.events: ">"}, count=1)
    await redis.xack(keys.events, "g", *[p["message_id"] for p in await redis.xpending_range(
        keys.events, "g", "-", "+", 10)])
    await redis.xreadgroup("g", "busy", {keys.events: ">"}, count=1)  # still holds an entry
    monkeypatch.setattr("automations.streams.consumer.FORGET_IDLE_MS", -1)
    await c.run_until_idle()  # reclaims nothing yet: "busy" is not idle long enough
    await c._housekeeping()
    names = {x["name"] for x in await redis.xinfo_consumers(keys.events, "g")}
    assert names == {b"me", b"busy"}


class AheadRecorder(Recorder):
    """A handler with a ``look_ahead`` that records the batches it was shown."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ahead: list[list[Entry]] = []

    async def look_ahead(self, entries: list[Entry]) -> None:
        self.ahead.append(entries)


async def test_a_backlog_is_read_ahead_and_handled_once_in_order(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 23)
    handler = AheadRecorder()
    c = consumer(redis, settings, handler, batch_size=5, look_ahead=handler.look_ahead)
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.run)
        await wait_until(lambda: len(handler.data) >= 23)
        c.stop()
    assert handler.data == [f"e{i}".encode() for i in range(23)]
    assert [len(b) for b in handler.batches] == [5, 5, 5, 5, 3]
    # every batch after the first was read while the one before was handled, and the
    # handler got the very list look_ahead prepared
    assert [id(b) for b in handler.ahead] == [id(b) for b in handler.batches[1:]]
    assert await pending(redis, keys.events) == 0


async def test_a_failed_batch_keeps_the_one_read_ahead_waiting_its_turn(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 10)
    handler = AheadRecorder(fail_times=1)
    c = consumer(redis, settings, handler, batch_size=5, look_ahead=handler.look_ahead)
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.run)
        await wait_until(lambda: c.handled >= 10)
        c.stop()
    # the first batch failed after the second was read ahead: the second is not handled
    # before the first succeeds, and then comes again from the pending list
    first = [f"e{i}".encode() for i in range(5)]
    assert handler.data[:10] == first + first
    assert handler.data[10:] == [f"e{i}".encode() for i in range(5, 10)]
    assert [e.deliveries for e in handler.batches[-1]] == [2] * 5
    assert await pending(redis, keys.events) == 0


async def test_a_stopping_consumer_handles_the_batch_it_read_ahead(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await add(redis, keys.events, 10)
    c: StreamConsumer
    handler = AheadRecorder()

    async def slow(entries: list[Entry]) -> None:
        await handler(entries)
        c.stop()
        await anyio.sleep(0.1)  # the next batch is read ahead meanwhile

    c = consumer(redis, settings, slow, batch_size=5, look_ahead=handler.look_ahead)
    with anyio.fail_after(5):
        await c.run()
    assert len(handler.ahead) == 1 and handler.data == [f"e{i}".encode() for i in range(10)]
    assert await pending(redis, keys.events) == 0
