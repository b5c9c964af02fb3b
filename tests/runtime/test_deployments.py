"""Deployment model, files, the store, and the scheduler (one run per slot, pause/resume)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from actions.models import RunDeployment
from automations.dispatch.dispatcher import Dispatcher
from automations.errors import NotFound
from automations.keys import Keys
from automations.runtime.deployment_files import (
    InvalidDeployment,
    check_run_parameters,
    load_file,
)
from automations.runtime.deployments import CronSchedule, Deployment, DeploymentStore
from automations.runtime.flow_runs import FlowRunStore
from automations.runtime.parameter_schema import parameter_problems, parameter_schema
from automations.runtime.scheduler import Scheduler
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, disk_event, fire, stored
from tests.runtime.conftest import names, read_events

FLOWS = Path(__file__).with_name("flowdefs.py")


def _write(tmp_path: Path, text: str, name: str = "deployments.yaml") -> Path:
    (tmp_path / "flowdefs.py").write_text(FLOWS.read_text())
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_file_loads_and_resolves_flow_name(tmp_path: Path) -> None:
    path = _write(tmp_path, """
deployments:
  - name: add-nightly
    entrypoint: flowdefs.py:adder
    parameters: {a: 2}
    tags: [nightly]
    schedules:
      - cron: "0 3 * * *"
        timezone: Europe/Paris
      - interval: 30
        active: false
  - name: plain
    entrypoint: flowdefs:plain
""")
    deps = load_file(path)
    assert [d.name for d in deps] == ["add-nightly", "plain"]
    assert deps[0].flow_name == "adder"
    assert deps[1].flow_name == "plain"
    assert deps[0].working_dir == str(tmp_path.resolve())
    assert isinstance(deps[0].schedules[0], CronSchedule)
    assert deps[0].schedules[1].active is False


def test_file_errors_are_all_reported_with_their_place(tmp_path: Path) -> None:
    path = _write(tmp_path, """
deployments:
  - name: bad-param
    entrypoint: flowdefs.py:adder
    parameters: {a: "not a number", c: 1}
  - name: bad-cron
    entrypoint: flowdefs.py:adder
    schedules: [{cron: "every day", timezone: "Mars/Olympus"}]
  - name: missing
    entrypoint: nowhere.py:adder
  - name: wrong-param-type
    entrypoint: flowdefs.py:adder
    parameters: {a: "x"}
""")
    with pytest.raises(InvalidDeployment) as info:
        load_file(path)
    text = str(info.value)
    assert "deployments[0] (bad-param): parameters do not fit adder" in text
    assert "deployments[1].schedules[0]" in text and "invalid cron expression" in text
    assert "unknown time zone 'Mars/Olympus'" in text
    # the path the docs promise, and nothing about the interval form the user did not mean
    assert "deployments[1].schedules[0].cron: invalid cron expression 'every day'" in text
    assert "deployments[1].schedules[0].timezone: unknown time zone" in text
    assert "IntervalSchedule" not in text and "CronSchedule" not in text
    assert "deployments[2] (missing)" in text and "does not exist" in text
    assert "deployments[3] (wrong-param-type): invalid parameters: a:" in text


def test_python_file_defines_deployments(tmp_path: Path) -> None:
    path = _write(tmp_path, (
        "from automations.runtime.deployments import Deployment\n"
        "deployments = [Deployment(name='py', entrypoint='flowdefs.py:adder',"
        " parameters={'a': 1})]\n"), name="deps.py")
    assert [d.name for d in load_file(path)] == ["py"]


def test_a_python_deployments_file_that_exits_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "raise SystemExit('bye')\n", name="deps.py")
    with pytest.raises(InvalidDeployment, match=r"raised SystemExit\('bye'\) while loading"):
        load_file(path)


def test_apply_stores_the_flow_parameter_schema_and_runs_are_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, """
deployments:
  - {name: add, entrypoint: "flowdefs.py:adder", parameters: {b: 2}}
  - {name: plain, entrypoint: "flowdefs:plain"}
