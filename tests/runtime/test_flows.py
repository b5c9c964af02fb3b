"""@flow / @task: the state events, their labels, follows chains, retries, async, subflows."""

from __future__ import annotations

import itertools
import logging
import time

import pytest
import redis.asyncio as aioredis

from automations import emit, flow, task
from automations.events import Event
from automations.keys import Keys
from automations.runtime.states import flow_id
from automations.settings import Settings
from bench.redis_server import RedisServer
from tests.runtime.conftest import names, read_events


def _by_resource(events: list[Event], resource_id: str) -> list[Event]:
    return [e for e in events if e.resource["prefect.resource.id"] == resource_id]


async def test_flow_with_tasks_emits_prefect_state_events(
    runtime_env: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    @task(tags=["io"])
    def double(x: int) -> int:
        return 2 * x

    @flow(name="etl", tags=["nightly", "prod"])
    def etl(x: int) -> int:
        return double(x) + double(1)

    assert etl(3) == 8
    events = await read_events(redis, keys)
    assert names(events, "prefect.flow-run") == [
        "prefect.flow-run.Pending", "prefect.flow-run.Running", "prefect.flow-run.Completed"]
    assert names(events, "prefect.task-run") == [
        "prefect.task-run.Pending", "prefect.task-run.Running", "prefect.task-run.Completed"] * 2
    completed = events[-1]
    assert completed.resource["prefect.state-type"] == "COMPLETED"
    assert completed.resource["prefect.state-name"] == "Completed"
    assert completed.resource["prefect.resource.id"].startswith("prefect.flow-run.")
    flow_ref = completed.resource_in_role("flow")
    assert flow_ref is not None
    assert flow_ref["prefect.resource.id"] == f"prefect.flow.{flow_id('etl')}"
    assert flow_ref["prefect.resource.name"] == "etl"
    tags = [r["prefect.resource.id"] for r in completed.related
            if r["prefect.resource.role"] == "tag"]
    assert tags == ["prefect.tag.nightly", "prefect.tag.prod"]
    flow_run_events = _by_resource(events, completed.resource["prefect.resource.id"])
    for before, after in itertools.pairwise(flow_run_events):
        assert after.follows == before.id
    assert flow_run_events[0].follows is None
    task_event = next(e for e in events if e.event == "prefect.task-run.Completed")
    assert task_event.resource["prefect.resource.name"] == "double-1"
    parent = task_event.resource_in_role("flow-run")
    assert parent is not None
    assert parent["prefect.resource.id"] == completed.resource["prefect.resource.id"]
    task_tags = {r["prefect.resource.id"] for r in task_event.related
                 if r["prefect.resource.role"] == "tag"}
    assert task_tags == {"prefect.tag.io", "prefect.tag.nightly", "prefect.tag.prod"}


async def test_failing_flow_reraises_and_emits_failed(
    runtime_env: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    @flow
    def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        broken()
    events = await read_events(redis, keys)
    assert names(events) == ["prefect.flow-run.Pending", "prefect.flow-run.Running",
                             "prefect.flow-run.Failed"]
    assert events[-1].resource["prefect.state-type"] == "FAILED"
    assert "ValueError: boom" in events[-1].resource["prefect.state-message"]
    assert events[-1].payload["intended"] == {"from": "RUNNING", "to": "FAILED"}


async def test_retries_emit_awaiting_retry_and_retrying(
    runtime_env: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0.01)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return "ok"

    @flow(retries=1, retry_delay_seconds=[0.01])
    def outer() -> str:
        return flaky()

    assert outer() == "ok"
    events = await read_events(redis, keys)
    assert names(events, "prefect.task-run") == [
        "prefect.task-run.Pending", "prefect.task-run.Running",
        "prefect.task-run.AwaitingRetry", "prefect.task-run.Retrying",
        "prefect.task-run.AwaitingRetry", "prefect.task-run.Retrying",
        "prefect.task-run.Completed"]
    last = next(e for e in events if e.event == "prefect.task-run.Completed")
    assert last.resource["prefect.run-count"] == "3"


async def test_async_flow_with_async_task_and_subflow(
    runtime_env: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    @task
    async def fetch(n: int) -> int:
        return n + 1

    @flow(name="child")
    async def child(n: int) -> int:
        return await fetch(n)

    @flow(name="parent", tags=["t"])
    async def parent() -> int:
        return await child(1) + await fetch(10)

    assert await parent() == 13
    events = await read_events(redis, keys)
    child_done = next(e for e in events if e.event == "prefect.flow-run.Completed"
                      and e.resource_in_role("flow") is not None
                      and e.resource_in_role("flow")["prefect.resource.name"] == "child")  # type: ignore[index]
    assert child_done.resource_in_role("task-run") is not None  # the parent's stand-in task run
    assert {r["prefect.resource.id"] for r in child_done.related
            if r["prefect.resource.role"] == "tag"} == {"prefect.tag.t"}
    assert names(events, "prefect.flow-run").count("prefect.flow-run.Completed") == 2


async def test_plain_emit_still_works_without_decorators(
    runtime_env: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    emit("custom.thing.happened", resource="thing.1")
    assert names(await read_events(redis, keys)) == ["custom.thing.happened"]


def test_flow_survives_redis_down_and_flushes_when_it_returns(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis away during the flow: it still completes; buffered events are published later."""
    import redis as sync_redis

    prefix = "buffer-test"
    monkeypatch.setenv("AUTOMATIONS_REDIS_URL", own_redis.url)
    monkeypatch.setenv("AUTOMATIONS_PREFIX", prefix)
    monkeypatch.setenv("AUTOMATIONS_FLOW_FLUSH_TIMEOUT_S", "15")
    own_redis.stop()

    @task
    def restart_redis() -> None:
        # an outage longer than the client's own retries of a command (about 1.5 s at most)
        time.sleep(2.5)
        own_redis.start()

    @flow
    def resilient() -> str:
        restart_redis()  # emitted while Redis is down: buffered
        return "done"

    with caplog.at_level(logging.WARNING, logger="automations.runtime.sink"):
        assert resilient() == "done"
    assert any("buffering" in r.getMessage() for r in caplog.records)
    client = sync_redis.Redis.from_url(own_redis.url)
    try:
        entries = client.xrange(Keys(prefix).events)
    finally:
        client.close()
    got = [Event.from_json(f[b"data"]).event for _, f in entries or [] if f]
    assert got[0] == "prefect.flow-run.Pending"
    assert got[-1] == "prefect.flow-run.Completed"
    assert len(got) == 6


def test_flow_completes_when_redis_never_comes_back(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AUTOMATIONS_REDIS_URL", own_redis.url)
    monkeypatch.setenv("AUTOMATIONS_FLOW_FLUSH_TIMEOUT_S", "0.5")
    own_redis.stop()

    @flow
    def offline() -> int:
        return 7

    with caplog.at_level(logging.WARNING, logger="automations.runtime.sink"):
        assert offline() == 7
    assert any("could not be published" in r.getMessage() for r in caplog.records)
