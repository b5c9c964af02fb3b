"""The worker runs flow runs in subprocesses: states, failures, cancellation, crashes."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from automations.keys import Keys
from automations.runtime.deployments import Deployment, DeploymentStore
from automations.runtime.flow_runs import FlowRun, FlowRunStore, build_flow_run
from automations.runtime.scheduler import Scheduler
from automations.runtime.states import StateType
from automations.runtime.worker import Worker
from automations.settings import Settings
from tests.runtime.conftest import names, read_events
from tests.wait import wait_until

FLOWS = Path(__file__).with_name("flowdefs.py")


async def _deploy(redis: aioredis.Redis, keys: Keys, tmp_path: Path, entry: str,
                  **params: Any) -> Deployment:
    (tmp_path / "flowdefs.py").write_text(FLOWS.read_text())
    dep = Deployment(name=entry, entrypoint=f"flowdefs.py:{entry}", flow_name=entry,
                     working_dir=str(tmp_path), parameters=params, tags=["team-a"])
    [(_, stored)] = await DeploymentStore(redis, keys).apply([dep])
    return stored


async def _start(redis: aioredis.Redis, settings: Settings, dep: Deployment,
                 **params: Any) -> tuple[FlowRunStore, FlowRun]:
    store = FlowRunStore(redis, settings)
    run, _ = await store.create(build_flow_run(dep, params))
    return store, run


async def test_worker_runs_a_deployment_to_completion(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "adder", a=1)
    store, run = await _start(redis, settings, dep, b="41")  # "41" is coerced to int
    assert await Worker(redis, settings).run_until_idle() == 1
    done = await store.require(run.id)
    assert done.state.type == StateType.COMPLETED
    events = await read_events(redis, keys)
    mine = [e for e in events if e.resource["prefect.resource.id"] == f"prefect.flow-run.{run.id}"]
    assert names(mine) == ["prefect.flow-run.Scheduled", "prefect.flow-run.Pending",
                           "prefect.flow-run.Running", "prefect.flow-run.Completed"]
    assert all(b.follows == a.id for a, b in itertools.pairwise(mine))
    deployment = mine[-1].resource_in_role("deployment")
    assert deployment is not None
    assert deployment["prefect.resource.id"] == f"prefect.deployment.{dep.id}"
    assert {"prefect.resource.id": "prefect.tag.team-a", "prefect.resource.role": "tag"} in (
        mine[-1].related)
    task_done = next(e for e in events if e.event == "prefect.task-run.Completed")
    assert task_done.resource_in_role("flow-run") is not None
    assert await redis.zcard(keys.flow_runs_active) == 0


async def test_failing_flow_and_bad_parameters_end_failed(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    breaker = await _deploy(redis, keys, tmp_path, "breaker")
    adder = await _deploy(redis, keys, tmp_path, "adder")
    store, failing = await _start(redis, settings, breaker, reason="kaput")
    _, missing = await _start(redis, settings, adder)  # required parameter 'a' is missing
    assert await Worker(redis, settings, concurrency=2).run_until_idle() == 2
    failed = await store.require(failing.id)
    assert failed.state.type == StateType.FAILED
    assert "RuntimeError: kaput" in failed.state.message
    bad = await store.require(missing.id)
    assert bad.state.type == StateType.FAILED
    assert "missing a required argument: 'a'" in bad.state.message


async def test_a_run_is_claimed_once_even_if_queued_twice(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "adder", a=1)
    store, run = await _start(redis, settings, dep)
    await redis.xadd(keys.runs, {"id": str(run.id)})  # a duplicate entry
    one, two = Worker(redis, settings), Worker(redis, settings.model_copy(
        update={"consumer_name": "other"}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(one.run_until_idle)
        tg.start_soon(two.run_until_idle)
    assert one.started + two.started == 1
    assert (await store.require(run.id)).state.type == StateType.COMPLETED


async def test_a_non_utf8_run_id_is_dead_lettered_without_holding_up_its_batch(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    await redis.xadd(keys.runs, {b"id": b"\xff\xfe"})
    dep = await _deploy(redis, keys, tmp_path, "adder", a=1)
    store, run = await _start(redis, settings, dep, b=2)

    assert await Worker(redis, settings).run_until_idle() == 2

    assert (await store.require(run.id)).state.type == StateType.COMPLETED
    dead: Any = await redis.xrange(keys.dead(keys.runs))
    [(_, fields)] = dead
    assert fields[b"deliveries"] == b"1"
    assert b"not UTF-8" in fields[b"reason"]


async def test_cancel_flow_run_kills_the_process(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "sleeper")
    marker = tmp_path / "started"
    store, run = await _start(redis, settings, dep, seconds=60, marker=str(marker))
    worker = Worker(redis, settings.model_copy(update={"worker_poll_s": 0.1}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await wait_until(marker.exists, timeout=15)
        cancelling = await store.cancel(run.id, "enough")
        assert cancelling.state.type == StateType.CANCELLING
        done = await wait_until(lambda: _state_is(store, run, StateType.CANCELLED), timeout=15)
        worker.stop()
    assert done.state.type == StateType.CANCELLED
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "prefect.flow-run.Cancelling" in names(await read_events(redis, keys))


async def test_cancel_before_pickup_cancels_at_once(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "adder", a=1)
    store, run = await _start(redis, settings, dep)
    assert (await store.cancel(run.id, "no")).state.type == StateType.CANCELLED
    worker = Worker(redis, settings)
    await worker.run_until_idle()
    assert worker.started == 0


async def test_runs_of_a_dead_worker_are_marked_crashed(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "sleeper")
    marker = tmp_path / "started"
    store, run = await _start(redis, settings, dep, seconds=60, marker=str(marker))
    env = {**os.environ, "AUTOMATIONS_REDIS_URL": str(settings.redis_url),
           "AUTOMATIONS_PREFIX": settings.prefix, "AUTOMATIONS_WORKER_LEASE_S": "1",
           "AUTOMATIONS_BLOCK_MS": "50"}
    proc = subprocess.Popen([sys.executable, "-m", "automations", "worker"], env=env)
    try:
        await wait_until(marker.exists, timeout=15)
        await wait_until(lambda: _state_is(store, run, StateType.RUNNING), timeout=15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
        if marker.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
    scheduler = Scheduler(redis, settings)

    async def swept() -> FlowRun | None:
        await scheduler.tick(datetime.now(UTC))
        return await _state_is(store, run, StateType.CRASHED)

    crashed = await wait_until(swept, timeout=15)
    assert "stopped heartbeating" in crashed.state.message


async def _state_is(store: FlowRunStore, run: FlowRun, kind: StateType) -> FlowRun | None:
    current = await store.require(run.id)
    return current if current.state.type == kind else None


async def test_job_variables_env_reaches_the_flow_process(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "env_writer")
    out = tmp_path / "env.txt"
    store = FlowRunStore(redis, settings)
    await store.create(build_flow_run(dep, {"name": "GREETING", "path": str(out)},
                                      job_variables={"env": {"GREETING": "hello"}}))
    await Worker(redis, settings).run_until_idle()
    assert out.read_text() == "hello"
