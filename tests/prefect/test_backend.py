"""Prefect as the action backend, against a real Prefect 3.8.8 server: our automations create
runs of its deployments (once per idempotency key), pause and resume them, and report
Prefect's error detail in the failed event."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis

from automations.keys import Keys
from automations.models import Automation
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import aemit
from tests.prefect.conftest import flow_runs_of, make_deployment, rest
from tests.wait import wait_until


async def outcomes(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(keys.events)
    events = [orjson.loads(fields[b"data"]) for _, fields in entries]
    return [e for e in events if e["event"] in ("prefect.automation.action.executed",
                                                "prefect.automation.action.failed")]


async def test_our_actions_act_on_prefect_deployments(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
) -> None:
    flow = f"backend-{uuid.uuid4().hex[:6]}"
    deployment_id = await make_deployment(prefect_api, flow, "nightly")
    go = f"test.go.{uuid.uuid4().hex[:6]}"

    def on(event: str, name: str, actions: list[dict[str, Any]]) -> Automation:
        return Automation.model_validate({
            "name": name, "actions": actions,
            "trigger": {"type": "event", "posture": "Reactive", "expect": [event],
                        "threshold": 1, "within": 0}})

    await AutomationStore(redis, keys).apply([
        on(f"{go}.run", "run it", [
            {"type": "run-deployment", "deployment": f"{flow}/nightly",
             "parameters": {"n": "{{ event.payload.n }}"}},
            {"type": "run-deployment", "deployment": f"{flow}/missing"},
            {"type": "pause-deployment", "deployment_id": deployment_id}]),
        on(f"{go}.resume", "resume it", [
            {"type": "resume-deployment", "source": "inferred"},
            {"type": "run-deployment", "source": "inferred", "parameters": {"n": 7}}]),
    ])
    configured = settings.model_copy(update={"prefect_api_url": prefect_api})
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(configured, ["engine", "dispatcher"], stopping=stopping))
        await aemit(f"{go}.run", resource="test.1", payload={"n": 4}, redis=redis,
                    settings=configured)
        done = await wait_until(lambda: _settled(outcomes(redis, keys)), timeout=90,
                                what="runs executed, the missing one failed")
        runs = await flow_runs_of(prefect_api, deployment_id)
        assert len(runs) == 1 and runs[0]["parameters"] == {"n": 4}
        assert runs[0]["created_by"]["type"] == "AUTOMATION"
        deployment = await rest(prefect_api, "GET", f"/deployments/{deployment_id}")
        assert deployment["paused"] is True
        failed = [e for e in done if e["event"].endswith(".failed")
                  and e["payload"]["action_index"] == 1]
        assert f"no deployment named '{flow}/missing'" in str(failed[0]["payload"])

        await aemit(f"{go}.resume", resource="test.2", redis=redis, settings=configured,
                    related=[{"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                              "prefect.resource.role": "deployment"}])
        await wait_until(lambda: _resumed(prefect_api, deployment_id), timeout=90,
                         what="the deployment resumed")
        deployment = await rest(prefect_api, "GET", f"/deployments/{deployment_id}")
        assert deployment["paused"] is False

        async def inferred_run() -> list[dict[str, Any]] | None:
            found = await flow_runs_of(prefect_api, deployment_id)
            return found if len(found) == 2 else None

        runs = await wait_until(inferred_run, timeout=90,
                                what="run-deployment (inferred) created a second run")
        assert sorted(r["parameters"].get("n") for r in runs) == [4, 7]
        stopping.set()


async def _settled(found: Any) -> list[dict[str, Any]] | None:
    """The outcomes once actions 0 and 2 executed and 1 failed (Prefect's SQLite may answer
    503 under load: that attempt fails, is retried, and a later one executes)."""
    events: list[dict[str, Any]] = await found
    executed = {e["payload"]["action_index"] for e in events if e["event"].endswith("executed")}
    failed = {e["payload"]["action_index"] for e in events if e["event"].endswith("failed")}
    return events if executed >= {0, 2} and 1 in failed else None


async def _resumed(api: str, deployment_id: str) -> bool:
    return (await rest(api, "GET", f"/deployments/{deployment_id}"))["paused"] is False
