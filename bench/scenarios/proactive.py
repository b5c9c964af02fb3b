"""``proactive``: how late proactive firings are, over 10,000 deadlines.

One proactive automation ("``bench.open`` not followed by ``bench.close`` within 10 s", per
resource) and 10,000 ``bench.open`` events for distinct resources, sent over 5 s as they
occur, so the deadlines spread over 10-15 s later. An engine process and a timer process run
them; a watcher on the outbox records, for every firing, the time it was seen minus its
deadline (``occurred`` of the opening event + 10 s). Every deadline must fire exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import redis.asyncio as aioredis

from actions.models import DoNothing
from automations.engine.outbox import firing_dicts
from automations.keys import Keys
from automations.models import Automation
from bench.drive import count_firings, start_engines
from bench.harness import Bench, Row, StreamsTail, latency_figures
from bench.procs import stop_all
from bench.workload import encode, event_dict, push
from triggers.models import EventTrigger, Posture

WITHIN = 10.0
TARGET_P99_MS = 1000.0


def automation() -> Automation:
    return Automation(
        name="bench-proactive",
        trigger=EventTrigger(after={"bench.open"}, expect={"bench.close"},
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive,
                             threshold=1, within=timedelta(seconds=WITHIN)),
        actions=[DoNothing()])


async def watch(
    redis: aioredis.Redis, outboxes: Sequence[str], expected: int, timeout: float
) -> tuple[list[float], int, set[str]]:
    """Lateness of each firing (seen - deadline), firings seen, distinct labels fired."""
    lateness: list[float] = []
    labels: set[str] = set()
    seen = 0
    tail = StreamsTail(redis, outboxes)
    deadline = time.perf_counter() + timeout
    while seen < expected and time.perf_counter() < deadline:
        entries = await tail.read()
        if not entries:
            continue
        now = time.time()
        for _, fields in entries:
            for firing in firing_dicts(fields):
                seen += 1
                labels.add(orjson.dumps(firing.get("triggering_labels")).decode())
                event = firing.get("triggering_event") or {}
                if "occurred" in event:
                    due = datetime.fromisoformat(event["occurred"]).timestamp() + WITHIN
                    lateness.append(now - due)
    return lateness, seen, labels


async def send_opens(bench: Bench, stream: str, count: int, spread: float, back: float) -> None:
    """``count`` opening events at a steady pace over ``spread`` seconds, each ``occurred``
    ``back`` seconds before it is sent, then one current event: the engines' events clock
    (reference 3.7) then stands at the wall clock, as it does when events flow in real time."""
    chunks = max(1, int(spread / 0.05))
    per_chunk = -(-count // chunks)
    start = time.perf_counter()
    for chunk in range(chunks):
        first = chunk * per_chunk
        occurred = datetime.now(UTC) - timedelta(seconds=back)
        events = [event_dict("bench.open", i, uuid.uuid4(), occurred)
                  for i in range(first, min(count, first + per_chunk))]
        await push(bench.redis, stream, encode(events))
        await asyncio.sleep(max(0.0, start + (chunk + 1) * spread / chunks - time.perf_counter()))
    tick = event_dict("bench.tick", count, uuid.uuid4(), datetime.now(UTC))
    await push(bench.redis, stream, encode([tick]))


async def run(bench: Bench) -> list[Row]:
    # Full: real time (deadlines 10 to 15 s after the start). Quick: opens back-dated so the
    # deadlines fall 1.5 s after sending.
    count, spread, back = (300, 0.5, WITHIN - 1.5) if bench.quick else (10_000, 5.0, 0.0)
    prefix = bench.new_prefix("proactive")
    keys = Keys(prefix)
    engines = await start_engines(bench, prefix, [automation()], timer=True)
    watcher_redis = aioredis.Redis.from_url(bench.redis_url)
    try:
        for engine in engines:
            engine.go()
        watcher = asyncio.create_task(
            watch(watcher_redis, keys.outboxes, count, timeout=WITHIN - back + spread + 15))
        await send_opens(bench, keys.events, count, spread, back)
        lateness, seen, labels = await watcher
        await asyncio.sleep(0.5)  # a repeat firing would land now
        total = await count_firings(bench.redis, keys.outboxes)
    finally:
        await stop_all(engines)
        await watcher_redis.aclose()
    figures = latency_figures(lateness)
    return [{"scenario": "proactive", "case": "lateness after the window's end",
             "deadlines": count, "firings": total, "distinct_fired": len(labels),
             **figures, "target": f"p99 <= {TARGET_P99_MS:g} ms, each fired once",
             "target_met": bool(lateness) and figures["p99_ms"] <= TARGET_P99_MS
             and seen == total == count == len(labels)}]
