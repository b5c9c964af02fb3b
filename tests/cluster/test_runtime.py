"""The runtime on the cluster: deployments (transactions), the scheduler, flow-run transitions
(the compare-and-set script that also publishes the state event), promotion of due runs, the
crash sweep, and a worker running real flows whose processes publish through the cluster
client. The single-Redis suite's deployment and worker tests run here too, unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from automations.keys import Keys
from automations.runtime.deployments import Deployment, DeploymentStore
from automations.runtime.flow_runs import FlowRunStore, Refused, build_flow_run
from automations.runtime.states import StateType
from automations.settings import Settings
from tests.runtime.conftest import names, read_events
from tests.runtime.test_deployments import (
    test_catch_up_after_an_outage_is_bounded as test_catch_up_after_an_outage_is_bounded,
)
from tests.runtime.test_deployments import (
    test_paused_deployment_makes_no_runs_and_resumes_without_backlog as test_paused_deployment_makes_no_runs_and_resumes_without_backlog,  # noqa: E501
)
from tests.runtime.test_deployments import (
    test_store_apply_is_an_upsert_by_name as test_store_apply_is_an_upsert_by_name,
)
from tests.runtime.test_deployments import (
    test_two_schedulers_create_each_run_once as test_two_schedulers_create_each_run_once,
)
from tests.runtime.test_worker import (
    test_a_non_utf8_run_id_is_dead_lettered_without_holding_up_its_batch as test_a_non_utf8_run_id_is_dead_lettered_without_holding_up_its_batch,  # noqa: E501
)
from tests.runtime.test_worker import (
    test_a_run_is_claimed_once_even_if_queued_twice as test_a_run_is_claimed_once_even_if_queued_twice,  # noqa: E501
)
from tests.runtime.test_worker import (
    test_failing_flow_and_bad_parameters_end_failed as test_failing_flow_and_bad_parameters_end_failed,  # noqa: E501
)
from tests.runtime.test_worker import (
    test_worker_runs_a_deployment_to_completion as test_worker_runs_a_deployment_to_completion,
)


async def test_flow_run_transitions_publish_their_state_events(
        redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    [(_, dep)] = await DeploymentStore(redis, keys).apply([Deployment(name="d",
                                                                      entrypoint="m:f")])
    store = FlowRunStore(redis, settings, keys)
    later = datetime.now(UTC) + timedelta(seconds=30)
    run, created = await store.create(build_flow_run(dep, {}, start=later))
    assert created and (await store.create(run))[1] is False  # at most once per id
    assert await redis.zcard(keys.flow_runs_due) == 1 and await redis.xlen(keys.runs) == 0
    assert await store.promote_due(later + timedelta(seconds=1)) == 1
    assert await redis.xlen(keys.runs) == 1

    pending = await store.transition(run.id, lambda r: r.state.of(StateType.PENDING),
                                     lease_ms=60_000)
    assert pending is not None and await redis.zcard(keys.flow_runs_active) == 1
    await redis.delete(keys.flow_run_lease(str(run.id)))  # its worker died
    [crashed] = await store.sweep_crashed()
    assert crashed.state.type == StateType.CRASHED
    with pytest.raises(Refused):
        await store.propose(run.id, StateType.COMPLETED)
    assert (await store.propose(run.id, StateType.SCHEDULED, force=True)).state.type \
        == StateType.SCHEDULED
    assert names(await read_events(redis, keys)) == [
        "prefect.flow-run.Scheduled", "prefect.flow-run.Pending", "prefect.flow-run.Crashed",
        "prefect.flow-run.Scheduled"]


async def test_deployments_pause_resume_and_delete(redis: aioredis.Redis, keys: Keys) -> None:
    store = DeploymentStore(redis, keys)
    [(_, dep)] = await store.apply([Deployment(name="d", entrypoint="m:f",
                                               schedules=[{"interval": 60}])])
    assert (await store.set_paused(dep.id, True)).paused
    assert not (await store.set_paused(dep.id, False)).paused
    assert await redis.hlen(keys.schedule_cursors) == 1
    await store.delete("d")
    assert await redis.hlen(keys.deployments) == 0
    assert await redis.hlen(keys.deployment_names) == 0
