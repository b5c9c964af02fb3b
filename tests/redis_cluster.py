"""Fixtures of a real 3-master Redis Cluster on loopback ports (``bench.redis_cluster``), for
any test directory: import them into a ``conftest.py``
(``from tests.redis_cluster import redis_cluster as redis_cluster``, and so on).

``redis_cluster`` is shared by the session (tests keep apart by key prefix, as on the single
Redis); ``own_cluster`` is a private one for a test that moves slots in ways others must not
see, or stops nodes; ``replicated_cluster`` a private one with a replica per master (for
failovers). ``cluster_settings`` are the suite's usual fast settings pointed at the cluster
(``AUTOMATIONS_REDIS_CLUSTER=true``, one node's URL, one partition per master), and
``cluster_redis`` the services' own client for them (``automations.connection.connect``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from automations.connection import connect
from automations.settings import Settings
from bench.redis_cluster import LocalCluster
from tests.quick_settings import quick_settings

MASTERS = 3


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), MASTERS) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster", MASTERS) as cluster:
        yield cluster


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A private cluster whose masters have a replica each, for failovers."""
    with LocalCluster(tmp_path / "cluster", MASTERS, replicas=1) as cluster:
        yield cluster


def settings_for(cluster: LocalCluster, prefix: str, data_dir: Path) -> Settings:
    """The test suite's quick settings on ``cluster`` (its first node's URL)."""
    return quick_settings(cluster.url, prefix, data_dir, redis_cluster=True,
                          partitions=MASTERS)


@pytest.fixture
def cluster_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cluster_settings(redis_cluster: LocalCluster, cluster_prefix: str,
                     tmp_path: Path) -> Settings:
    return settings_for(redis_cluster, cluster_prefix, tmp_path / "data")


async def forget(client: aioredis.Redis, prefix: str) -> None:
    """Delete every key of ``prefix`` on every master (SCAN visits them all): one DEL per key
    (keys of different slots), pipelined."""
    found = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for first in range(0, len(found), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for key in found[first:first + 1000]:
                pipe.delete(key)
            await pipe.execute()


@pytest.fixture
async def cluster_redis(cluster_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect(cluster_settings)
    yield client
    await forget(client, cluster_settings.prefix)
    await client.aclose()


PACE_TIMEOUT_S = 30.0


def wait_for_progress(progress: Callable[[], int], what: str,
                      timeout_s: float = PACE_TIMEOUT_S) -> None:
    """In a migration thread, between two steps: block until ``progress()`` moves (the
    traffic acted on the half-moved slot), or fail with ``what`` stalled."""
    seen = progress()
    deadline = time.monotonic() + timeout_s
    while progress() == seen:
        assert time.monotonic() < deadline, f"{what} stalled during the migration"
        time.sleep(0.002)
