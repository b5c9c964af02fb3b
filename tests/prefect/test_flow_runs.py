"""The flow-run, work-pool and work-queue actions and Prefect's error detail, against a real
Prefect 3.8.8 server, run by our engine and dispatcher as an automation runs them: each action
acts on the run, pool or queue (checked through Prefect's API), ``set_state`` is judged by the
reply's ``status`` (a REJECT or ABORT answered with 200/201 is our ``action.failed``, carrying
Prefect's reason), and a request Prefect refuses puts Prefect's ``detail`` in the failed event."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from automations.keys import Keys
from automations.models import Automation
from automations.prefect.client import PrefectClient, PrefectError
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import aemit
from tests.prefect.conftest import make_deployment, rest
from tests.wait import wait_until

OUTCOMES = ("prefect.automation.action.executed", "prefect.automation.action.failed")


def reacting(event: str, action: dict[str, Any]) -> Automation:
    return Automation.model_validate({
        "name": f"on {event}", "actions": [action],
        "trigger": {"type": "event", "posture": "Reactive", "expect": [event],
                    "threshold": 1, "within": 0}})


async def final_outcome(redis: aioredis.Redis, keys: Keys, automation: Automation,
                        after: str) -> dict[str, Any] | None:
    """The automation's first outcome after stream id ``after`` that is not followed by a
    retry: executed, or failed for good (Prefect's SQLite may answer 503 under load; that
    attempt is retried)."""
    entries: Any = await redis.xrange(keys.events, min=f"({after}")
    mine = f"prefect.automation.{automation.id}"
    for _, fields in entries:
        event = orjson.loads(fields[b"data"])
        if event["event"] in OUTCOMES and event["resource"]["prefect.resource.id"] == mine \
                and not event["payload"].get("will_retry"):
            found: dict[str, Any] = event
            return found
    return None


async def fire(redis: aioredis.Redis, keys: Keys, settings: Settings, automation: Automation,
               resource: str) -> dict[str, Any]:
    """Emit the automation's event about ``resource``; the outcome event of that firing."""
    last: Any = await redis.xrevrange(keys.events, count=1)
    after = last[0][0].decode() if last else "0-0"
    await aemit(automation.name.removeprefix("on "), resource=resource, redis=redis,
                settings=settings)

    async def settled() -> dict[str, Any] | None:
        return await final_outcome(redis, keys, automation, after)

    outcome = await wait_until(settled, timeout=90, what=f"the outcome of {automation.name}")
    assert outcome is not None
    return outcome


async def new_run(api: str, deployment_id: str, *states: str) -> str:
    """A flow run of the deployment (Scheduled, no worker), then forced through ``states``."""
    run = await rest(api, "POST", f"/deployments/{deployment_id}/create_flow_run", {})
    for state in states:
        await rest(api, "POST", f"/flow_runs/{run['id']}/set_state",
                   {"state": {"type": state}, "force": True})
    return str(run["id"])


async def state_of(api: str, run_id: str) -> dict[str, Any]:
    state: dict[str, Any] = (await rest(api, "GET", f"/flow_runs/{run_id}"))["state"]
    return state


def executed(outcome: Mapping[str, Any]) -> bool:
    return bool(outcome["event"].endswith(".executed"))


