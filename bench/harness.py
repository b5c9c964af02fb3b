"""Shared plumbing of every scenario: a private Redis, fresh key prefixes, stream progress, stats.

Every scenario gets a ``Bench``: it owns the Redis (started on a free loopback port unless the
user gave ``--redis-url``), hands out a fresh prefix per measurement so runs never see each
other's keys, and deletes those keys afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

import automations.engine
from automations.connection import connect_cluster, with_fast_packing
from automations.keys import Keys
from automations.settings import Settings
from bench.redis_server import RedisServer

Row = dict[str, Any]

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


class RedisProcess(RedisServer):
    """A throwaway ``redis-server`` in a temporary directory, removed on ``stop()``."""

    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="bench-redis-")))

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Options:
    quick: bool = False
    redis_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """What a scenario works with: options, a Redis URL, prefixes, a client and helpers.

    With ``nodes`` (every master's URL) the Redis is a cluster: ``redis`` is redis-py's
    cluster client (as the services use it), and ``nodes`` holds one plain client per master
    for what is measured per node (``INFO``)."""

    def __init__(self, options: Options, redis_url: str, *, nodes: Sequence[str] = ()) -> None:
        self.options = options
        self.quick = options.quick
        self.redis_url = redis_url
        self.cluster = bool(nodes)
        # Generous timeout: a long engine script can hold Redis for seconds (redis-py's default
        # of 5 s would turn that into an error in the benchmark instead of a figure).
        common: dict[str, Any] = {"decode_responses": False, "socket_timeout": 120}
        # Packing as the services' clients pack (``connect``): the producer and the bare
        # consumer are measured with the client the engine has.
        self.redis: aioredis.Redis = connect_cluster(redis_url, common) if self.cluster \
            else with_fast_packing(aioredis.Redis.from_url(redis_url, **common))
        self.node_urls = list(nodes) or [redis_url]
        self.nodes: list[aioredis.Redis] = [
            aioredis.Redis.from_url(url, **common) for url in nodes] or [self.redis]
        self._prefixes: list[str] = []
        self.busy_replies = 0  # BUSY answers seen while polling: a script held Redis > 5 s

    def new_prefix(self, name: str) -> str:
        prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        self._prefixes.append(prefix)
        return prefix

    def settings(self, prefix: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": self.redis_url, "prefix": prefix,
            "data_dir": CACHE_DIR / "data", "consumer_name": f"bench-{uuid.uuid4().hex[:6]}",
            "block_ms": 100, "events_maxlen": 10_000_000, "firings_maxlen": 10_000_000,
        }
        values.update(overrides)
        return Settings(**values)

    async def cleanup(self, prefix: str) -> None:
        """Delete the keys of ``prefix`` on every node (on a cluster one UNLINK per key: a
        node refuses a multi-key call over several slots)."""
        for node in self.nodes:
            batch: list[bytes] = []
            async for key in node.scan_iter(match=f"{prefix}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    await self._unlink(node, batch)
                    batch.clear()
            if batch:
                await self._unlink(node, batch)

    async def _unlink(self, node: aioredis.Redis, keys: list[bytes]) -> None:
        if not self.cluster:
            await node.unlink(*keys)
            return
        async with node.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.unlink(key)
            await pipe.execute()

    async def close(self) -> None:
        for prefix in self._prefixes:
            await self.cleanup(prefix)
            (CACHE_DIR / "data" / f"{prefix}-automations.json").unlink(missing_ok=True)
        if self.cluster:
            for node in self.nodes:
                await node.aclose()
        await self.redis.aclose()

    async def machine(self) -> Row:
        info = await self.redis.info("server")
        return {
            "cores": os.cpu_count(), "python": platform.python_version(),
            "redis_version": str(info.get("redis_version", "?")),
            "platform": platform.platform(),
        }


# -- stream progress ------------------------------------------------------------------------
async def group_progress(redis: aioredis.Redis, stream: str, group: str) -> tuple[int, int]:
    """``(acked, outstanding)`` of a consumer group: entries read and acknowledged, and entries
    not yet acknowledged (pending + never read). Needs Redis >= 7.0 (``entries-read``/``lag``)."""
    length = int(await redis.xlen(stream))
    try:
        groups = await redis.xinfo_groups(stream)
    except aioredis.ResponseError:
        return 0, length
    for info in groups:
        name = info.get("name")
        if name in (group, group.encode()):
            pending = int(info.get("pending") or 0)
            lag = info.get("lag")
            unread = int(lag) if lag is not None else 0
            outstanding = pending + unread
            return length - outstanding, outstanding
    return 0, length


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05
) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds passed; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def blocked_readers(redis: aioredis.Redis) -> int:
    """Clients blocked in XREADGROUP on this Redis: the consumers of the engine a scenario
    runs (one at a time) that have started and wait for entries."""
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


async def wait_blocked_readers(redis: aioredis.Redis, count: int, *, timeout: float) -> None:
    """Until ``count`` clients wait in XREADGROUP (a started engine, idle), or fail."""
    async def check() -> bool:
        return await blocked_readers(redis) >= count

    if not await wait_until(check, timeout=timeout, interval=0.01):
        raise TimeoutError(f"{count} blocked stream readers not seen in {timeout:g} s")


async def drain_group(
    redis: aioredis.Redis, stream: str, group: str, *, timeout: float, interval: float = 0.05
) -> tuple[int, float]:
    """Wait until a group has acknowledged everything (or ``timeout``); ``(acked, seconds)``.
    The time is that of the last observed progress, so an idle tail is not counted."""
    start = time.perf_counter()
    last_acked, last_change = -1, start
    deadline = start + timeout
    while True:
        acked, outstanding = await group_progress(redis, stream, group)
        now = time.perf_counter()
        if acked != last_acked:
            last_acked, last_change = acked, now
        if outstanding == 0 or now >= deadline:
            return acked, last_change - start
        await asyncio.sleep(interval)


async def reset_slowlog(redis: aioredis.Redis) -> None:
    await redis.config_set("slowlog-log-slower-than", 10_000)  # 10 ms
    await redis.slowlog_reset()


async def slowest_ms(redis: aioredis.Redis) -> float:
    """The longest single command (e.g. one engine script) since ``reset_slowlog``, in ms."""
    entries: Any = await redis.slowlog_get(128)
    return round(max((e["duration"] for e in entries), default=0) / 1000, 1)


# -- statistics -----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_figures(seconds: Sequence[float]) -> Row:
    """p50/p99/max in milliseconds, rounded for the table."""
    return {
        "samples": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 3),
        "p99_ms": round(percentile(seconds, 99) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3) if seconds else math.nan,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_cpu_seconds(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
OWN_COMMANDS = frozenset({"info", "slowlog", "config"})  # the benchmark's own probes


CALLED = re.compile(r"redis\.p?call\(\s*['\"](\w+)['\"]")
"""A command called in a script embedded in Python."""
QUOTED = re.compile(r"'([A-Z]+)'")
"""A command named in a Lua file: called directly, through a local alias (``rcall``) or a
helper (``batched('DEL', ...)``); the arguments in capitals (``NX``, ``MAXLEN``) name no
command, so they match nothing in ``INFO commandstats``."""


@cache
def scripted_commands() -> frozenset[str]:
    """The commands the engine's scripts call: INFO commandstats counts each of those calls
    again under its own name, on top of the script's time that includes it."""
    root = Path(automations.engine.__file__).parent
    found: set[str] = set()
    for path in root.glob("*.py"):
        found.update(name.lower() for name in CALLED.findall(path.read_text()))
    for path in root.glob("lua/*.lua"):
        found.update(name.lower() for name in QUOTED.findall(path.read_text()))
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One node's counters: CPU seconds (``INFO cpu``, user + system) and the microseconds
    of each command the clients sent (``INFO commandstats``; a script's inner calls are in
    its own time, so they are not counted twice)."""

    cpu_seconds: float
    commands: dict[str, float]

    def __sub__(self, before: NodeSample) -> NodeSample:
        return NodeSample(self.cpu_seconds - before.cpu_seconds, {
            name: usec - before.commands.get(name, 0.0) for name, usec in self.commands.items()})

    def __add__(self, other: NodeSample) -> NodeSample:
        names = self.commands.keys() | other.commands.keys()
        return NodeSample(self.cpu_seconds + other.cpu_seconds, {
            n: self.commands.get(n, 0.0) + other.commands.get(n, 0.0) for n in names})

    @property
    def command_usec(self) -> float:
        return sum(self.commands.values())

    @property
    def script_usec(self) -> float:
        return sum(usec for name, usec in self.commands.items() if name in SCRIPT_COMMANDS)

    def per_event(self, events: int) -> Row:
        """Microseconds an event: CPU, commands (the issue's "Redis us per event"), scripts."""
        def us(usec: float) -> float | None:
            return round(usec / events, 1) if events > 0 else None

        return {"redis_cpu_us_per_event": us(self.cpu_seconds * 1e6),
                "redis_us_per_event": us(self.command_usec),
                "script_us_per_event": us(self.script_usec)}

    def top_commands(self, count: int = 3) -> str:
        """The commands that took most of the time, with their shares: ``evalsha 80%, ...``."""
        total = self.command_usec
        ranked = sorted(self.commands.items(), key=lambda item: -item[1])[:count]
        return ", ".join(f"{name} {usec / total:.0%}" for name, usec in ranked) if total else ""


async def sample_node(redis: aioredis.Redis) -> NodeSample:
    cpu, stats = await redis.info("cpu"), await redis.info("commandstats")
    inner = scripted_commands()
    commands: dict[str, float] = {}
    for name, figures in stats.items():
        command = str(name).removeprefix("cmdstat_").partition("|")[0]
        if command not in inner and command not in OWN_COMMANDS and isinstance(figures, dict):
            commands[command] = commands.get(command, 0.0) + float(figures.get("usec", 0))
    return NodeSample(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def keys_for(prefix: str, partitions: int = 1) -> Keys:
    return Keys(prefix, partitions)


# -- typed stream reads (redis-py's stubs type replies as unions of everything) -------------
StreamEntry = tuple[bytes, dict[bytes, bytes]]


async def xread_after(
    redis: aioredis.Redis, stream: str, last: bytes | str, *, count: int = 1000, block: int = 100
) -> list[StreamEntry]:
    """Entries of ``stream`` after id ``last`` (blocking up to ``block`` ms)."""
    reply: Any = await redis.xread({stream: last}, count=count, block=block)
    return list(reply[0][1]) if reply else []


class StreamsTail:
    """The new entries of several streams (every partition's outbox), one XREAD for all (a
    single Redis: on a cluster the streams live in different slots)."""

    def __init__(self, redis: aioredis.Redis, streams: Sequence[str]) -> None:
        self.redis = redis
        self.last: dict[str, bytes | str] = dict.fromkeys(streams, b"0-0")

    async def read(self, *, count: int = 1000, block: int = 100) -> list[StreamEntry]:
        streams: dict[Any, Any] = dict(self.last)
        reply: Any = await self.redis.xread(streams, count=count, block=block)
        found: list[StreamEntry] = []
        for stream, entries in reply or []:
            if entries:
                name = stream.decode() if isinstance(stream, bytes) else str(stream)
                self.last[name] = entries[-1][0]
                found += entries
        return found


async def xreadgroup_new(
    redis: aioredis.Redis, stream: str, group: str, consumer: str, *, count: int = 1000
) -> list[StreamEntry]:
    """New entries for ``consumer`` of ``group`` (no blocking)."""
    reply: Any = await redis.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return list(reply[0][1]) if reply else []


async def xrange_after(
    redis: aioredis.Redis, stream: str, start: str, *, count: int = 5000
) -> list[StreamEntry]:
    """Up to ``count`` entries from ``start`` (``-`` or ``(<id>`` for "after")."""
    reply: Any = await redis.xrange(stream, min=start, count=count)
    return list(reply)
