"""Real processes and real outages: SIGKILL mid-batch, SIGTERM drain, Redis restarting."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from automations.errors import BusUnavailable
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer
from automations.streams.entries import Entry
from automations.streams.publish import Publisher
from bench.redis_server import RedisServer
from tests.wait import acknowledged, logged, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("automations"))


def events(n: int) -> list[Event]:
    return [Event(event="e", resource={"prefect.resource.id": f"r{i}"}) for i in range(n)]


def spawn(procs: list[subprocess.Popen[str]], args: list[str], env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    procs.append(proc)
    return proc


async def published(publisher: Publisher, batch: list[Event]) -> bool:
    """Publish ``batch``: a check for ``wait_until`` that retries it while Redis is away."""
    await publisher.publish(batch)
    return True


def wait_for_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # pytest-timeout guards a hang
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.stderr else "")
    return line


async def test_entries_of_a_killed_consumer_are_reclaimed_by_another(
    redis: aioredis.Redis, settings: Settings, keys: Keys, redis_url: str, prefix: str,
    procs: list[subprocess.Popen[str]],
) -> None:
    published = events(5)
    await Publisher(redis, settings).publish(published)
    doomed = spawn(procs, [sys.executable, "-m", "tests.reliability.consumer_proc", "hang",
                           redis_url, prefix])
    assert wait_for_line(doomed, "batch") == "batch 5\n"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    info: Any = await redis.xpending(keys.events, "engine")
    assert info["pending"] == 5

    got: list[Entry] = []

    async def handler(entries: list[Entry]) -> None:
        got.extend(entries)

    rescuer = StreamConsumer(redis, settings, stream=keys.events, group="engine",
                             handler=handler, dead_stream=keys.dead(keys.events))
    async with anyio.create_task_group() as tg:
        tg.start_soon(rescuer.run)
        await wait_until(lambda: len(got) >= 5)
        rescuer.stop()
    assert [e.fields[b"id"] for e in got] == [str(e.id).encode() for e in published]
    assert all(e.deliveries == 2 for e in got)
    info = await redis.xpending(keys.events, "engine")
    assert info["pending"] == 0


async def test_sigterm_drains_the_batch_in_hand_and_exits_0(
    redis: aioredis.Redis, settings: Settings, keys: Keys, redis_url: str, prefix: str,
    procs: list[subprocess.Popen[str]],
) -> None:
    proc = spawn(procs, [sys.executable, "-m", "tests.reliability.consumer_proc", "serve",
                         redis_url, prefix])
    await Publisher(redis, settings).publish(events(7))
    wait_for_line(proc, "batch 7")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert await redis.get(f"{prefix}:handled") == b"7"  # the handler finished its batch
    info: Any = await redis.xpending(keys.events, "engine")
    assert info["pending"] == 0  # and the batch was acked
    assert "SIGTERM received" in err


async def test_automations_serve_exits_0_on_sigterm(
    redis: aioredis.Redis, settings: Settings, keys: Keys, redis_url: str, prefix: str,
    procs: list[subprocess.Popen[str]],
) -> None:
    await Publisher(redis, settings).publish(events(3))
    proc = spawn(procs, [EXE, "serve", "--only", "engine"],
                 env={"AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix,
                      "AUTOMATIONS_BLOCK_MS": "100"})
    await wait_until(lambda: acknowledged(redis, keys.events, ENGINE_GROUP), timeout=20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "serving engine" in err


async def test_consumer_survives_a_redis_restart(
    own_redis: RedisServer, settings: Settings, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"redis_url": own_redis.url})
    client = aioredis.Redis.from_url(own_redis.url, socket_connect_timeout=1)
    caplog.set_level(logging.INFO)  # the recovery is a routine INFO line
    got: list[bytes] = []

    async def handler(entries: list[Entry]) -> None:
        got.extend(e.fields[b"id"] for e in entries)

    consumer = StreamConsumer(client, settings, stream=keys.events, group="engine",
                              handler=handler, dead_stream=keys.dead(keys.events))
    publisher = Publisher(client, settings)
    before, after = events(3), events(4)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await publisher.publish(before)
            await wait_until(lambda: len(got) >= 3)
            await anyio.to_thread.run_sync(own_redis.stop)  # no persistence: stream is gone
            await logged(caplog, "Redis unreachable")
            # Nothing to wait for: the reconnect attempts are silent; this is time for several.
            await anyio.sleep(0.6)
            await anyio.to_thread.run_sync(own_redis.start)
            # the publisher's pooled connection is broken once, then fine
            await wait_until(lambda: published(publisher, after), timeout=15,
                             tolerate=(BusUnavailable,))
            await wait_until(lambda: len(got) >= 7)
            consumer.stop()
    finally:
        await client.aclose()
    assert got[3:] == [str(e.id).encode() for e in after]
    assert caplog.text.count("Redis unreachable") == 1  # reads and handler: one outage
    [up] = [r for r in caplog.records if "Redis reachable again" in r.message]
    assert up.levelno == logging.INFO
