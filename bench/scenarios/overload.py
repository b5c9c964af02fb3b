"""``overload``: a burst far above what the engine sustains, against the publishers'
back-pressure (``automations.streams.publish``).

One engine process with 1,000 automations of the heavy mix (a few thousand events/s here);
two publishers send events as fast as ``Publisher`` lets them for 60 s (5 s with ``--quick``)
with ``events_maxlen`` = 50,000 (20,000). Every 0.25 s the stream's length and memory are
sampled. Reported: how far above the engine's pace
the publishers tried to go (attempted rate over engine rate), the share of their time spent
waiting (back-pressure), overload errors, the largest stream length and memory against the
bound, and how long the engine then takes to have no lag (recovery).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from automations.errors import BusOverloaded
from automations.events import Event, uuid7
from automations.keys import ENGINE_GROUP, Keys
from automations.streams.publish import Publisher
from bench.drive import start_engines
from bench.harness import Bench, Row, drain_group, group_progress
from bench.procs import stop_all
from bench.workload import build_automations, build_events

BATCH = 500
PUBLISHERS = 2


@dataclass
class Sampled:
    """(seconds since the start, stream length, the stream's memory) every 0.25 s. The
    stream's own memory, not Redis's: the benchmark runs no dispatcher, so the firings stream
    and window state grow with the work done, which back-pressure does not bound."""

    points: list[tuple[float, int, int]] = field(default_factory=list)

    def peak(self, start: float, end: float) -> tuple[int, int]:
        inside = [(n, m) for t, n, m in self.points if start <= t < end] or [(0, 0)]
        return max(n for n, _ in inside), max(m for _, m in inside)


async def entries_read(bench: Bench, stream: str) -> int:
    """How many entries the engine group has read (Redis 7 ``entries-read``; trimming does
    not change it, unlike a count derived from the stream's length)."""
    for info in await bench.redis.xinfo_groups(stream):
        if info.get("name") in (ENGINE_GROUP, ENGINE_GROUP.encode()):
            return int(info.get("entries-read") or 0)
    return 0


@dataclass
class Sent:
    events: int = 0
    calls: int = 0
    waiting_s: float = 0.0
    overloaded: int = 0


async def publish_until(publisher: Publisher, pool: list[Event], deadline: float,
                        sent: Sent) -> None:
    """Publish fresh copies of ``pool`` (new ids: the engine would skip repeats) until
    ``deadline``; a call that returns slowly was held back by the bound."""
    at = 0
    while time.monotonic() < deadline:
        batch = [e.model_copy(update={"id": uuid7()}) for e in pool[at:at + BATCH]]
        at = (at + BATCH) % len(pool)
        started = time.monotonic()
        try:
            await publisher.publish(batch)
        except BusOverloaded:
            sent.overloaded += 1
        spent = time.monotonic() - started
        sent.events += len(batch)
        sent.calls += 1
        if spent > 0.05:  # an ordinary call of 500 XADDs takes a few ms
            sent.waiting_s += spent


async def sample(bench: Bench, stream: str, sampled: Sampled, stop: anyio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        length = int(await bench.redis.xlen(stream))
        memory = int(await bench.redis.memory_usage(stream, samples=5) or 0)
        sampled.points.append((time.monotonic() - started, length, memory))
        with anyio.move_on_after(0.25):
            await stop.wait()


async def run(bench: Bench) -> list[Row]:
    size, seconds, maxlen = (200, 5.0, 20_000) if bench.quick else (1_000, 60.0, 50_000)
    prefix = bench.new_prefix("overload")
    keys = Keys(prefix)
    settings = bench.settings(prefix, events_maxlen=maxlen, publish_wait_s=30.0)
    pool = [Event.parse(e) for e in build_events(5_000)[0]]
    engines = await start_engines(bench, prefix, build_automations(size))
    sampled, sent = Sampled(), Sent()
    for engine in engines:
        engine.go()
    try:
        stop = anyio.Event()
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample, bench, keys.events, sampled, stop)
            async with anyio.create_task_group() as publishers:
                for _ in range(PUBLISHERS):
                    publishers.start_soon(publish_until, Publisher(bench.redis, settings),
                                          pool, started + seconds, sent)
            burst = time.monotonic() - started
            read_at_end = await entries_read(bench, keys.events)
            _, lag_at_end = await group_progress(bench.redis, keys.events, ENGINE_GROUP)
            _, recovery = await drain_group(bench.redis, keys.events, ENGINE_GROUP,
                                            timeout=120.0 if not bench.quick else 30.0)
            stop.set()
        _, lag_after = await group_progress(bench.redis, keys.events, ENGINE_GROUP)
    finally:
        await stop_all(engines)
    await bench.cleanup(prefix)
    engine_rate = read_at_end / burst  # its own announcements included: events it handled
    # what the publishers would have sent unhindered: their rate while not held back
    free_s = max(burst * PUBLISHERS - sent.waiting_s, 1e-9)
    attempted_rate = sent.events / free_s * PUBLISHERS
    first_len, first_mem = sampled.peak(0, burst / 2)
    second_len, second_mem = sampled.peak(burst / 2, burst)
    bounded = second_len <= 1.2 * first_len and second_mem <= 1.2 * first_mem
    return [{
        "scenario": "overload", "automations": size, "seconds": round(burst, 1),
        "events_maxlen": maxlen, "published": sent.events,
        "engine_events_per_second": round(engine_rate),
        "attempted_over_engine": round(attempted_rate / engine_rate, 1) if engine_rate else None,
        "publishers_waiting_percent": round(100 * sent.waiting_s / (burst * PUBLISHERS)),
        "overload_errors": sent.overloaded,
        "longest_stream_first_half": first_len, "longest_stream_second_half": second_len,
        "stream_mb_first_half": round(first_mem / 1e6, 1),
        "stream_mb_second_half": round(second_mem / 1e6, 1),
        "lag_at_burst_end": lag_at_end, "recovery_seconds": round(recovery, 2),
        "lag_after_recovery": lag_after,
        "target": "stream and memory do not grow in the burst's second half; lag recovers",
        "target_met": bounded and lag_after == 0,
    }]