async def test_flow_run_actions_act_on_prefect_runs_judged_by_status(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    deployment_id = await make_deployment(prefect_api, f"runs-{uuid.uuid4().hex[:6]}", "d")
    scheduled = await new_run(prefect_api, deployment_id)
    failed = await new_run(prefect_api, deployment_id, "FAILED")
    to_fail = await new_run(prefect_api, deployment_id)
    cancelling = await new_run(prefect_api, deployment_id, "RUNNING", "CANCELLING")
    running = await new_run(prefect_api, deployment_id, "RUNNING")
    go = f"test.runs.{uuid.uuid4().hex[:6]}"
    cancel = reacting(f"{go}.cancel", {"type": "cancel-flow-run"})
    change = reacting(f"{go}.change", {"type": "change-flow-run-state", "state": "FAILED",
                                       "message": "failed by our automation"})
    reschedule = reacting(f"{go}.reschedule", {"type": "change-flow-run-state",
                                               "state": "SCHEDULED"})
    suspend = reacting(f"{go}.suspend", {"type": "suspend-flow-run"})
    resume = reacting(f"{go}.resume", {"type": "resume-flow-run"})
    await AutomationStore(redis, keys).apply([cancel, change, reschedule, suspend, resume])
    configured = settings.model_copy(update={"prefect_api_url": prefect_api})

    def run(run_id: str) -> str:
        return f"prefect.flow-run.{run_id}"

    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(configured, ["engine", "dispatcher"], stopping=stopping))
        # cancel: a Scheduled run is REJECTed ("no infrastructure") but ends Cancelled: done
        outcome = await fire(redis, keys, configured, cancel, run(scheduled))
        assert executed(outcome), outcome
        assert outcome["payload"]["state_type"] == "CANCELLED"
        assert (await state_of(prefect_api, scheduled))["type"] == "CANCELLED"
        # cancel a terminal run: HTTP 200 with status ABORT is our failure, with the reason
        outcome = await fire(redis, keys, configured, cancel, run(failed))
        assert outcome["event"].endswith(".failed"), outcome
        assert outcome["payload"]["prefect_status"] == "ABORT"
        assert outcome["payload"]["prefect_detail"]["reason"] == (
            "Run is already in terminal state FAILED.")
        assert "already in terminal state" in outcome["payload"]["message"]
        assert (await state_of(prefect_api, failed))["type"] == "FAILED"

        outcome = await fire(redis, keys, configured, change, run(to_fail))
        assert executed(outcome), outcome
        state = await state_of(prefect_api, to_fail)
        assert (state["type"], state["message"]) == ("FAILED", "failed by our automation")
        # a rejected transition (HTTP 200, status REJECT) is a failed action with the reason
        outcome = await fire(redis, keys, configured, reschedule, run(cancelling))
        assert outcome["event"].endswith(".failed"), outcome
        assert outcome["payload"]["prefect_status"] == "REJECT"
        assert "Cannot transition flows that are cancelling" in outcome["payload"]["message"]
        assert (await state_of(prefect_api, cancelling))["type"] == "CANCELLING"

        outcome = await fire(redis, keys, configured, suspend, run(running))
        assert executed(outcome), outcome
        state = await state_of(prefect_api, running)
        assert (state["type"], state["name"]) == ("PAUSED", "Suspended")
        assert state["state_details"]["pause_reschedule"] is True
        outcome = await fire(redis, keys, configured, resume, run(running))
        assert executed(outcome), outcome
        state = await state_of(prefect_api, running)
        assert (state["type"], state["name"]) == ("SCHEDULED", "Resuming")
        # resuming a run that is not paused: Prefect's ABORT and reason in the failed event
        outcome = await fire(redis, keys, configured, resume, run(to_fail))
        assert outcome["event"].endswith(".failed"), outcome
        assert outcome["payload"]["prefect_status"] == "ABORT"
        assert "Cannot resume a flow run that is not paused" in outcome["payload"]["message"]
        stopping.set()