""")
    add, plain = load_file(path)
    schema = add.parameter_openapi_schema
    assert schema is not None
    assert schema["required"] == ["a"] and schema["additionalProperties"] is False
    assert schema["properties"]["a"]["type"] == "integer"
    assert check_run_parameters(add, {"a": 1}) is None
    for given, problem in (
        ({"a": 1, "c": 3}, "unknown parameter 'c' (the flow takes: a, b)"),
        ({"a": "one"}, "parameter 'a': 'one' is not of type 'integer'"),
        ({}, "missing required parameter 'a'"),
    ):
        with pytest.raises(InvalidDeployment) as info:
            check_run_parameters(add, given)
        assert str(info.value) == f"invalid parameters for deployment 'add': {problem}"
    assert plain.parameter_openapi_schema is not None  # an undecorated function too
    # a deployment stored by an older version has no schema: its flow is loaded instead
    old = add.model_copy(update={"parameter_openapi_schema": None})
    with pytest.raises(InvalidDeployment, match="unknown parameter 'c'"):
        check_run_parameters(old, {"a": 1, "c": 3})
    gone = old.model_copy(update={"entrypoint": "nowhere.py:adder"})
    note = check_run_parameters(gone, {"a": 1})
    assert note is not None and note.startswith("parameters not checked against the flow")


def test_parameter_schema_of_odd_signatures() -> None:
    class Opaque:  # local: its annotation cannot be resolved, the others still count
        pass

    def flexible(model_config: int, thing: Opaque = Opaque(), *args: int,
                 **extra: str) -> None:
        pass

    schema = parameter_schema(flexible)
    assert set(schema["properties"]) == {"model_config", "thing"}
    assert "additionalProperties" not in schema or schema["additionalProperties"] is not False
    assert parameter_problems(schema, {}, {"model_config": 1, "thing": "any", "more": "x"}) \
        == []
    assert parameter_problems(schema, {}, {"model_config": [1]}) == [
        "parameter 'model_config': [1] is not of type 'integer'"]


async def test_run_deployment_action_with_parameters_that_do_not_fit_fails_at_once(
    redis: aioredis.Redis, keys: Keys, settings: Settings, tmp_path: Path
) -> None:
    path = _write(tmp_path, "deployments:\n  - {name: add, entrypoint: 'flowdefs.py:adder'}\n")
    await DeploymentStore(redis, keys).apply(load_file(path))
    bad = automation(RunDeployment(deployment="add", parameters={"a": "{{ event.payload.n }}",
                                                                 "c": 1}), name="bad")
    good = automation(RunDeployment(deployment="add", parameters={"a": "{{ event.payload.n }}"}),
                      name="good")
    bad, good = await stored(AutomationStore(redis, keys), bad, good)
    await fire(redis, keys, bad, disk_event(n="x"))
    await fire(redis, keys, good, disk_event(n=2))
    async with Dispatcher(redis, settings, ports=build_ports(redis, settings, keys),
                          keys=keys) as dispatcher:
        await dispatcher.drain()
    [failed] = [e for e in await action_events(redis, keys) if e["event"].endswith(".failed")]
    assert failed["payload"]["reason"] == "validation"
    assert failed["payload"]["will_retry"] is False
    assert failed["payload"]["message"] == (
        "invalid parameters for deployment 'add': unknown parameter 'c' (the flow takes: a, b); "
        "parameter 'a': 'x' is not of type 'integer'")
    [run] = await FlowRunStore(redis, settings, keys).all()
    assert run.parameters == {"a": 2}


def test_cron_schedule_honours_time_zone() -> None:
    schedule = CronSchedule(cron="0 9 * * *", timezone="America/New_York")
    summer = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert [t.hour for t in schedule.times_between(summer, summer + timedelta(hours=20))] == [13]
    winter = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert [t.hour for t in schedule.times_between(winter, winter + timedelta(hours=20))] == [14]


async def test_store_apply_is_an_upsert_by_name(redis: aioredis.Redis, keys: Keys) -> None:
    store = DeploymentStore(redis, keys)
    first = Deployment(name="d", entrypoint="m:f")
    [(kind, stored)] = await store.apply([first])
    assert kind == "created"
    await store.set_paused(stored.id, True)
    [(kind, again)] = await store.apply([Deployment(name="d", entrypoint="m:g")])
    assert kind == "updated"
    assert again.id == stored.id and again.paused is True
    assert (await store.resolve("d")).entrypoint == "m:g"
    assert (await store.resolve(str(stored.id))).name == "d"
    with pytest.raises(NotFound):
        await store.resolve("nope")


async def _interval_deployment(redis: aioredis.Redis, keys: Keys, seconds: int = 2) -> Deployment:
    dep = Deployment(name="tick", entrypoint="flowdefs.py:adder", flow_name="adder",
                     parameters={"a": 1}, schedules=[{"interval": seconds}])
    [(_, stored)] = await DeploymentStore(redis, keys).apply([dep])
    return stored


async def test_two_schedulers_create_each_run_once(
    redis: aioredis.Redis, keys: Keys, settings: Settings
) -> None:
    dep = await _interval_deployment(redis, keys)
    a, b = Scheduler(redis, settings, keys), Scheduler(redis, settings, keys)
    t0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert await a.tick(t0) == []  # a new schedule starts from now
    created = await a.schedule(t0 + timedelta(seconds=5)) + await b.schedule(
        t0 + timedelta(seconds=5))
    await redis.hset(keys.schedule_cursors, f"{dep.id}:{dep.schedules[0].id}",
                     repr(t0.timestamp()))
    created += await b.schedule(t0 + timedelta(seconds=5))
    assert len(created) == 2  # 12:00:02 and 12:00:04, once each
    runs = await FlowRunStore(redis, settings, keys).all()
    assert sorted(r.expected_start.second for r in runs) == [2, 4]
    assert all(r.creator == {"kind": "deployment", "id": str(dep.id), "name": "tick"}
               for r in runs)
    events = await read_events(redis, keys)
    assert names(events) == ["prefect.flow-run.Scheduled"] * 2
    creator = events[0].resource_in_role("creator")
    assert creator is not None and creator["prefect.resource.id"] == f"prefect.deployment.{dep.id}"
    assert await redis.xlen(keys.runs) == 2


async def test_paused_deployment_makes_no_runs_and_resumes_without_backlog(
    redis: aioredis.Redis, keys: Keys, settings: Settings
) -> None:
    dep = await _interval_deployment(redis, keys)
    scheduler = Scheduler(redis, settings, keys)
    store = DeploymentStore(redis, keys)
    t0 = datetime.now(UTC)
    await scheduler.tick(t0)
    await store.set_paused(dep.id, True)
    assert await scheduler.schedule(t0 + timedelta(seconds=60)) == []
    resumed = await store.set_paused(dep.id, False)
    assert resumed.paused is False
    # resumed "now": only the occurrences after the resume count, not the paused minute
    created = await scheduler.schedule(datetime.now(UTC) + timedelta(seconds=4.5))
    assert 1 <= len(created) <= 3


async def test_inactive_schedule_makes_no_runs(
    redis: aioredis.Redis, keys: Keys, settings: Settings
) -> None:
    dep = Deployment(name="off", entrypoint="m:f", flow_name="f",
                     schedules=[{"interval": 1, "active": False}])
    await DeploymentStore(redis, keys).apply([dep])
    scheduler = Scheduler(redis, settings, keys)
    t0 = datetime.now(UTC)
    await scheduler.tick(t0)
    assert await scheduler.schedule(t0 + timedelta(seconds=10)) == []


async def test_catch_up_after_an_outage_is_bounded(
    redis: aioredis.Redis, keys: Keys, settings: Settings
) -> None:
    await _interval_deployment(redis, keys, seconds=1)
    scheduler = Scheduler(redis, settings, keys)
    t0 = datetime.now(UTC)
    await scheduler.tick(t0)
    created = await scheduler.schedule(t0 + timedelta(hours=1))
    assert len(created) == settings.scheduler_max_catchup
