"""``scaleout``: one engine process, then two on the same stream (one consumer group), on the
same seeded automations and events; events/s of each and whether the fired sets match.

Firings are compared as a multiset of (automation, trigger, labels): with two processes the
events of one bucket may be evaluated in another order, so which event crossed a threshold
can differ while the firings themselves must not. Whether the triggering events also match
is reported beside it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from bench.drive import drain_backlog, firing_signature, read_firings, start_engines
from bench.harness import Bench, Row
from bench.procs import stop_all
from bench.workload import build_automations, build_events, encode

TARGET_SPEEDUP = 1.6


def recent_start() -> datetime:
    """Event times for both runs (they must see the same events), a minute before now: the
    engines' own prefect.automation.triggered events carry the wall clock, and with two
    processes one may read them while the other still evaluates the backlog; they move the
    shared events clock (reference 3.7), and backlog events months older than it would find
    their reactive buckets already expired."""
    return (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)


async def measure(
    bench: Bench, processes: int, size: int, count: int, limit: float, start: datetime
) -> tuple[Row, Counter[tuple[str, str, str, str]]]:
    prefix = bench.new_prefix(f"scale{processes}")
    events, _ = build_events(count, start=start)
    engines = await start_engines(bench, prefix, build_automations(size), processes=processes)
    try:
        drain = await drain_backlog(bench, prefix, engines, encode(events), limit=limit)
    finally:
        await stop_all(engines)
    firings = await read_firings(bench.redis, f"{prefix}:firings")
    await bench.cleanup(prefix)
    signatures = Counter(firing_signature(f) for f in firings)
    eps = drain.handled / drain.seconds if drain.seconds > 0 else 0.0
    row: Row = {"scenario": "scaleout", "automations": size, "processes": processes,
                "events": drain.handled, "seconds": round(drain.seconds, 3),
                "events_per_second": round(eps), "firings": len(firings), **drain.figures()}
    return row, signatures


async def run(bench: Bench) -> list[Row]:
    size, count, limit = (100, 1_500, 20.0) if bench.quick else (1_000, 20_000, 60.0)
    start = recent_start()
    one, fired_one = await measure(bench, 1, size, count, limit, start)
    two, fired_two = await measure(bench, 2, size, count, limit, start)
    same = Counter(s[:3] for s in fired_one.elements()) == \
        Counter(s[:3] for s in fired_two.elements())
    speedup = two["events_per_second"] / one["events_per_second"] \
        if one["events_per_second"] else 0.0
    complete = one["events"] == two["events"] == count
    summary: Row = {
        "scenario": "scaleout", "case": "2 processes / 1", "automations": size, "processes": 2,
        "ratio": round(speedup, 2), "same_firings": same and complete,
        "same_triggering_events": fired_one == fired_two,
        "target": f">= {TARGET_SPEEDUP}x, same firings",
        "target_met": speedup >= TARGET_SPEEDUP and same and complete,
    }
    return [one, two, summary]
