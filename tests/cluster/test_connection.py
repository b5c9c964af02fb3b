"""The cluster client: built from any node's URL, refused with a clear message when the
settings cannot work, an unreachable cluster waited for like one Redis, and the redis-py
features the services rely on (same-slot transactions with WATCH, scripts routed by their
first key) checked on the installed version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, WatchError
from typer.testing import CliRunner

from automations.cli.app import app
from automations.cli.common import EXIT_USER_ERROR
from automations.command_packing import FastPacking
from automations.connection import (
    CONNECTION_ERRORS,
    ClusterUnavailable,
    NotACluster,
    connect,
    connect_sync,
)
from automations.dispatch.ledger import Begun, Ledger, Start
from automations.dispatch.retries import RetryQueue
from automations.errors import AutomationsError, BusUnavailable
from automations.keys import Keys
from automations.service import wait_for_redis
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import aemit, emit
from bench.redis_cluster import LocalCluster
from bench.redis_server import RedisServer, free_port


async def test_any_node_finds_every_master(redis_cluster: LocalCluster,
                                           settings: Settings) -> None:
    for url in redis_cluster.urls:
        client = connect(settings.model_copy(update={"redis_url": url}))
        try:
            await client.ping()
            nodes = client.get_nodes()  # type: ignore[attr-defined]
            assert sorted(n.port for n in nodes) == sorted(n.port for n in redis_cluster.nodes())
        finally:
            await client.aclose()


async def test_keys_of_every_partition_land_on_their_own_master(
        redis: aioredis.Redis, keys: Keys, redis_cluster: LocalCluster) -> None:
    """The partition tags spread over the slot space: with 3 partitions on 3 masters, one
    partition per master."""
    owners = {redis_cluster.owner(key_slot(p.firings.encode())).port
              for p in keys.all_partitions}
    assert len(owners) == 3
    for part in keys.all_partitions:
        await redis.xadd(part.firings, {b"data": b"x"})
    assert [await redis.xlen(p.firings) for p in keys.all_partitions] == [1, 1, 1]


async def test_same_slot_transactions_and_watch_work_cross_slot_is_refused(
        redis: aioredis.Redis, keys: Keys) -> None:
    """redis-py's async cluster pipeline runs MULTI/EXEC (and WATCH) when every key shares a
    slot: the store and the deployments rely on it."""
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(keys.automations, keys.automation_names)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(keys.automations, "a", "1")
        pipe.hset(keys.automation_names, "n", "a")
        assert await pipe.execute() == [1, 1]
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(keys.automations)
        await redis.hset(keys.automations, "a", "2")  # changed under the watch
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(keys.automations, "a", "3")
        with pytest.raises(WatchError):
            await pipe.execute()
    with pytest.raises(RedisClusterException):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.partition(1).deadlines, 1)
            pipe.set(keys.automations, 1)
            await pipe.execute()


async def test_a_script_runs_on_the_master_of_its_first_key(
        redis: aioredis.Redis, keys: Keys) -> None:
    script = redis.register_script("return redis.call('EXISTS', KEYS[1])")
    for part in keys.all_partitions:
        await redis.set(part.deadlines, 1)
        assert await script(keys=[part.deadlines]) == 1  # found: it ran where the key is
    await redis.script_flush()  # NOSCRIPT on every master: loaded again where needed
    assert [await script(keys=[p.deadlines]) for p in keys.all_partitions] == [1, 1, 1]


def test_sync_client_publishes_with_emit(settings: Settings, redis_cluster: LocalCluster,
                                         keys: Keys) -> None:
    emit("cluster.sync", resource="thing.1", settings=settings)
    client = connect_sync(settings)
    try:
        assert client.xlen(keys.events) == 1
    finally:
        client.close()


async def test_async_emit_uses_the_cluster_client(settings: Settings, keys: Keys,
                                                  redis: aioredis.Redis) -> None:
    event = await aemit("cluster.async", resource="thing.1", settings=settings)
    entries: Any = await redis.xrange(keys.events)
    assert [fields[b"id"] for _, fields in entries] == [str(event.id).encode()]


def test_sentinels_and_a_cluster_are_refused_together(settings: Settings) -> None:
    both = settings.model_copy(update={"redis_sentinels": "127.0.0.1:26379"})
    with pytest.raises(AutomationsError, match="both set"):
        connect(both)
    with pytest.raises(AutomationsError, match="both set"):
        connect_sync(both)


def test_a_cluster_needs_a_url_and_database_0(settings: Settings) -> None:
    with pytest.raises(AutomationsError, match="needs AUTOMATIONS_REDIS_URL"):
        connect(settings.model_copy(update={"redis_url": None}))
    with pytest.raises(AutomationsError, match="database 0 only"):
        connect(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/2"}))
    with pytest.raises(AutomationsError, match="not a unix socket"):
        connect(settings.model_copy(update={"redis_url": "unix://redis.sock"}))


async def test_a_plain_redis_named_as_a_cluster_is_a_clear_error(
        settings: Settings, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "plain")
    server.start()
    try:
        client = connect(settings.model_copy(update={"redis_url": server.url}))
        with pytest.raises(NotACluster, match="not a cluster node"):
            await client.ping()
        await client.aclose()
        with pytest.raises(NotACluster):
            connect_sync(settings.model_copy(update={"redis_url": server.url}))
    finally:
        server.stop()


async def test_an_unreachable_cluster_is_an_outage(settings: Settings) -> None:
    """Waited for with the usual backoff, then the usual "cannot reach Redis" (exit 4)."""
    gone = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                       "startup_timeout_s": 0.5})
    client = connect(gone)
    with pytest.raises(ClusterUnavailable) as caught:
        await client.ping()
    assert isinstance(caught.value, CONNECTION_ERRORS)
    with pytest.raises(BusUnavailable, match="cannot reach Redis"):
        await wait_for_redis(client, "a cluster", gone, anyio.Event())
    await client.aclose()
    with pytest.raises(BusUnavailable):
        emit("x", resource="y", settings=gone)


async def test_an_acl_user_with_the_documented_rights_runs_on_the_cluster(
        tmp_path: Path, settings: Settings) -> None:
    """The single-Redis service ACL plus ``+cluster|slots`` (the client reads the slot map);
    without it, the error says so."""
    rights = (f"~{settings.prefix}:* resetchannels +@read +@write +@stream +@scripting "
              f"+@connection +@transaction -@dangerous +info")
    users = ["--user", "svc", "on", ">pw", *rights.split(), "+cluster|slots",
             "--user", "bare", "on", ">pw", *rights.split()]
    with LocalCluster(tmp_path / "acl", extra=users) as cluster:
        port = cluster.servers[0].port
        svc = settings.model_copy(update={"redis_url": f"redis://svc:pw@127.0.0.1:{port}/0"})
        client = connect(svc)
        try:
            keys = Keys.from_settings(svc)
            await aemit("acl.ok", resource="thing.1", redis=client, settings=svc)
            assert await Ledger(client, keys, svc, RetryQueue(client, keys)).begin(
                [Start("f:0")], "tok") == [Begun.RUN]
            assert await AutomationStore(client, keys).snapshot() == ([], "0-0")
        finally:
            await client.aclose()
        bare = connect(svc.model_copy(update={"redis_url": f"redis://bare:pw@127.0.0.1:{port}/0"}))
        with pytest.raises(NotACluster, match=r"its ACL needs \+cluster\|slots"):
            await bare.ping()
        await bare.aclose()


def test_serve_on_a_cluster_without_a_url_exits_with_the_reason(tmp_path: Path) -> None:
    """No embedded Redis is started for it (that would not be a cluster)."""
    env = {"AUTOMATIONS_REDIS_CLUSTER": "true", "AUTOMATIONS_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(app, ["serve", "--only", "scheduler"], env=env)
    assert result.exit_code == EXIT_USER_ERROR, (result.stdout, result.stderr)
    assert "needs AUTOMATIONS_REDIS_URL" in result.stderr
    assert not (tmp_path / "data").exists()


async def test_cluster_connections_pack_with_the_fast_packer(redis: aioredis.Redis,
                                                             keys: Keys) -> None:
    """Every master's connections use ``automations.command_packing`` (a command of many
    arguments and one of a large value go through it)."""
    for part in keys.all_partitions:
        ids = [await redis.xadd(part.firings, {b"data": b"x" * 7000}) for _ in range(50)]
        await redis.xgroup_create(part.firings, "g", id="0")
        await redis.xreadgroup("g", "c", {part.firings: ">"}, count=50)
        assert await redis.xack(part.firings, "g", *ids) == 50
    nodes = redis.get_nodes()  # type: ignore[attr-defined]
    assert nodes and all(issubclass(n.connection_class, FastPacking) for n in nodes)
