"""A rolling maintenance: each master in turn hands its slots to its replica (``CLUSTER
FAILOVER``) while events flow through two engines. The checks are
``test_engine_migration``'s, with failovers for the slot moves: each counter window counts
every event exactly once, and each pair automation fires exactly once per resource."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from automations.keys import Keys
from automations.settings import Settings
from bench.redis_cluster import LocalCluster
from tests.cluster.test_engine_migration import Flow, run_with_migration
from tests.redis_cluster import replicated_cluster as replicated_cluster
from tests.redis_cluster import settings_for, wait_for_progress

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def replicated(replicated_cluster: LocalCluster, prefix: str,
               tmp_path: Path) -> tuple[LocalCluster, Settings]:
    settings = settings_for(replicated_cluster, prefix, tmp_path / "data").model_copy(
        update={"decision_log": False})
    return replicated_cluster, settings


def announced(cluster: LocalCluster, keys: Keys) -> Callable[[], int]:
    """How many entries the outboxes hold (the engines' firings), read from the masters
    that serve them now: it grows only while the engines evaluate."""
    where = [(cluster.owner(key_slot(outbox.encode())).port, outbox) for outbox in keys.outboxes]

    def total() -> int:
        found = 0
        for port, outbox in where:
            with cluster.client(port) as node:
                found += int(node.xlen(outbox))
        return found

    return total


async def test_each_master_fails_over_to_its_replica_while_engines_evaluate(
        replicated: tuple[LocalCluster, Settings]) -> None:
    cluster, settings = replicated
    first_masters = {server.port for server in cluster.servers[:cluster.masters]}

    def rolling_failover(flow: Flow, keys: Keys) -> None:
        flow.paced()
        for master in cluster.nodes():
            cluster.failover(master)
            flow.paced()  # events published to the new master
            wait_for_progress(announced(cluster, keys), "the engines")  # and evaluated there
        assert first_masters.isdisjoint(node.port for node in cluster.nodes())

    await run_with_migration(cluster, settings, rolling_failover)
