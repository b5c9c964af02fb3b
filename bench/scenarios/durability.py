"""``durability``: acknowledged writes lost when Redis dies, per persistence mode.

For each mode a private ``redis-server`` takes pipelined XADDs of ~770-byte events as fast as
one client sends them; after a random 2 to 4 s (RDB: 8 to 13 s) it is SIGKILLed, restarted on
the same directory, and the stream is counted. ``lost`` = entries whose XADD was acknowledged but
which are not there after the restart; ``loss_window_ms`` = lost / write rate. Modes: AOF with
``appendfsync always`` and ``everysec`` (the embedded server's and compose's), and RDB
snapshots only (``save 5 1``: a snapshot at most every 5 s while writes come in). A SIGKILL
of the process keeps what Redis wrote to the AOF file (it is in the kernel's page cache); what
``everysec`` can lose on top, up to about a second, needs the machine itself to die, which a
benchmark cannot do: the README states both.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench.harness import Bench, Row
from bench.redis_server import RedisServer
from bench.workload import build_events, encode

MODES: dict[str, tuple[list[str], tuple[float, float]]] = {
    "aof-always": (["--appendonly", "yes", "--appendfsync", "always"], (2, 4)),
    "aof-everysec": (["--appendonly", "yes", "--appendfsync", "everysec"], (2, 4)),
    # killed after the first snapshots, anywhere between two of them
    "rdb-only (save 5 1)": (["--save", "5 1"], (8, 13)),
}
CHUNK = 200
STREAM = "durability:events"


class _Server(RedisServer):
    """A RedisServer whose persistence arguments come last (they override ``--save ""``)."""

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None


async def write_until_killed(server: _Server, payload: list[tuple[bytes, bytes]],
                             kill_after: float) -> tuple[int, float]:
    """Acknowledged XADDs until the server is killed; (acknowledged, seconds written)."""
    client = aioredis.Redis.from_url(server.url, socket_timeout=5)
    acknowledged, at = 0, 0
    started = time.monotonic()
    killer = asyncio.get_running_loop().call_later(kill_after, server.kill)
    try:
        while True:
            async with client.pipeline(transaction=False) as pipe:
                for event_id, data in payload[at:at + CHUNK]:
                    pipe.xadd(STREAM, {b"data": data, b"id": event_id})
                try:
                    replies = await pipe.execute()
                except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                    break
            acknowledged += len(replies)
            at = (at + CHUNK) % (len(payload) - CHUNK)
    finally:
        killer.cancel()
        await client.aclose()
    return acknowledged, time.monotonic() - started


async def trial(mode: str, args: list[str], kill_window: tuple[float, float],
                payload: list[tuple[bytes, bytes]], rng: random.Random) -> Row:
    directory = Path(tempfile.mkdtemp(prefix="bench-durability-"))
    server = _Server(directory, extra=args)
    server.start()
    try:
        acknowledged, seconds = await write_until_killed(server, payload,
                                                       rng.uniform(*kill_window))
        server.start()  # same port, same directory: it loads what it persisted
        client = aioredis.Redis.from_url(server.url)
        deadline = time.monotonic() + 30
        while True:  # a large AOF takes a moment to load
            try:
                survived = int(await client.xlen(STREAM))
                break
            except aioredis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await client.aclose()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    rate = acknowledged / seconds
    lost = max(acknowledged - survived, 0)
    return {"scenario": "durability", "mode": mode, "acknowledged": acknowledged,
            "survived": survived, "lost": lost, "writes_per_second": round(rate),
            "loss_window_ms": round(1000 * lost / rate, 1)}


async def run(bench: Bench) -> list[Row]:
    payload = encode(build_events(2_000)[0])
    rng = random.Random(5)
    trials = 1 if bench.quick else 3
    rows = []
    for mode, (args, kill_window) in MODES.items():
        results = [await trial(mode, args, kill_window, payload, rng) for _ in range(trials)]
        worst = max(results, key=lambda row: row["lost"])
        rows.append({**worst, "trials": trials,
                     "lost_per_trial": ", ".join(str(r["lost"]) for r in results)})
    return rows
