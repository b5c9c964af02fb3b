"""Every test here runs on a real 3-master Redis Cluster: the suite's ``settings``, ``keys``,
``redis`` and ``redis_url`` fixtures are the cluster's, so the shared fixtures built on them
(``store``, ``dispatcher``, ``h``...) run there too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis.asyncio as aioredis
from typer.testing import Result

from automations.keys import Keys
from automations.settings import Settings
from bench.redis_cluster import LocalCluster
from tests.automations.conftest import cli as cli
from tests.redis_cluster import cluster_prefix as cluster_prefix
from tests.redis_cluster import cluster_redis as cluster_redis
from tests.redis_cluster import cluster_settings as cluster_settings
from tests.redis_cluster import own_cluster as own_cluster
from tests.redis_cluster import redis_cluster as redis_cluster

Invoke = Callable[..., Result]


@pytest.fixture
def prefix(cluster_prefix: str) -> str:
    return cluster_prefix


@pytest.fixture
def redis_url(redis_cluster: LocalCluster) -> str:
    return redis_cluster.url


@pytest.fixture
def settings(cluster_settings: Settings) -> Settings:
    return cluster_settings


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys.from_settings(settings)


@pytest.fixture
async def redis(cluster_redis: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    yield cluster_redis


@pytest.fixture
def env(settings: Settings, redis_cluster: LocalCluster) -> Iterator[dict[str, str]]:
    """The CLI's environment: the cluster named by its last node (any node will do)."""
    yield {"AUTOMATIONS_REDIS_CLUSTER": "true", "AUTOMATIONS_REDIS_URL": redis_cluster.urls[-1],
           "AUTOMATIONS_PREFIX": settings.prefix,
           "AUTOMATIONS_PARTITIONS": str(settings.partitions),
           "AUTOMATIONS_DATA_DIR": str(settings.data_dir), "COLUMNS": "250"}


