"""``ceiling``: the transport limit. A bare Python consumer of the events stream (XREADGROUP
COUNT 1000 + XACK, no evaluation) and the pipelined producer, on the same events the engine
reads. ``throughput`` divides by the bare consumer's figure."""

from __future__ import annotations

import time

import orjson
import redis.asyncio as aioredis

from bench.harness import Bench, Row, xreadgroup_new
from bench.workload import build_events, encode, ensure_group, push

GROUP = "ceiling"
COUNT = 1000


async def consume(redis: aioredis.Redis, stream: str, *, decode: bool = False) -> int:
    """Read and acknowledge every entry of ``stream`` in batches of ``COUNT``; entries read."""
    done = 0
    while True:
        entries = await xreadgroup_new(redis, stream, GROUP, "c1", count=COUNT)
        if not entries:
            return done
        if decode:
            for _, fields in entries:
                orjson.loads(fields[b"data"])
        await redis.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
        done += len(entries)


async def measure(bench: Bench, events: int) -> list[Row]:
    payload = encode(build_events(events)[0])
    rows: list[Row] = []
    for variant, decode in (("bare", False), ("orjson-decode", True)):
        stream = f"{bench.new_prefix('ceiling')}:events"
        await ensure_group(bench.redis, stream, GROUP)
        start = time.perf_counter()
        await push(bench.redis, stream, payload)
        produced = time.perf_counter() - start
        start = time.perf_counter()
        consumed = await consume(bench.redis, stream, decode=decode)
        elapsed = time.perf_counter() - start
        if variant == "bare":
            rows.append({"scenario": "ceiling", "case": "producer (pipelined XADD)",
                         "events": events, "seconds": round(produced, 3),
                         "events_per_second": round(events / produced)})
        rows.append({"scenario": "ceiling", "case": f"consumer ({variant})",
                     "events": consumed, "seconds": round(elapsed, 3),
                     "events_per_second": round(consumed / elapsed),
                     "bytes": len(payload[0][1])})
        await bench.redis.delete(stream)
    return rows


async def run(bench: Bench) -> list[Row]:
    return await measure(bench, 20_000 if bench.quick else 200_000)


async def ceiling_rate(bench: Bench, events: int) -> float:
    """The bare consumer's events/s, for ratios in other scenarios."""
    rows = await measure(bench, events)
    return float(next(r["events_per_second"] for r in rows if r["case"] == "consumer (bare)"))
