"""Driving the engine under test: start engine processes on a prefix, read what they fired."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.engine.outbox import firing_count, firing_dicts
from automations.keys import ANNOUNCE_GROUP, DISPATCH_GROUP, ENGINE_GROUP, Keys
from automations.models import Automation
from bench.harness import (
    CACHE_DIR,
    Bench,
    NodeSample,
    Row,
    StreamEntry,
    cpu_seconds,
    group_progress,
    sample_node,
    xrange_after,
)
from bench.procs import ServiceProcess
from bench.workload import automations_json, ensure_group, push
from triggers.models import EventTrigger


def write_automations(prefix: str, automations: list[Automation]) -> Path:
    path = CACHE_DIR / "data" / f"{prefix}-automations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(automations_json(automations))
    return path


async def start_engines(
    bench: Bench, prefix: str, automations: list[Automation], *, processes: int = 1,
    timer: bool = False, batch_size: int | None = None, partitions: int = 1,
) -> list[ServiceProcess]:
    """Create the engine group at the stream's start, then start ``processes`` engines (and
    the proactive timer, if asked) on ``partitions`` partitions and wait until every one has
    loaded its automations (not yet working: call ``go()`` on each)."""
    await ensure_group(bench.redis, Keys(prefix, partitions).events, ENGINE_GROUP)
    path = write_automations(prefix, automations)
    engines = []
    layout = layout_arguments(bench, partitions)
    for i in range(processes):
        args = ["--redis-url", bench.redis_url, "--prefix", prefix, "--automations", str(path),
                "--consumer", f"bench-engine-{i}", *layout]
        if batch_size:
            args += ["--batch-size", str(batch_size)]
        engines.append(ServiceProcess("bench.run_engine", args, name=f"{prefix}-engine-{i}"))
    if timer:
        engines.append(ServiceProcess(
            "bench.run_timer",
            ["--redis-url", bench.redis_url, "--prefix", prefix, *layout],
            name=f"{prefix}-timer"))
    try:
        await asyncio.gather(*(engine.start() for engine in engines))
    except BaseException:
        for engine in engines:
            await engine.stop()
        raise
    return engines


def layout_arguments(bench: Bench, partitions: int) -> list[str]:
    """A child's partitions, and ``--cluster`` when the bench's Redis is a cluster."""
    return ["--partitions", str(partitions), *(["--cluster"] if bench.cluster else [])]


class StreamCursor:
    """Reads a stream from its start, page by page, each entry once across calls."""

    def __init__(self, redis: aioredis.Redis, stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self._start = "-"

    async def new_entries(self) -> list[StreamEntry]:
        found: list[StreamEntry] = []
        while entries := await xrange_after(self.redis, self.stream, self._start):
            found += entries
            self._start = "(" + entries[-1][0].decode()
        return found


Outboxes = str | Sequence[str]
"""One outbox, or several (``Keys.outboxes``: every partition's)."""


def _each(outboxes: Outboxes) -> list[str]:
    return [outboxes] if isinstance(outboxes, str) else list(outboxes)


async def read_firings(redis: aioredis.Redis, outboxes: Outboxes) -> list[dict[str, Any]]:
    """Every firing in the outboxes, decoded, in stream order (outbox by outbox)."""
    found: list[dict[str, Any]] = []
    for stream in _each(outboxes):
        entries = await StreamCursor(redis, stream).new_entries()
        found += [firing for _, fields in entries for firing in firing_dicts(fields)]
    return found


class FiringCounter:
    """Counts the firings in the outboxes as they grow (an engine entry lists all those of
    one event), reading each entry once."""

    def __init__(self, redis: aioredis.Redis, outboxes: Outboxes) -> None:
        self._cursors = [StreamCursor(redis, stream) for stream in _each(outboxes)]
        self.count = 0

    async def update(self) -> int:
        for cursor in self._cursors:
            for _, fields in await cursor.new_entries():
                self.count += firing_count(fields)
        return self.count


async def count_firings(redis: aioredis.Redis, outboxes: Outboxes) -> int:
    """How many firings the outboxes hold."""
    return await FiringCounter(redis, outboxes).update()


async def all_announced(redis: aioredis.Redis, outboxes: Outboxes) -> bool:
    """Whether the engines' announcer has published the events of every outbox entry."""
    for stream in _each(outboxes):
        _, outstanding = await group_progress(redis, stream, ANNOUNCE_GROUP)
        if outstanding:
            return False
    return True


def per_automation(firings: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(f["automation_id"]) for f in firings)


def firing_signature(firing: dict[str, Any]) -> tuple[str, str, str, str]:
    """What identifies a firing across runs: automation, trigger, labels, triggering event."""
    event = firing.get("triggering_event") or {}
    labels = orjson.dumps(firing.get("triggering_labels") or {}, option=orjson.OPT_SORT_KEYS)
    return (str(firing["automation_id"]), str(firing["trigger_id"]), labels.decode(),
            str(event.get("id", "")))


@dataclass(frozen=True)
class Readback:
    """The drain carried on until the engines had also read every event they appended (the
    announcement of each firing), as a steady flow of events makes them do: from the same
    start, ``seconds`` and the counters to that point, and how many such events they read."""

    seconds: float
    nodes: list[NodeSample]
    engines_cpu_seconds: float
    events: int

    def figures(self, handled: int) -> Row:
        total = NodeSample(0.0, {})
        for node in self.nodes:
            total += node
        per_event = total.per_event(handled)
        return {
            "events_read_back": self.events,
            "seconds_with_readback": round(self.seconds, 3),
            "redis_us_per_event_with_readback": per_event["redis_us_per_event"],
            "redis_cpu_us_per_event_with_readback": per_event["redis_cpu_us_per_event"],
            "engine_cpu_us_per_event_with_readback":
                round(self.engines_cpu_seconds * 1e6 / handled, 1) if handled else None,
        }


@dataclass
class Drain:
    """What draining a backlog took: events handled, seconds (to the last progress), and the
    CPU used meanwhile by Redis (every node) and by the engine processes, as a share of one
    core; ``nodes``: each node's counters over the drain (``bench.nodes`` order)."""

    handled: int
    seconds: float
    redis_cpu: float
    engines_cpu: float
    nodes: list[NodeSample] = field(default_factory=list)
    wall: float = 0.0
    readback: Readback | None = None

    def figures(self) -> dict[str, float]:
        return {"redis_cpu_percent": round(self.redis_cpu * 100),
                "engines_cpu_percent": round(self.engines_cpu * 100)}

    def redis_figures(self) -> Row:
        """Every node's cost an event summed (one node: its own), and the engines' CPU."""
        total = NodeSample(0.0, {})
        for node in self.nodes:
            total += node
        engine = self.engines_cpu * self.wall * 1e6 / self.handled if self.handled else None
        return {**total.per_event(self.handled), "redis_top_commands": total.top_commands(),
                "engine_cpu_us_per_event": round(engine, 1) if engine is not None else None}


async def drain_backlog(
    bench: Bench, prefix: str, engines: list[ServiceProcess], encoded: list[tuple[bytes, bytes]],
    *, limit: float, partitions: int = 1, readback: bool = False,
) -> Drain:
    """Queue ``encoded`` events, release the engines, and time until all are acknowledged and
    every firing they caused is announced (or ``limit`` seconds). Anything the engines append
    to the events stream themselves comes after the backlog, so only the backlog is counted.
    With ``readback``, the drain then goes on until the engines have read those too
    (``Drain.readback``): what each event costs in a steady flow, where the engines read
    their own announcements as they go."""
    keys = Keys(prefix, partitions)
    await push(bench.redis, keys.events, encoded)
    total = len(encoded)
    nodes_before = [await sample_node(node) for node in bench.nodes]
    engines_before = sum(cpu_seconds(e.pid) for e in engines)
    for engine in engines:
        engine.go()
    start = time.perf_counter()
    last, last_change = -1, start
    while True:
        try:
            acked, _ = await group_progress(bench.redis, keys.events, ENGINE_GROUP)
        except aioredis.ResponseError as exc:  # BUSY: a long script holds Redis
            if "BUSY" not in str(exc):
                raise
            bench.busy_replies += 1
            acked = last
        now = time.perf_counter()
        if acked != last:
            last, last_change = acked, now
        if acked >= total and await all_announced(bench.redis, keys.outboxes):
            last_change = time.perf_counter()
            break
        if now - start >= limit:
            break
        await asyncio.sleep(0.02)
    wall = max(now - start, 1e-9)
    nodes = [await sample_node(node) - before for node, before in zip(
        bench.nodes, nodes_before, strict=True)]
    drain = Drain(min(max(acked, 0), total), last_change - start,
                  sum(node.cpu_seconds for node in nodes) / wall,
                  (sum(cpu_seconds(e.pid) for e in engines) - engines_before) / wall,
                  nodes, wall)
    if readback and acked >= total:
        drain.readback = await _read_back(bench, keys, engines, start, limit, nodes_before,
                                          engines_before, total)
    return drain


async def _read_back(
    bench: Bench, keys: Keys, engines: list[ServiceProcess], start: float, limit: float,
    nodes_before: list[NodeSample], engines_before: float, total: int,
) -> Readback | None:
    """Wait (within ``limit`` from ``start``) until the engine group has read and acknowledged
    everything on the events stream and every outbox entry is announced; ``None`` if it did
    not happen in time."""
    while True:
        acked, outstanding = await group_progress(bench.redis, keys.events, ENGINE_GROUP)
        if not outstanding and await all_announced(bench.redis, keys.outboxes):
            break
        if time.perf_counter() - start >= limit:
            return None
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - start
    nodes = [await sample_node(node) - before for node, before in zip(
        bench.nodes, nodes_before, strict=True)]
    return Readback(seconds, nodes, sum(cpu_seconds(e.pid) for e in engines) - engines_before,
                    acked - total)


def webhook_automation(url: str) -> Automation:
    """An automation whose one action calls ``url`` (its trigger never matches bench events:
    the latency scenario writes its firings straight into the outbox)."""
    return Automation(
        name="bench-webhook", trigger=EventTrigger(expect={"bench.webhook.never"}),
        actions=[CallWebhook(url=url, payload={"automation": "{{ automation.name }}",
                                               "labels": "{{ labels }}"})],
    )


async def start_dispatcher(
    bench: Bench, prefix: str, automations: list[Automation], *, batch_size: int | None = None,
    partitions: int = 1,
) -> list[ServiceProcess]:
    """One dispatcher process with ``automations`` in its store, its group created at the
    start of every outbox."""
    for outbox in Keys(prefix, partitions).outboxes:
        await ensure_group(bench.redis, outbox, DISPATCH_GROUP)
    path = write_automations(prefix, automations)
    process = ServiceProcess(
        "bench.run_dispatcher",
        ["--redis-url", bench.redis_url, "--prefix", prefix, "--automations", str(path),
         *layout_arguments(bench, partitions),
         *(["--batch-size", str(batch_size)] if batch_size else [])],
        name=f"{prefix}-dispatcher")
    await process.start()
    return [process]
