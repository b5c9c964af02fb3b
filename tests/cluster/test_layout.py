"""The installation's layout (``automations.layout``): the partition count recorded at first
start and enforced after (on one Redis and on the cluster, and as ``serve``'s exit), and an
installation of the previous layout moved to the hash-tagged keys on a single Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.cli.common import EXIT_USER_ERROR
from automations.errors import LayoutMismatch
from automations.keys import Keys
from automations.layout import PARTITIONS_FIELD, ensure_layout
from bench.redis_cluster import LocalCluster
from bench.redis_server import RedisServer


@pytest.fixture
async def single(redis_server: RedisServer, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """The suite's single Redis (not the cluster), cleaned of this test's prefix."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    found = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if found:
        await client.delete(*found)
    await client.aclose()


@pytest.mark.parametrize("where", ["single", "cluster"])
async def test_the_partition_count_is_fixed_at_first_start(
        where: str, single: aioredis.Redis, redis: aioredis.Redis, prefix: str) -> None:
    client = single if where == "single" else redis
    await ensure_layout(client, Keys(prefix, 8))
    await ensure_layout(client, Keys(prefix, 8))  # every later start agrees
    assert await client.hget(Keys(prefix, 8).layout, PARTITIONS_FIELD) == b"8"
    with pytest.raises(LayoutMismatch) as refused:
        await ensure_layout(client, Keys(prefix, 4))
    assert str(refused.value).startswith(
        "this installation has 8 partitions, fixed at install; AUTOMATIONS_PARTITIONS=4")
    assert await client.hget(Keys(prefix, 8).layout, PARTITIONS_FIELD) == b"8"


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_serve_with_another_partition_count_exits_with_the_reason(
        where: str, redis_server: RedisServer, redis_cluster: LocalCluster,
        prefix: str) -> None:
    url = redis_server.url if where == "single" else redis_cluster.urls[1]
    env = {"AUTOMATIONS_REDIS_URL": url, "AUTOMATIONS_REDIS_CLUSTER": str(where == "cluster"),
           "AUTOMATIONS_PREFIX": prefix, "AUTOMATIONS_PARTITIONS": "4",
           "AUTOMATIONS_STARTUP_TIMEOUT_S": "5"}
    layout = Keys(prefix).layout
    client: Any = (redis.Redis.from_url(url) if where == "single"
                   else redis.RedisCluster.from_url(url))
    try:
        client.hset(layout, PARTITIONS_FIELD, 8)
        result = CliRunner().invoke(app, ["serve", "--only", "scheduler"], env=env)
        assert result.exit_code == EXIT_USER_ERROR, (result.stdout, result.stderr)
        assert "this installation has 8 partitions, fixed at install" in result.stderr
    finally:
        client.delete(layout)
        client.close()


async def previous_layout(client: aioredis.Redis, p: str) -> None:
    """What an installation of the previous layout holds: the store, runtime records, streams
    with consumer groups, markers with TTLs, dead letters and window state."""
    await client.hset(f"{p}:automations", "a1", "{}")
    await client.hset(f"{p}:automations:names", "one", "a1")
    await client.xadd(f"{p}:automations:log", {"kind": "upsert"})
    await client.hset(f"{p}:deployments", "d1", "{}")
    await client.hset(f"{p}:blocks", "b", "{}")
    await client.hset(f"{p}:flow-runs", "r1", "{}")
    await client.set(f"{p}:flow-runs:lease:r1", "w", ex=600)
    await client.xadd(f"{p}:events", {"data": "e1"})
    await client.xgroup_create(f"{p}:events", "engine", id="0")
    await client.xadd(f"{p}:firings", {"data": "f1"})
    await client.xgroup_create(f"{p}:firings", "dispatch", id="0")
    await client.xadd(f"{p}:dead:events", {"reason": "x"})
    await client.xadd(f"{p}:dead:firings", {"reason": "y"})
    for n in range(3):
        await client.set(f"{p}:done:f{n}:0", "done", ex=600)
    await client.zadd(f"{p}:actions:retries", {"f9:0": 1.0})
    await client.hset(f"{p}:bucket:a1:t:k", "count", 2)  # window state: not moved
    await client.set(f"{p}:seen:e1", 1)


async def test_a_previous_layout_installation_moves_to_the_new_keys(
        single: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    await previous_layout(single, prefix)
    keys = Keys(prefix, 2)
    await single.xadd(keys.runs, {"id": "r0"})  # the new name in use already: nothing lost
    await single.xadd(f"{prefix}:runs", {"id": "old"})
    with caplog.at_level(logging.WARNING, logger="automations.layout"):
        await ensure_layout(single, keys)

    assert await single.hget(keys.automations, "a1") == b"{}"
    assert await single.hget(keys.automation_names, "one") == b"a1"
    assert await single.xlen(keys.automations_log) == 1
    assert await single.hlen(keys.deployments) == await single.hlen(keys.blocks) == 1
    assert await single.hlen(keys.flow_runs) == 1
    assert 0 < await single.ttl(keys.flow_run_lease("r1")) <= 600
    groups: Any = await single.xinfo_groups(keys.events)
    assert [g["name"] for g in groups] == [b"engine"]  # the stream kept its consumer group
    outbox: Any = await single.xinfo_groups(keys.partition(0).firings)
    assert [g["name"] for g in outbox] == [b"dispatch"]
    assert await single.xlen(keys.dead("events")) == await single.xlen(keys.dead("firings")) == 1
    assert [0 < await single.ttl(keys.done(f"f{n}:0")) <= 600 for n in range(3)] == [True] * 3
    assert await single.zcard(keys.action_retries) == 1
    assert await single.exists(f"{prefix}:bucket:a1:t:k", f"{prefix}:seen:e1") == 2
    assert await single.xlen(f"{prefix}:runs") == 1 and await single.xlen(keys.runs) == 1

    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "moved this installation" in text and "automations:names" in text
    assert "3 done:*" in text and "window state" in text and "starts empty" in text
    assert "kept (the new key existed already): runs" in text
    caplog.clear()
    await ensure_layout(single, keys)  # recorded: never again
    assert not caplog.records


async def test_a_new_installation_moves_nothing_and_says_nothing(
        single: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="automations.layout"):
        await ensure_layout(single, Keys(prefix, 3))
    assert not caplog.records
    assert await single.hget(Keys(prefix, 3).layout, PARTITIONS_FIELD) == b"3"