async def test_work_pool_and_queue_pause_and_resume_show_in_prefect(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    name = f"pool-{uuid.uuid4().hex[:6]}"
    pool = await rest(prefect_api, "POST", "/work_pools/", {"name": name, "type": "process"})
    queue = await rest(prefect_api, "POST", f"/work_pools/{name}/queues", {"name": "q"})
    go = f"test.pools.{uuid.uuid4().hex[:6]}"
    pause_pool = reacting(f"{go}.pause-pool", {"type": "pause-work-pool",
                                               "work_pool_id": pool["id"]})
    resume_pool = reacting(f"{go}.resume-pool", {"type": "resume-work-pool",
                                                 "source": "inferred"})
    pause_queue = reacting(f"{go}.pause-queue", {"type": "pause-work-queue",
                                                 "source": "inferred"})
    resume_queue = reacting(f"{go}.resume-queue", {"type": "resume-work-queue",
                                                   "work_queue_id": queue["id"]})
    await AutomationStore(redis, keys).apply([pause_pool, resume_pool, pause_queue,
                                              resume_queue])
    configured = settings.model_copy(update={"prefect_api_url": prefect_api})

    async def paused(kind: str, ref: str) -> bool:
        found: bool = (await rest(prefect_api, "GET", f"/{kind}/{ref}"))["is_paused"]
        return found

    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(configured, ["engine", "dispatcher"], stopping=stopping))
        outcome = await fire(redis, keys, configured, pause_pool, "test.pool")
        assert executed(outcome) and await paused("work_pools", name), outcome
        outcome = await fire(redis, keys, configured, resume_pool,
                             f"prefect.work-pool.{pool['id']}")
        assert executed(outcome) and not await paused("work_pools", name), outcome
        outcome = await fire(redis, keys, configured, pause_queue,
                             f"prefect.work-queue.{queue['id']}")
        assert executed(outcome) and await paused("work_queues", queue["id"]), outcome
        assert outcome["payload"]["work_queue_id"] == queue["id"]
        outcome = await fire(redis, keys, configured, resume_queue, "test.queue")
        assert executed(outcome) and not await paused("work_queues", queue["id"]), outcome
        stopping.set()


async def test_prefects_error_detail_is_in_the_failed_event(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    flow = await rest(prefect_api, "POST", "/flows/", {"name": f"typed-{uuid.uuid4().hex[:6]}"})
    deployment = await rest(prefect_api, "POST", "/deployments/", {
        "name": "typed", "flow_id": flow["id"], "enforce_parameter_schema": True,
        "parameter_openapi_schema": {"type": "object", "required": ["n"],
                                     "properties": {"n": {"type": "integer", "title": "n"}}}})
    go = f"test.detail.{uuid.uuid4().hex[:6]}"
    refused = reacting(f"{go}.refused", {"type": "run-deployment",
                                         "deployment_id": deployment["id"],
                                         "parameters": {"n": "abc"}})
    missing_run = reacting(f"{go}.missing", {"type": "cancel-flow-run"})
    missing_pool = reacting(f"{go}.pool", {"type": "pause-work-pool",
                                           "work_pool_id": str(uuid.uuid4())})
    await AutomationStore(redis, keys).apply([refused, missing_run, missing_pool])
    configured = settings.model_copy(update={"prefect_api_url": prefect_api})
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(configured, ["engine", "dispatcher"], stopping=stopping))
        outcome = await fire(redis, keys, configured, refused, "test.refused")
        payload = outcome["payload"]
        assert outcome["event"].endswith(".failed") and payload["prefect_status"] == 409
        assert "'abc' is not of type 'integer'" in payload["prefect_detail"]
        assert "'abc' is not of type 'integer'" in payload["message"]
        assert not await rest(prefect_api, "POST", "/flow_runs/filter", {
            "flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})

        unknown = uuid.uuid4()
        outcome = await fire(redis, keys, configured, missing_run, f"prefect.flow-run.{unknown}")
        payload = outcome["payload"]
        assert outcome["event"].endswith(".failed") and payload["prefect_status"] == 404
        assert payload["prefect_detail"] == f"Flow run with id {unknown} not found"
        assert payload["reason"] == "not-found", payload

        outcome = await fire(redis, keys, configured, missing_pool, "test.pool")
        assert outcome["event"].endswith(".failed"), outcome
        assert outcome["payload"]["reason"] == "not-found"
        stopping.set()


async def test_a_refused_request_keeps_prefects_field_errors(prefect_api: str) -> None:
    """A 422's message is generic ("Invalid request received."): the error names the field
    and leaves out the echoed request body."""
    deployment_id = await make_deployment(prefect_api, f"bad-{uuid.uuid4().hex[:6]}", "d")
    async with PrefectClient(prefect_api) as client:
        with pytest.raises(PrefectError) as caught:
            await client.request("POST", f"/deployments/{deployment_id}/create_flow_run",
                                 json={"parameters": "not a dict", "secret": "s3cr3t"})
    assert caught.value.status == 422
    assert "Invalid request received." in str(caught.value.detail)
    assert "body.parameters: Input should be a valid dictionary" in str(caught.value.detail)
    assert "s3cr3t" not in str(caught.value)
