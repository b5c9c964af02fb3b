"""``memory``: Redis memory per 100,000 open buckets, and engine RSS at 10,000 automations.

Buckets: one automation counting ``bench.mem`` events per resource with a threshold it never
reaches and a one-hour window, and 100,000 events for distinct resources, so each event opens
one bucket. ``used_memory`` is read before and after, with the events stream deleted first
(it is not bucket state); the per-event dedupe markers (``seen:<id>``) are then deleted and
measured apart. RSS: an engine process's resident size after loading 10 and 10,000
automations of the mix.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from actions.models import DoNothing
from automations.keys import Keys
from automations.models import Automation
from bench.drive import drain_backlog, start_engines
from bench.harness import Bench, Row
from bench.procs import stop_all
from bench.workload import build_automations, encode, event_dict
from triggers.models import EventTrigger


def counting_automation() -> Automation:
    return Automation(
        name="bench-memory",
        trigger=EventTrigger(expect={"bench.mem"}, for_each={"prefect.resource.id"},
                             threshold=1_000_000, within=timedelta(hours=1)),
        actions=[DoNothing()])


async def used_memory(bench: Bench) -> int:
    info = await bench.redis.info("memory")
    return int(info["used_memory"])


async def count_keys(bench: Bench, pattern: str) -> int:
    return sum([1 async for _ in bench.redis.scan_iter(match=pattern, count=5000)])


async def buckets(bench: Bench, count: int) -> list[Row]:
    prefix = bench.new_prefix("memory")
    keys = Keys(prefix)
    engines = await start_engines(bench, prefix, [counting_automation()])
    start = datetime.now(UTC)
    events = encode([event_dict("bench.mem", i, uuid.uuid4(), start) for i in range(count)])
    try:
        before = await used_memory(bench)
        handled = (await drain_backlog(bench, prefix, engines, events, limit=120)).handled
    finally:
        await stop_all(engines)
    await bench.redis.delete(keys.events)
    with_markers = await used_memory(bench)
    parts = keys.all_partitions
    # the evaluated ids: members of the partitions' per-slice sets (and one-key markers, which
    # an installation of the versions before would also have for a while)
    sets = [key for part in parts
            async for key in bench.redis.scan_iter(match=f"{part.seen_ids_prefix}*", count=100)]
    legacy = [key for part in parts
              async for key in bench.redis.scan_iter(match=part.seen("*"), count=5000)]
    markers = sum([int(await bench.redis.scard(key)) for key in sets]) + len(legacy)
    found = sets + legacy
    for offset in range(0, len(found), 5000):  # DEL, not UNLINK: a large set is freed later
        await bench.redis.delete(*found[offset:offset + 5000])
    after = await used_memory(bench)
    opened = sum([await count_keys(bench, f"{part.base}:bucket:*") for part in parts])
    await bench.cleanup(prefix)
    per_bucket = (after - before) / opened if opened else 0.0
    rows: list[Row] = [{
        "scenario": "memory", "case": "Redis memory of open buckets", "events": handled,
        "buckets": opened, "bytes": after - before, "bytes_per_bucket": round(per_bucket),
        "bytes_per_100k_buckets": round(per_bucket * 100_000),
    }]
    if markers:
        rows.append({"scenario": "memory", "case": "Redis memory of dedupe markers",
                     "events": handled, "markers": markers, "bytes": with_markers - after,
                     "bytes_per_marker": round((with_markers - after) / markers)})
    return rows


async def engine_rss(bench: Bench, size: int) -> Row:
    prefix = bench.new_prefix(f"rss{size}")
    engines = await start_engines(bench, prefix, build_automations(size))
    try:
        ready = engines[0].ready
    finally:
        await stop_all(engines)
    return {"scenario": "memory", "case": "engine RSS after loading", "automations": size,
            "bytes": ready["rss"], "rss_before_load": ready["rss_before_load"],
            "load_seconds": ready["load_seconds"]}


async def run(bench: Bench) -> list[Row]:
    count, sizes = (3_000, (10, 200)) if bench.quick else (100_000, (10, 10_000))
    rows = await buckets(bench, count)
    rss = [await engine_rss(bench, size) for size in sizes]
    small, large = rss
    large["bytes_per_automation"] = round(
        (large["bytes"] - small["bytes"]) / (large["automations"] - small["automations"]))
    return rows + rss
