"""``peer``: the same automations and events through a local Prefect 3 server and through ours.

End to end for both: from the first event sent until every expected firing is visible
(Prefect: ``prefect.automation.triggered`` events readable from its API; ours: firings in the
outbox). The mix leaves proactive triggers out, so the time measured is evaluation, not a
deadline; every event's ``occurred`` falls in one minute, which makes the expected firings
exact (``workload.expected_firings``), and so firings lost (or extra) are counted per
automation for both engines.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from automations.keys import Keys
from automations.models import Automation
from bench.drive import (
    all_announced,
    per_automation,
    read_firings,
    start_engines,
)
from bench.harness import Bench, Row, wait_blocked_readers
from bench.prefect import PREFECT_VERSION, PrefectClient, PrefectServer, install, to_prefect
from bench.procs import stop_all
from bench.workload import build_automations, build_events, encode, expected_firings, push

RESOURCES = 10  # few resources, so threshold-per-resource automations do fire
SEND_CHUNK = 100  # events a pipeline (ours) or a POST (Prefect's): both sides send alike


def _compare(expected: dict[int, int], seen: dict[int, int]) -> tuple[int, int]:
    lost = sum(max(0, n - seen.get(i, 0)) for i, n in expected.items())
    extra = sum(max(0, seen.get(i, 0) - n) for i, n in expected.items())
    return lost, extra


async def ours(
    bench: Bench, automations: list[Automation], events: list[dict[str, Any]], expected: int
) -> tuple[float, dict[str, int]]:
    """With the engine started and idle (both its consumers, of the events and of the
    outbox, waiting for entries: a server that runs, as Prefect's is before its clock starts),
    seconds from the first XADD until ``expected`` ``prefect.automation.triggered`` events
    are on the events stream (what Prefect's clock waits for; each firing is in the outbox
    before its event is announced); counts, read from the outboxes afterwards.

    While the clock runs only the stream's length is read (XLEN, O(1)): reading the outbox
    entries as they came (~1 KB each) took the bench process and Redis a fair share of the
    two cores the engine measured runs on."""
    prefix = bench.new_prefix("peer")
    engines = await start_engines(bench, prefix, automations)
    keys = Keys(prefix)
    wanted = len(events) + expected  # the burst, then one announced event a firing
    try:
        engines[0].go()
        await wait_blocked_readers(bench.redis, 1 + len(keys.outboxes), timeout=30)
        start = time.perf_counter()
        await push(bench.redis, keys.events, encode(events), chunk=SEND_CHUNK)
        last, last_change = -1, start
        while time.perf_counter() - last_change < 10:
            length = int(await bench.redis.xlen(keys.events))
            if length != last:
                last, last_change = length, time.perf_counter()
            if length >= wanted and await all_announced(bench.redis, keys.outboxes):
                last_change = time.perf_counter()
                break
            await asyncio.sleep(0.005)
        seconds = last_change - start
    finally:
        await stop_all(engines)
    return seconds, dict(per_automation(await read_firings(bench.redis, keys.outboxes)))


async def prefect(
    bench: Bench, automations: list[Automation], events: list[dict[str, Any]], expected: int
) -> tuple[float, dict[str, int], Row]:
    """The same against Prefect; returns seconds, counts by automation name, and set-up facts."""
    setup: Row = {"install_seconds": round(await install(), 1)}
    server = PrefectServer()
    setup["startup_seconds"] = round(await server.start(), 1)
    client = PrefectClient(server.api)
    try:
        created = await client.create_automations(automations)
        since = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
        start = time.perf_counter()
        await client.send_events(events, chunk=SEND_CHUNK)
        setup["send_seconds"] = round(time.perf_counter() - start, 2)
        limit, quiet = (60.0, 15.0) if bench.quick else (150.0, 20.0)
        last, last_change = -1, start
        progress: list[tuple[float, int]] = []
        # Prefect persists its triggered events in bulk, many seconds apart under load: only
        # once nearly all are visible does a quiet spell mean it is done (and lost the rest).
        while time.perf_counter() - start < limit and (
                last < 0.95 * expected or time.perf_counter() - last_change < quiet):
            total = await client.triggered_total(created, since)
            progress.append((round(time.perf_counter() - start, 1), total))
            if total != last:
                last, last_change = total, time.perf_counter()
            if total >= expected:
                break
            await asyncio.sleep(0.5)
        seconds = last_change - start
        setup["finished_in_time"] = time.perf_counter() - start < limit
        counts = await client.triggered_by_automation(created, since)
        setup["progress"] = progress[:: max(1, len(progress) // 12)]
        return seconds, {created[a]: n for a, n in counts.items()}, setup
    finally:
        await client.aclose()
        server.stop()


async def run(bench: Bench) -> list[Row]:
    size, count = (20, 200) if bench.quick else (100, 2000)
    automations = build_automations(size, proactive=False)
    events, plan = build_events(count, resources=RESOURCES)
    expected = expected_firings(size, plan)
    total = sum(expected.values())
    base: Row = {"scenario": "peer", "automations": size, "events": count,
                 "expected_firings": total}
    by_id = {str(a.id): i for i, a in enumerate(automations)}
    seconds, counts = await ours(bench, automations, events, total)
    lost, extra = _compare(expected, {by_id[a]: n for a, n in counts.items() if a in by_id})
    ours_eps = count / seconds if seconds > 0 else float("inf")
    rows: list[Row] = [{**base, "engine": "automations", "seconds": round(seconds, 3),
                        "events_per_second": round(ours_eps), "firings_seen": sum(counts.values()),
                        "lost_firings": lost, "extra_firings": extra}]
    if bench.options.extra.get("no_prefect"):
        converted = [to_prefect(a) for a in automations]
        rows.append({**base, "engine": f"prefect {PREFECT_VERSION}: skipped (--no-prefect)",
                     "converted_automations": len(converted)})
        return rows
    p_seconds, p_counts, setup = await prefect(bench, automations, events, total)
    by_name = {a.name: i for i, a in enumerate(automations)}
    p_lost, p_extra = _compare(expected, {by_name[n]: c for n, c in p_counts.items()})
    p_eps = count / p_seconds if p_seconds > 0 else 0.0
    rows.append({**base, "engine": f"prefect {PREFECT_VERSION}", "seconds": round(p_seconds, 2),
                 "events_per_second": round(p_eps, 1), "firings_seen": sum(p_counts.values()),
                 "lost_firings": p_lost, "extra_firings": p_extra, **setup})
    ratio = ours_eps / p_eps if p_eps else float("inf")
    rows.append({**base, "engine": "ratio automations/prefect", "ratio_to_peer": round(ratio, 1),
                 "target": ">= 500x and no lost firings",
                 "target_met": ratio >= 500 and lost == 0})
    return rows
