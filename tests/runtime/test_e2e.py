"""End to end with real processes: ``automations serve`` (engine, timer, dispatcher, scheduler)
and ``automations worker``, against the test Redis.

1. flow A completes -> an automation runs deployment B with a parameter templated from A's event
   -> the worker runs B -> B's Completed event is seen;
2. a flow failing 3 times within a minute -> one email at the SMTP sink;
3. a proactive automation pauses a deployment whose run did not complete in time, and its
   schedule stops producing runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from actions.models import PauseDeployment, RunDeployment, SendNotification
from automations.keys import DISPATCH_GROUP, ENGINE_GROUP, Keys
from automations.models import Automation
from automations.runtime.deployments import Deployment, DeploymentStore
from automations.runtime.flow_runs import FlowRun, FlowRunStore, build_flow_run
from automations.runtime.states import StateType
from automations.settings import Settings
from automations.store import AutomationStore
from tests.runtime.conftest import read_events
from tests.runtime.processes import running, service_env
from tests.sinks import SmtpSink
from tests.wait import acknowledged, wait_until
from triggers.models import EventTrigger, Posture

FLOWS = Path(__file__).with_name("flowdefs.py")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Start ``serve`` and ``worker`` (call it after the automations are stored)."""
    with ExitStack() as stack:
        def start(**extra: str) -> None:
            env = service_env(settings, **extra)
            stack.enter_context(running(["serve"], env, tmp_path / "serve.log"))
            stack.enter_context(running(["worker", "--concurrency", "4"], env,
                                        tmp_path / "worker.log"))
        yield start


async def _deploy(redis: aioredis.Redis, keys: Keys, tmp_path: Path,
                  *deployments: dict[str, Any]) -> list[Deployment]:
    (tmp_path / "flowdefs.py").write_text(FLOWS.read_text())
    deps = [Deployment(working_dir=str(tmp_path), **d) for d in deployments]
    return [d for _, d in await DeploymentStore(redis, keys).apply(deps)]


async def test_completed_flow_runs_the_next_deployment_with_templated_parameters(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path,
    stack: Callable[..., None],
) -> None:
    first, _ = await _deploy(
        redis, keys, tmp_path,
        {"name": "first", "entrypoint": "flowdefs.py:adder", "flow_name": "adder",
         "parameters": {"a": 1}},
        {"name": "second", "entrypoint": "flowdefs.py:plain", "flow_name": "plain"})
    chain = Automation(
        name="chain",
        trigger=EventTrigger(expect={"prefect.flow-run.Completed"},
                             match_related={"prefect.resource.role": "flow",
                                            "prefect.resource.name": "adder"}),
        actions=[RunDeployment(deployment="second",
                               parameters={"x": "{{ event.resource.name }}"})],
    )
    await AutomationStore(redis, keys).apply([chain])
    stack()
    runs = FlowRunStore(redis, settings)
    a, _ = await runs.create(build_flow_run(first))

    async def second_done() -> FlowRun | None:
        found = [r for r in await runs.all() if r.deployment_name == "second"]
        return found[0] if found and found[0].state.type == StateType.COMPLETED else None

    b = await wait_until(second_done, timeout=30)
    assert b.parameters == {"x": a.name}
    assert b.creator is not None and b.creator["id"] == str(chain.id)
    completed = [e for e in await read_events(redis, keys)
                 if e.event == "prefect.flow-run.Completed"
                 and e.resource["prefect.resource.id"] == f"prefect.flow-run.{b.id}"]
    assert len(completed) == 1
    creator = completed[0].resource_in_role("creator")
    assert creator is not None
    assert creator["prefect.resource.id"] == f"prefect.automation.{chain.id}"


