"""The history stream: a real dispatcher delivering to a real HTTP sink records what fired and
each action's outcome; ``read_history`` and ``automations history`` read it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from actions.models import CallWebhook, DoNothing
from automations.cli.app import app
from automations.cli.common import EXIT_NOT_FOUND, EXIT_USER_ERROR
from automations.cli.history_cmd import parse_moment
from automations.dispatch.dispatcher import Dispatcher
from automations.insight.history import (
    DEAD,
    EXECUTED,
    FAILED,
    PENDING,
    RETRYING,
    fired_entry,
    read_history,
)
from automations.keys import Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "action_retry_base_s": 0.02, "action_retry_max_s": 0.05, "action_timeout_s": 3.0,
        "action_max_attempts": 2, "action_retry_poll_s": 0.05,
    })


def outcomes(record: Any) -> list[tuple[str, str]]:
    return [(a.type, a.outcome) for a in record.actions]


async def test_each_outcome_is_recorded_and_the_latest_wins(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    # Retry-After: the retry is not due yet when the first drain looks for due retries
    http_sink.script("/flaky", Response(503, headers={"Retry-After": "1"}))
    http_sink.script("/refused", Response(400))
    [a] = await stored(store, automation(
        CallWebhook(url=http_sink.url("/ok")), CallWebhook(url=http_sink.url("/flaky")),
        CallWebhook(url=http_sink.url("/refused"))))
    event = disk_event()
    firing = await fire(redis, keys, a, event)

    await dispatcher.drain(wait_retries=False)  # first attempts only: /flaky is retrying
    [record] = await read_history(redis, keys)
    assert record.firing_id == str(firing.id) and record.automation == "storm"
    assert record.automation_id == str(a.id) and record.event_id == str(event.id)
    assert abs(record.fired_at - firing.triggered) < timedelta(milliseconds=1)
    assert [a.outcome for a in record.actions] == [EXECUTED, RETRYING, FAILED]
    retrying = record.actions[1]
    assert retrying.attempts == 1 and retrying.detail is not None
    assert "503" in retrying.detail or "http" in retrying.detail
    assert "status_code=200" in str(record.actions[0].detail)

    await dispatcher.drain()  # the retry fails again: given up after 2 attempts
    [record] = await read_history(redis, keys)
    assert [a.outcome for a in record.actions] == [EXECUTED, DEAD, FAILED]
    assert record.actions[1].attempts == 2 and "given up after 2" in str(record.actions[1].detail)


async def test_a_redelivered_firing_is_recorded_once(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(DoNothing()))
    firing = await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    await redis.xadd(keys.partition(0).firings, {b"data": firing.to_json()})  # again
    await dispatcher.drain()
    assert await redis.xlen(keys.history) == 2  # fired + executed, not again
    [record] = await read_history(redis, keys)
    assert outcomes(record) == [("do-nothing", EXECUTED)]


async def test_filters_newest_first_and_limit(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    one, two = await stored(store, automation(DoNothing(), name="one"),
                            automation(DoNothing(), name="two"))
    events = [disk_event(f"host.{i}") for i in range(3)]
    firings = [await fire(redis, keys, one, events[0]), await fire(redis, keys, two, events[1]),
               await fire(redis, keys, one, events[2])]
    await dispatcher.drain()

    everything = await read_history(redis, keys)
    assert [r.firing_id for r in everything] == [str(f.id) for f in reversed(firings)]
    assert [r.firing_id for r in await read_history(redis, keys, limit=1)] == [str(firings[2].id)]
    mine = await read_history(redis, keys, automation_id=str(one.id))
    assert [r.automation for r in mine] == ["one", "one"]
    [by_event] = await read_history(redis, keys, event_id=str(events[1].id))
    assert by_event.firing_id == str(firings[1].id)
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await read_history(redis, keys, since=future) == []
    assert await read_history(redis, keys, until=datetime.now(UTC) - timedelta(hours=1)) == []
    assert len(await read_history(redis, keys, since=datetime.now(UTC) - timedelta(minutes=5),
                                  until=future)) == 3


async def test_history_can_be_turned_off(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, fast: Settings,
) -> None:
    off = fast.model_copy(update={"history_maxlen": 0})
    [a] = await stored(store, automation(DoNothing()))
    await fire(redis, keys, a, disk_event())
    async with Dispatcher(redis, off, ports=build_ports(redis, off, keys), keys=keys) as d:
        assert await d.drain() == 1
    assert await redis.exists(keys.history) == 0


async def test_planned_actions_without_outcome_are_pending_and_junk_is_skipped(
    redis: aioredis.Redis, keys: Keys,
) -> None:
    await redis.xadd(keys.history, {b"data": b"not json"})
    await redis.xadd(keys.history, {b"other": b"x"})
    await redis.xadd(keys.history, {b"data": fired_entry(
        firing_id="f1", automation_id="a1", automation="auto",
        fired_at=datetime(2026, 1, 1, tzinfo=UTC), event_id=None, actions=["call-webhook"])})
    [record] = await read_history(redis, keys)
    assert outcomes(record) == [("call-webhook", PENDING)] and record.event_id is None


def test_parse_moment() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_moment("1h30m", now) == now - timedelta(minutes=90)
    assert parse_moment("2d", now) == now - timedelta(days=2)
    assert parse_moment("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_moment("yesterday", now)


async def test_cli_table_json_and_errors(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    settings: Settings, http_sink: HttpSink,
) -> None:
    http_sink.script("/down", Response(400))
    [a] = await stored(store, automation(DoNothing(), CallWebhook(url=http_sink.url("/down")),
                                         name="disk-alert"))
    event = disk_event()
    firing = await fire(redis, keys, a, event)
    await dispatcher.drain()
    env = {"AUTOMATIONS_REDIS_URL": str(settings.redis_url), "AUTOMATIONS_PREFIX": keys.prefix}

    async def cli(*args: str, code: int = 0) -> str:
        result = await anyio.to_thread.run_sync(
            lambda: CliRunner().invoke(app, list(args), env=env))
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return str(result.stdout + result.stderr)

    table = await cli("history", "disk-alert", "--since", "1h")
    assert "disk-alert" in table and "executed" in table and "failed" in table
    [line] = (await cli("history", "--json")).splitlines()
    assert orjson.loads(line) | {"actions": None} == {
        "automation": "disk-alert", "automation_id": str(a.id), "firing_id": str(firing.id),
        "fired_at": firing.triggered.isoformat(), "event_id": str(event.id), "actions": None}
    actions = orjson.loads(line)["actions"]
    assert [(x["type"], x["outcome"]) for x in actions] == [("do-nothing", EXECUTED),
                                                            ("call-webhook", FAILED)]
    assert "client-error" in actions[1]["detail"] or "400" in actions[1]["detail"]
    assert (await cli("history", str(a.id), "--json")).count("\n") == 1
    assert await cli("history", "--since", "2099-01-01", "--json") == ""
    assert "no automation named 'nope'" in await cli("history", "nope", code=EXIT_NOT_FOUND)
    assert "neither a duration" in await cli("history", "--since", "soon",
                                             code=EXIT_USER_ERROR)
