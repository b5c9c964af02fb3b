"""The engine-versus-reference property test on a real 3-master Redis Cluster: two engines
taking turns, the automations spread over three partitions (one per master), every script
call declaring its keys."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings

from bench.redis_cluster import LocalCluster
from tests.triggers.test_property import Step, _automations, _run, automation_lists, steps

CLUSTER_EXAMPLES = 150


@settings(max_examples=CLUSTER_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(trigger_list=automation_lists, specs=steps)
def test_engine_matches_reference_on_a_cluster(
    redis_cluster: LocalCluster, trigger_list: list[dict[str, Any]], specs: list[Step]
) -> None:
    asyncio.run(_run(redis_cluster.url, _automations(trigger_list), specs, engines=2,
                     partitions=3, cluster=True))