async def test_three_failures_within_a_minute_send_one_email(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path,
    stack: Callable[..., None], smtp_sink: SmtpSink,
) -> None:
    [breaker] = await _deploy(redis, keys, tmp_path, {
        "name": "breaker", "entrypoint": "flowdefs.py:breaker", "flow_name": "breaker"})
    storm = Automation(
        name="storm",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed"}, threshold=3,
                             within=timedelta(seconds=60)),
        actions=[SendNotification(urls=[smtp_sink.mailto()], subject="{{ automation.name }}",
                                  body="last: {{ event.resource.name }}")],
    )
    await AutomationStore(redis, keys).apply([storm])
    stack()
    runs = FlowRunStore(redis, settings)
    for _ in range(4):
        await runs.create(build_flow_run(breaker))

    async def all_failed() -> bool:
        found = await runs.all()
        return len(found) == 4 and all(r.state.type == StateType.FAILED for r in found)

    await wait_until(all_failed, timeout=30)
    [mail] = await smtp_sink.wait_for(1, timeout=20)
    assert "storm" in mail.subject

    async def all_handled() -> bool:
        """The engine has handled every event (the 4th failure among them), then the
        dispatcher every firing: a second email would have been sent by now."""
        failures = [e for e in await read_events(redis, keys)
                    if e.event == "prefect.flow-run.Failed"]
        return (len(failures) == 4 and await acknowledged(redis, keys.events, ENGINE_GROUP)
                and await acknowledged(redis, keys.partition(0).firings, DISPATCH_GROUP))

    await wait_until(all_handled, timeout=30)
    assert len(smtp_sink.messages) == 1  # the 4th failure is inside the same window


async def test_proactive_automation_pauses_a_stuck_deployment(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path,
    stack: Callable[..., None],
) -> None:
    [stuck] = await _deploy(redis, keys, tmp_path, {
        "name": "stuck", "entrypoint": "flowdefs.py:sleeper", "flow_name": "sleeper",
        "parameters": {"seconds": 60}, "schedules": [{"interval": 3}]})
    watchdog = Automation(
        name="watchdog",
        trigger=EventTrigger(
            after={"prefect.flow-run.Running"}, expect={"prefect.flow-run.Completed"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "sleeper"},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=10)),
        actions=[PauseDeployment(deployment="stuck")],
    )
    await AutomationStore(redis, keys).apply([watchdog])
    stack()
    deployments = DeploymentStore(redis, keys)
    runs = FlowRunStore(redis, settings)

    async def paused() -> bool:
        dep = await deployments.get(stuck.id)
        return dep is not None and dep.paused

    await wait_until(paused, timeout=40)
    paused_at = time.time()
    before = len(await runs.all())
    assert before >= 1

    async def a_due_time_passed() -> bool:
        """The scheduler moves a paused schedule's cursor too, without creating its runs: once
        it is past the pause by more than the 3 s interval, a run came due meanwhile."""
        cursors: Any = await redis.hgetall(keys.schedule_cursors)
        return any(field.decode().startswith(f"{stuck.id}:") and float(at) > paused_at + 3.5
                   for field, at in cursors.items())

    await wait_until(a_due_time_passed)
    assert len(await runs.all()) == before


async def test_quick_start_examples_chain_extract_into_report(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path,
    stack: Callable[..., None],
) -> None:
    """The README walk-through, with the files of examples/ and the CLI."""
    env = service_env(settings)
    for args in (["deployments", "apply", str(EXAMPLES / "deployments.yaml")],
                 ["apply", str(EXAMPLES / "automations.yaml"), str(EXAMPLES / "watchdog.py")]):
        done = subprocess.run([sys.executable, "-m", "automations", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    stack()
    done = subprocess.run([sys.executable, "-m", "automations", "deployments", "run",
                           "extract-hourly"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    runs = FlowRunStore(redis, settings)

    async def report_done() -> FlowRun | None:
        found = [r for r in await runs.all() if r.deployment_name == "report"]
        return found[0] if found and found[0].state.type == StateType.COMPLETED else None

    report = await wait_until(report_done, timeout=30)
    [extract] = [r for r in await runs.all() if r.deployment_name == "extract-hourly"]
    assert report.parameters == {"audience": "team", "upstream": extract.name}
