"""``console``: server time of every web console page and API route at scale.

The store holds 10,000 automations of the benchmark mix (written straight into its hash, as
``apply`` lays them out), the events stream 1,000,000 events (compact ones of about 250
bytes, pre-encoded and added with pipelined XADD), the history 100,000 records over the last
24 hours (what ``history_maxlen`` keeps), and the decision log 100,000 decisions (its default
cap; the automation on the detail page is in none of them, so ``explain`` reads all the
entries the console lets it read: its worst case). The console runs in process (its
Starlette app over httpx's ASGI transport, on the benchmark's Redis); each route is requested
``ROUNDS`` times after one warm-up request, and its server time is read from the
``Server-Timing`` header the app adds. ``warm`` is the one-off read of the automations and
the last day's firings when the console starts (in the background, before the first page
needs it). ``--quick``: 1,000 automations, 50,000 events, 5,000 history records and
decisions.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson

from automations.console.app import build_app, warm
from automations.console.context import Console
from automations.events import utcnow
from automations.insight.history import fired_entry, outcome_entry, stream_id_at
from automations.keys import Keys
from automations.models import Automation
from bench.harness import Bench, Row, percentile
from bench.workload import build_automations

TARGET_MS = 200.0
ROUNDS = 15
PIPE = 10_000


def _event(i: int, now_ms: int) -> bytes:
    return orjson.dumps({
        "id": str(uuid.UUID(int=i + 1)), "occurred": "2026-01-01T00:00:00Z",
        "event": f"bench.evt.{i % 10}" if i % 100 else "bench.other.rare",
        "resource": {"prefect.resource.id": f"bench.res.{i % 5000}",
                     "prefect.resource.name": f"r{i % 5000}"},
        "payload": {"n": i, "at": now_ms}})


async def _store(bench: Bench, keys: Keys, automations: list[Automation]) -> None:
    pipe: Any = bench.redis.pipeline(transaction=False)
    for i, a in enumerate(automations):
        pipe.hset(keys.automations, str(a.id), a.model_dump_json())
        pipe.hset(keys.automation_names, a.name, str(a.id))
        if i % PIPE == PIPE - 1:
            await pipe.execute()
    await pipe.execute()


async def _events(bench: Bench, keys: Keys, count: int) -> None:
    now_ms = int(time.time() * 1000)
    pipe: Any = bench.redis.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(keys.events, {"id": str(uuid.UUID(int=i + 1)), "data": _event(i, now_ms)})
        if i % PIPE == PIPE - 1:
            await pipe.execute()
    await pipe.execute()


async def _history(bench: Bench, keys: Keys, automations: list[Automation], count: int,
                   now: datetime) -> None:
    """Half ``fired`` and half ``executed`` records, evenly over the last 24 hours."""
    start = stream_id_at(now - timedelta(hours=24)) + 1
    step = max(1, (stream_id_at(now) - start) // count)
    pipe: Any = bench.redis.pipeline(transaction=False)
    for i in range(count // 2):
        a = automations[i % len(automations)]
        firing = uuid.UUID(int=i + 1)
        at = start + 2 * i * step
        pipe.xadd(keys.history, {"data": fired_entry(
            firing_id=firing, automation_id=a.id, automation=a.name, fired_at=now,
            event_id=None, actions=["do-nothing"])}, id=f"{at}-0")
        pipe.xadd(keys.history, {"data": outcome_entry(
            firing_id=firing, automation_id=a.id, index=0, action_type="do-nothing",
            outcome="executed", attempt=1, detail=None)}, id=f"{at + step}-0")
        if i % PIPE == PIPE - 1:
            await pipe.execute()
    await pipe.execute()


async def _decisions(bench: Bench, keys: Keys, automations: list[Automation], count: int
                     ) -> None:
    pipe: Any = bench.redis.pipeline(transaction=False)
    for i in range(count):
        a = automations[i % 100]
        pipe.xadd(keys.decisions, {"event_id": str(uuid.UUID(int=i + 1)),
                                   "event": "bench.evt.1", "occurred": "2026-01-01T00:00:00Z",
                                   "entry": "", "counted": str(a.id), "missed": "",
                                   "immediate": ""})
        if i % PIPE == PIPE - 1:
            await pipe.execute()
    await pipe.execute()


async def _time(http: httpx.AsyncClient, path: str) -> tuple[list[float], int, int]:
    """Server times (ms) of ``ROUNDS`` requests after a warm-up, the status, the size."""
    first = await http.get(path)
    times = []
    for _ in range(ROUNDS):
        answer = await http.get(path)
        times.append(float(answer.headers["server-timing"].partition("dur=")[2]))
    return times, first.status_code, len(first.content)


async def run(bench: Bench) -> list[Row]:
    sizes = (1_000, 50_000, 5_000) if bench.quick else (10_000, 1_000_000, 100_000)
    n_automations, n_events, n_records = sizes
    prefix = bench.new_prefix("console")
    keys = Keys(prefix)
    settings = bench.settings(prefix)
    now = utcnow()
    started = time.perf_counter()
    automations = build_automations(n_automations)
    await _store(bench, keys, automations)
    await _events(bench, keys, n_events)
    await _history(bench, keys, automations, n_records, now)
    await _decisions(bench, keys, automations, n_records)
    prefill_s = time.perf_counter() - started

    console = Console(settings, bench.redis)
    warm_started = time.perf_counter()
    await warm(console)
    warm_ms = (time.perf_counter() - warm_started) * 1000

    first: Any = await bench.redis.xrange(keys.events, count=1)
    last: Any = await bench.redis.xrevrange(keys.events, count=1)
    middle_ms = (int(first[0][0].split(b"-")[0]) + int(last[0][0].split(b"-")[0])) // 2
    found: Any = await bench.redis.xrange(keys.events, min=f"{middle_ms}", count=1)
    entry = found[0][0].decode()  # an event half way down the stream
    quiet = automations[-1].name  # in no decision: explain reads the whole log
    common: Row = {"scenario": "console", "automations": n_automations, "events": n_events,
                   "history": n_records, "decisions": n_records}
    rows: list[Row] = [{**common, "route": "(prefill)", "seconds": round(prefill_s, 1)},
                       {**common, "route": "(warm: automations + 24 h firings, once)",
                        "p50_ms": round(warm_ms, 1)}]
    routes = [
        "/automations", f"/automations?offset={n_automations - 50}", "/automations?q=00042",
        f"/automations/{quiet}", "/events", "/events?name=bench.other.*",
        "/events?label=prefect.resource.id=bench.res.4999", f"/events?before={entry}",
        f"/events/{entry}", "/dead-letters", "/deployments", "/flow-runs",
        "/api/automations", "/api/automations?offset=5000", f"/api/automations/{quiet}",
        "/api/events", "/api/events?name=bench.other.*", "/api/dead-letters",
        "/api/flow-runs",
    ]
    transport = httpx.ASGITransport(app=build_app(console))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for route in routes:
            times, status, size = await _time(http, route)
            p95 = percentile(times, 95)
            rows.append({**common, "route": route, "status": status, "kb": round(size / 1024, 1),
                         "p50_ms": round(percentile(times, 50), 1), "p95_ms": round(p95, 1),
                         "max_ms": round(max(times), 1), "target": f"< {TARGET_MS:g} ms",
                         "target_met": status == 200 and p95 < TARGET_MS})
    await bench.cleanup(prefix)
    return rows
