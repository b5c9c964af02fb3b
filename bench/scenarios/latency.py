"""``latency``: (1) from XADD of an event to its firing in the outbox, at a steady 2,000
events/s with 1,000 automations of the mix; (2) from a firing in the outbox to the webhook
request it causes, at a steady 500 firings/s, against a local HTTP server.

Clocks: the producer stamps ``payload.sent`` (wall time) into each event just before XADD;
a watcher reading the firings stream subtracts it from the time it sees the firing. For
webhooks the firing's XADD time is kept by firing id, which comes back in the request's
``Idempotency-Key`` header. Producer, watcher and sink share this process; the engine and
the dispatcher run in their own processes. The first ``WARMUP`` seconds are not sampled.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
import redis.asyncio as aioredis

from automations.engine.outbox import firing_count
from automations.keys import Keys
from bench.drive import start_dispatcher, start_engines, webhook_automation
from bench.harness import Bench, Row, StreamsTail, latency_figures
from bench.procs import stop_all
from bench.sink import HttpSink
from bench.workload import GROUPS, RESOURCES, build_automations, event_dict
from triggers.firing import Firing

EVENT_RATE = 2_000
FIRING_RATE = 500
WARMUP = 1.0
TARGET_EVENT_P99_MS = 10.0
TARGET_WEBHOOK_P99_MS = 50.0


async def steady(
    seconds: float, rate: float, send: Callable[[int], object]
) -> int:
    """Call ``send(n)`` about every millisecond with the number of items due to keep ``rate``
    per second for ``seconds``; returns how many were sent."""
    start, sent = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            result = send(due)
            if asyncio.iscoroutine(result):
                await result
            sent += due
        await asyncio.sleep(0.001)
    return sent


def sent_stamp(data: bytes) -> float | None:
    """``payload.sent`` of the firing's triggering event, found without decoding the whole
    firing (the watcher shares two cores with Redis and the engine; keep it cheap)."""
    at = data.find(b'"sent":')
    if at < 0:
        return None
    end = at + 7
    while end < len(data) and data[end] in b"0123456789.eE+-":
        end += 1
    try:
        return float(data[at + 7:end])
    except ValueError:
        return None


async def watch_firings(
    redis: aioredis.Redis, outboxes: Sequence[str], samples: list[float], cutoff: list[float],
    stop: asyncio.Event,
) -> None:
    """Append ``seen - payload.sent`` for every firing whose event was sent after cutoff[0]."""
    tail = StreamsTail(redis, outboxes)
    while not stop.is_set():
        entries = await tail.read()
        if not entries:
            continue
        now = time.time()
        for _, fields in entries:
            # an engine entry holds the event once and its firings as a list; a hand-written
            # one (the dispatcher case) is one firing in `data`
            data = fields.get(b"event") or fields.get(b"data") or b""
            sent = sent_stamp(data)
            if sent and sent >= cutoff[0]:
                samples.extend([now - sent] * firing_count(fields))


async def event_to_firing(bench: Bench, seconds: float, size: int, warmup: float) -> Row:
    prefix = bench.new_prefix("lat-event")
    keys = Keys(prefix)
    engines = await start_engines(bench, prefix, build_automations(size))
    rng = random.Random(3)
    samples: list[float] = []
    cutoff = [time.time() + warmup]
    stop = asyncio.Event()
    watcher_redis = aioredis.Redis.from_url(bench.redis_url)

    async def send(count: int) -> None:
        async with bench.redis.pipeline(transaction=False) as pipe:
            for _ in range(count):
                event = event_dict(f"bench.evt.{rng.randrange(GROUPS)}",
                                   rng.randrange(RESOURCES), uuid.uuid4(), datetime.now(UTC),
                                   sent=time.time())
                pipe.xadd(keys.events, {b"data": orjson.dumps(event),
                                        b"id": event["id"].encode()})
            await pipe.execute()

    try:
        engines[0].go()
        watcher = asyncio.create_task(
            watch_firings(watcher_redis, keys.outboxes, samples, cutoff, stop))
        sent = await steady(seconds + warmup, EVENT_RATE, send)
        await asyncio.sleep(0.5)  # let the last firings arrive
        stop.set()
        await watcher
    finally:
        await stop_all(engines)
        await watcher_redis.aclose()
    figures = latency_figures(samples)
    return {"scenario": "latency", "case": "event XADD -> firing in outbox",
            "automations": size, "rate_per_second": EVENT_RATE,
            "sent": sent, **figures,
            "target": f"p99 <= {TARGET_EVENT_P99_MS:g} ms",
            "target_met": bool(samples) and figures["p99_ms"] <= TARGET_EVENT_P99_MS}


async def firing_to_webhook(
    bench: Bench, seconds: float, warmup: float, *, batch_size: int | None = None
) -> Row:
    prefix = bench.new_prefix("lat-hook")
    keys = Keys(prefix)
    sink = HttpSink()
    await sink.start()
    automation = webhook_automation(sink.url)
    dispatchers = await start_dispatcher(bench, prefix, [automation], batch_size=batch_size)
    sent_at: dict[str, float] = {}
    warm_until = time.time() + warmup

    async def send(count: int) -> None:
        async with bench.redis.pipeline(transaction=False) as pipe:
            for _ in range(count):
                now = time.time()
                firing = Firing(automation_id=automation.id, trigger_id=automation.trigger.id,
                                triggered=datetime.now(UTC))
                if now >= warm_until:
                    sent_at[str(firing.id)] = now
                pipe.xadd(keys.of(automation.id).firings, {b"data": firing.to_json()})
            await pipe.execute()

    try:
        dispatchers[0].go()
        sent = await steady(seconds + warmup, FIRING_RATE, send)
        deadline = time.perf_counter() + 5
        while len(sink.requests) < sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await stop_all(dispatchers)
        await sink.stop()
    samples = []
    for request in sink.requests:
        firing_id = request.headers.get("idempotency-key", "").split(":")[0]
        if firing_id in sent_at:
            samples.append(request.received - sent_at[firing_id])
    figures = latency_figures(samples)
    span = sink.requests[-1].received - sink.requests[0].received if sink.requests else 0.0
    delivered = round(len(sink.requests) / span) if span > 0 else None
    return {"scenario": "latency", "case": "firing in outbox -> webhook request",
            "automations": 1, "rate_per_second": FIRING_RATE, "sent": sent,
            "requests": len(sink.requests), "delivered_per_second": delivered,
            "dispatch_batch": batch_size or "default",
            **figures,
            "target": f"p99 <= {TARGET_WEBHOOK_P99_MS:g} ms",
            "target_met": bool(samples) and figures["p99_ms"] <= TARGET_WEBHOOK_P99_MS}


async def run(bench: Bench) -> list[Row]:
    seconds, sizes, warmup = (1.0, (100,), 0.2) if bench.quick else (10.0, (100, 1_000), WARMUP)
    rows = [await event_to_firing(bench, seconds, size, warmup) for size in sizes]
    return [*rows,
            await firing_to_webhook(bench, 1.0 if bench.quick else 10.0, warmup)]
