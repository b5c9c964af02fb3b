"""``light``: what an event no trigger watches costs the engine, against the bare consumer that
decodes every event with orjson (``ceiling``'s ``orjson-decode``), in the same run on the same
Redis: the floor any consumer of the stream pays.

The engine (a separate process, automations loaded) drains a backlog of ~770-byte flow-run
events, none of them named as any loaded trigger expects (``build_automations(active=0)``:
every automation listens to ``bench.idle.*``). The target is the time per event of the engine
at most ``TARGET_RATIO`` times the bare consumer's, each the fastest of ``RUNS`` runs (one run
slowed down by other work on the machine would flatter or wrong the ratio). CPU per event (the
consumer process's and
Redis's) is reported beside it, and their ratio: every event still goes through the engine's
ordering script (``follows``, the events clock).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from bench.drive import drain_backlog, start_engines
from bench.harness import Bench, Row, redis_cpu_seconds
from bench.procs import stop_all
from bench.scenarios.ceiling import GROUP, consume
from bench.workload import build_automations, build_events, encode, ensure_group, push

TARGET_RATIO = 2.0
RUNS = 3
STEP_MS = 0.05  # event times 50 us apart: 200,000 events span 10 s, all in the past


def backlog(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` encoded events that end now (the engine dead-letters events from the future)."""
    start = datetime.now(UTC) - timedelta(milliseconds=count * STEP_MS + 1_000)
    events, _ = build_events(count, start=start, step_ms=STEP_MS)
    return encode(events)


def us(seconds: float, events: int) -> float | None:
    return round(seconds * 1e6 / events, 2) if events and seconds > 0 else None


async def bare(bench: Bench, encoded: list[tuple[bytes, bytes]]) -> Row:
    """The orjson-decoding bare consumer: XREADGROUP COUNT 1000, ``orjson.loads`` each, XACK
    (the fastest of ``RUNS`` runs)."""
    runs = [await bare_once(bench, encoded) for _ in range(RUNS)]
    return {**min(runs, key=lambda row: row["seconds"]), "runs": RUNS}


async def bare_once(bench: Bench, encoded: list[tuple[bytes, bytes]]) -> Row:
    stream = f"{bench.new_prefix('light-bare')}:events"
    await ensure_group(bench.redis, stream, GROUP)
    await push(bench.redis, stream, encoded)
    redis_before, cpu_before = await redis_cpu_seconds(bench.redis), time.process_time()
    start = time.perf_counter()
    consumed = await consume(bench.redis, stream, decode=True)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    redis_cpu = await redis_cpu_seconds(bench.redis) - redis_before
    await bench.redis.delete(stream)
    return {"scenario": "light", "case": "bare consumer (orjson-decode)", "automations": 0,
            "events": consumed, "seconds": round(seconds, 3),
            "events_per_second": round(consumed / seconds), "us_per_event": us(seconds, consumed),
            "consumer_cpu_us_per_event": us(cpu, consumed),
            "redis_cpu_us_per_event": us(redis_cpu, consumed)}


async def engine(
    bench: Bench, size: int, encoded: list[tuple[bytes, bytes]], *, limit: float, runs: int
) -> Row:
    """One engine process with ``size`` automations, none watching the events, draining them
    (the fastest of ``runs`` runs, each a fresh process and prefix)."""
    made = [await engine_once(bench, size, encoded, limit=limit) for _ in range(runs)]
    return {**min(made, key=lambda row: row["seconds"]), "runs": runs}


async def engine_once(
    bench: Bench, size: int, encoded: list[tuple[bytes, bytes]], *, limit: float
) -> Row:
    prefix = bench.new_prefix(f"light{size}")
    engines = await start_engines(bench, prefix, build_automations(size, active=0))
    try:
        drain = await drain_backlog(bench, prefix, engines, encoded, limit=limit)
    finally:
        await stop_all(engines)
    await bench.cleanup(prefix)
    handled, seconds = drain.handled, drain.seconds
    return {"scenario": "light", "case": "engine, no event watched", "automations": size,
            "events": handled, "seconds": round(seconds, 3),
            "events_per_second": round(handled / seconds) if seconds > 0 else None,
            "us_per_event": us(seconds, handled),
            "consumer_cpu_us_per_event": us(drain.engines_cpu * seconds, handled),
            "redis_cpu_us_per_event": us(drain.redis_cpu * seconds, handled)}


def cpu_ratio(row: Row, floor: Row) -> float | None:
    """The same ratio on CPU (the consumer process's plus Redis's): steadier than wall time on
    a machine other work shares."""
    engine, bare_cost = cpu_us(row), cpu_us(floor)
    return round(engine / bare_cost, 2) if engine and bare_cost else None


def cpu_us(row: Row) -> float | None:
    consumer, redis = row["consumer_cpu_us_per_event"], row["redis_cpu_us_per_event"]
    return None if consumer is None or redis is None else float(consumer + redis)


async def run(bench: Bench) -> list[Row]:
    sizes, count, limit = ((10, 200), 5_000, 20.0) if bench.quick else \
        ((10, 1_000), 200_000, 60.0)
    encoded = backlog(count)
    floor = await bare(bench, encoded)
    rows = [floor]
    for size in sizes:
        row = await engine(bench, size, encoded, limit=limit, runs=1 if bench.quick else RUNS)
        if row["us_per_event"] and floor["us_per_event"]:
            row["ratio_to_bare"] = round(row["us_per_event"] / floor["us_per_event"], 2)
            row["cpu_ratio_to_bare"] = cpu_ratio(row, floor)
            row["target"] = f"<= {TARGET_RATIO:g}x the bare consumer's time per event"
            row["target_met"] = row["ratio_to_bare"] <= TARGET_RATIO
        rows.append(row)
    return rows
