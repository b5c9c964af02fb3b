"""run-/pause-/resume-deployment, cancel-/change-flow-run-state through the real dispatcher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from actions.models import (
    CancelFlowRun,
    ChangeFlowRunState,
    PauseDeployment,
    ResumeDeployment,
    RunDeployment,
)
from automations.dispatch.dispatcher import Dispatcher
from automations.events import Event
from automations.keys import Keys
from automations.runtime.deployments import Deployment, DeploymentStore
from automations.runtime.flow_runs import FlowRun, FlowRunStore, build_flow_run
from automations.runtime.states import State, StateType
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, disk_event, fire, stored
from tests.runtime.conftest import read_events


@pytest.fixture
async def dispatcher(redis: aioredis.Redis, settings: Settings,
                     keys: Keys) -> AsyncIterator[Dispatcher]:
    fast = settings.model_copy(update={"action_max_attempts": 1})
    async with Dispatcher(redis, fast, ports=build_ports(redis, fast, keys), keys=keys) as d:
        yield d


@pytest.fixture
async def deployment(redis: aioredis.Redis, keys: Keys) -> Deployment:
    dep = Deployment(name="report", entrypoint="flows.py:report", flow_name="report",
                     parameters={"fmt": "pdf"})
    [(_, stored_dep)] = await DeploymentStore(redis, keys).apply([dep])
    return stored_dep


async def _runs(redis: aioredis.Redis, settings: Settings) -> list[FlowRun]:
    return await FlowRunStore(redis, settings).all()


async def test_run_deployment_by_name_with_templated_parameters(
    redis: aioredis.Redis, keys: Keys, settings: Settings, dispatcher: Dispatcher,
    deployment: Deployment,
) -> None:
    parameters: dict[str, Any] = {
        "host": "{{ event.resource.name }}",
        "free": "{{ event.payload.free_mb }}",
        "line": "free: {{ event.payload.free_mb }} MB",
        "raw": {"__prefect_kind": "none", "value": "{{ kept }}"},
        "parsed": {"__prefect_kind": "json", "value": '{"a": [1, 2]}'},
    }
    a, = await stored(AutomationStore(redis, keys),
                      automation(RunDeployment(deployment="report", parameters=parameters)))
    await fire(redis, keys, a, disk_event("host.db1", free_mb=12))
    await dispatcher.drain()
    [run] = await _runs(redis, settings)
    assert run.parameters == {"fmt": "pdf", "host": "db1", "free": 12, "line": "free: 12 MB",
                              "raw": "{{ kept }}", "parsed": {"a": [1, 2]}}
    assert run.creator == {"kind": "automation", "id": str(a.id), "name": a.name}
    assert run.state.type == StateType.SCHEDULED
    assert await redis.xlen(keys.runs) == 1
    scheduled = next(e for e in await read_events(redis, keys)
                     if e.event == "prefect.flow-run.Scheduled")
    creator = scheduled.resource_in_role("creator")
    assert creator is not None
    assert creator["prefect.resource.id"] == f"prefect.automation.{a.id}"
    [executed] = [e for e in await action_events(redis, keys)
                  if e["event"] == "prefect.automation.action.executed"]
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in executed["related"]}
    assert roles["flow-run"] == f"prefect.flow-run.{run.id}"
    assert roles["target"] == f"prefect.deployment.{deployment.id}"


async def test_one_flow_run_per_firing_and_action_even_when_redelivered(
    redis: aioredis.Redis, keys: Keys, settings: Settings, dispatcher: Dispatcher,
    deployment: Deployment,
) -> None:
    a, = await stored(AutomationStore(redis, keys),
                      automation(RunDeployment(deployment_id=deployment.id)))
    firing = await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    # a crash after the effect but before "done" was recorded: the firing comes again
    await redis.delete(*[k async for k in redis.scan_iter(match=f"{keys.g}:done:*")])
    await redis.xadd(keys.partition(0).firings, {b"data": firing.to_json()})
    await dispatcher.drain()
    assert len(await _runs(redis, settings)) == 1
    assert await redis.xlen(keys.runs) == 1


async def test_schedule_after_holds_the_run_until_due(
    redis: aioredis.Redis, keys: Keys, settings: Settings, dispatcher: Dispatcher,
    deployment: Deployment,
) -> None:
    a, = await stored(AutomationStore(redis, keys),
                      automation(RunDeployment(deployment="report", schedule_after=600)))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [run] = await _runs(redis, settings)
    assert run.expected_start > datetime.now(UTC) + timedelta(seconds=590)
    assert await redis.xlen(keys.runs) == 0
    store = FlowRunStore(redis, settings)
    assert await store.promote_due(datetime.now(UTC)) == 0
    assert await store.promote_due(datetime.now(UTC) + timedelta(seconds=601)) == 1
    assert await redis.xlen(keys.runs) == 1


async def test_pause_inferred_from_the_event_and_resume_by_name(
    redis: aioredis.Redis, keys: Keys, settings: Settings, dispatcher: Dispatcher,
    deployment: Deployment,
) -> None:
    store = AutomationStore(redis, keys)
    pause, resume = await stored(
        store, automation(PauseDeployment(source="inferred"), name="pause"),
        automation(ResumeDeployment(deployment="report"), name="resume"))
    event = Event(event="prefect.flow-run.Failed",
                  resource={"prefect.resource.id": "prefect.flow-run.x"},
                  related=[{"prefect.resource.id": f"prefect.deployment.{deployment.id}",
                            "prefect.resource.role": "deployment"}])
    deployments = DeploymentStore(redis, keys)
    await fire(redis, keys, pause, event)
    await dispatcher.drain()
    assert (await deployments.resolve("report")).paused is True
    await fire(redis, keys, resume, event)
    await dispatcher.drain()
    assert (await deployments.resolve("report")).paused is False


async def test_unknown_deployment_fails_the_action(
    redis: aioredis.Redis, keys: Keys, dispatcher: Dispatcher,
) -> None:
    a, = await stored(AutomationStore(redis, keys), automation(RunDeployment(deployment="nope")))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [failed] = [e for e in await action_events(redis, keys)
                if e["event"] == "prefect.automation.action.failed"]
    assert failed["payload"]["reason"] == "not-found"


def _run_event(run: FlowRun) -> Event:
    return Event(event="prefect.flow-run.Running",
                 resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"})


async def test_cancel_and_change_flow_run_state(
    redis: aioredis.Redis, keys: Keys, settings: Settings, dispatcher: Dispatcher,
    deployment: Deployment,
) -> None:
    runs = FlowRunStore(redis, settings)
    scheduled, _ = await runs.create(build_flow_run(deployment))
    running, _ = await runs.create(build_flow_run(deployment))
    await runs.transition(running.id, State.of(StateType.RUNNING), lease_ms=60_000)
    store = AutomationStore(redis, keys)
    cancel, fail, force = await stored(
        store, automation(CancelFlowRun(), name="cancel"),
        automation(ChangeFlowRunState(state="FAILED", message="too slow"), name="fail"),
        automation(ChangeFlowRunState(state="COMPLETED", force=True), name="force"))
    await fire(redis, keys, cancel, _run_event(scheduled))
    await fire(redis, keys, cancel, _run_event(running))
    await dispatcher.drain()
    assert (await runs.require(scheduled.id)).state.type == StateType.CANCELLED
    assert (await runs.require(running.id)).state.type == StateType.CANCELLING  # worker's turn
    # a finished run refuses a change unless forced
    await fire(redis, keys, fail, _run_event(scheduled))
    await dispatcher.drain()
    failed = [e for e in await action_events(redis, keys)
              if e["event"] == "prefect.automation.action.failed"]
    assert failed[-1]["payload"]["reason"] == "validation"
    await fire(redis, keys, force, labels={"prefect.resource.id":
                                           f"prefect.flow-run.{scheduled.id}"})
    await dispatcher.drain()
    forced = await runs.require(scheduled.id)
    assert forced.state.type == StateType.COMPLETED
    assert forced.state.message == f"State changed by Automation {force.id}"
