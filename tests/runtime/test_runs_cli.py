"""``automations runs ls|inspect`` over real flow runs that a real worker ran in subprocesses:
state, deployment, parameters, creator and the state timeline."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.cli.common import EXIT_NOT_FOUND, EXIT_USER_ERROR
from automations.events import utcnow
from automations.keys import Keys
from automations.runtime.deployments import Deployment, DeploymentStore
from automations.runtime.flow_runs import MAX_TIMELINE, FlowRunStore, build_flow_run
from automations.runtime.states import State, StateType
from automations.runtime.worker import Worker
from automations.settings import Settings

FLOWS = Path(__file__).with_name("flowdefs.py")


@pytest.fixture
def cli(runtime_env: Settings) -> Any:
    env = {"AUTOMATIONS_REDIS_URL": str(runtime_env.redis_url),
           "AUTOMATIONS_PREFIX": runtime_env.prefix}

    async def invoke(*args: str, code: int = 0) -> str:
        result = await anyio.to_thread.run_sync(
            lambda: CliRunner().invoke(app, list(args), env=env))
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return str(result.stdout + result.stderr)

    return invoke


async def _deploy(redis: aioredis.Redis, keys: Keys, tmp_path: Path, entry: str,
                  **params: Any) -> Deployment:
    (tmp_path / "flowdefs.py").write_text(FLOWS.read_text())
    dep = Deployment(name=entry, entrypoint=f"flowdefs.py:{entry}", flow_name=entry,
                     working_dir=str(tmp_path), parameters=params)
    [(_, stored)] = await DeploymentStore(redis, keys).apply([dep])
    return stored


async def test_runs_ls_and_inspect_real_runs(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path, cli: Any,
) -> None:
    adder = await _deploy(redis, keys, tmp_path, "adder", a=1)
    breaker = await _deploy(redis, keys, tmp_path, "breaker")
    store = FlowRunStore(redis, settings, keys)
    assert "created flow run" in await cli("deployments", "run", "adder", "-p", "b=2")
    chained, _ = await store.create(build_flow_run(
        breaker, {"reason": "kaput"},
        creator={"kind": "automation", "id": "a1", "name": "chain"}))
    later, _ = await store.create(build_flow_run(
        adder, start=utcnow() + timedelta(hours=1),
        creator={"kind": "deployment", "id": str(adder.id), "name": adder.name}))
    assert await Worker(redis, settings, concurrency=2).run_until_idle() == 2

    listed = [orjson.loads(x) for x in (await cli("runs", "ls", "--json")).splitlines()]
    assert [r["id"] for r in listed[:2]] == [str(later.id), str(chained.id)]  # newest first
    by_id = {r["id"]: r for r in listed}
    manual = next(r for r in listed if r["id"] not in (str(later.id), str(chained.id)))
    assert (manual["state"], manual["deployment"], manual["created_by"]) == (
        "COMPLETED", "adder", "cli")
    assert (by_id[str(chained.id)]["state"], by_id[str(chained.id)]["created_by"]) == (
        "FAILED", "automation chain")
    assert (by_id[str(later.id)]["state"], by_id[str(later.id)]["created_by"]) == (
        "SCHEDULED", "schedule")

    failed = (await cli("runs", "ls", "--state", "failed", "--json")).splitlines()
    assert [orjson.loads(x)["id"] for x in failed] == [str(chained.id)]
    of_adder = (await cli("runs", "ls", "--deployment", "adder", "--json")).splitlines()
    assert len(of_adder) == 2
    assert len((await cli("runs", "ls", "--limit", "1", "--json")).splitlines()) == 1
    table = await cli("runs", "ls")
    assert "Completed" in table and "chain" in table and "schedule" in table
    assert chained.name in table

    full = orjson.loads(await cli("runs", "inspect", manual["id"], "--json"))
    assert full["parameters"] == {"a": 1, "b": 2} and full["creator"] is None
    timeline = full["timeline"]
    assert [s["type"] for s in timeline] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    stamps = [datetime.fromisoformat(s["timestamp"]) for s in timeline]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    assert timeline[0]["message"] == "Created from the CLI"
    broken = orjson.loads(await cli("runs", "inspect", chained.name, "--json"))
    assert broken["timeline"][-1]["type"] == "FAILED" and "kaput" in broken["timeline"][-1][
        "message"]
    assert broken["creator"] == {"kind": "automation", "id": "a1", "name": "chain"}
    shown = await cli("runs", "inspect", manual["id"])
    assert "timeline" in shown and "Pending" in shown and "Completed" in shown

    assert "no flow run" in await cli("runs", "inspect", "nope", code=EXIT_NOT_FOUND)
    assert "no deployment" in await cli("runs", "ls", "-d", "nope", code=EXIT_NOT_FOUND)
    assert "is not a state" in await cli("runs", "ls", "--state", "no such",
                                         code=EXIT_USER_ERROR)


async def test_the_timeline_is_bounded(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path,
) -> None:
    dep = await _deploy(redis, keys, tmp_path, "adder", a=1)
    store = FlowRunStore(redis, settings, keys)
    run, _ = await store.create(build_flow_run(dep))
    for i in range(MAX_TIMELINE + 5):
        await store.transition(run.id, State.of(StateType.PAUSED, None, f"pause {i}"))
    stored = await store.require(run.id)
    assert len(stored.timeline()) == MAX_TIMELINE + 1
    assert stored.timeline()[-1].message == f"pause {MAX_TIMELINE + 4}"
