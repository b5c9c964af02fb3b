"""Dead letters end to end: a real engine and a real dispatcher dead-letter things, and a
re-drive makes the engine evaluate (and fire on) the event again, or delivers the given-up
action to a real HTTP sink; ``automations dead ...`` through the CLI."""

from __future__ import annotations

import time
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from actions.models import CallWebhook
from automations.cli.app import app
from automations.cli.common import EXIT_NOT_FOUND, EXIT_USER_ERROR
from automations.dispatch.dispatcher import Dispatcher
from automations.errors import NotFound
from automations.insight.dead_letters import dead_keys, dead_streams, find, read, redrive
from automations.insight.history import DEAD, EXECUTED, read_history
from automations.keys import Keys
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import automation, disk_event, fire, stored
from tests.automations.engine_harness import Harness, event
from tests.automations.engine_harness import automation as engine_automation
from tests.sinks import HttpSink, Response

FAILED = "prefect.flow-run.Failed"


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "action_retry_base_s": 0.02, "action_retry_max_s": 0.05, "action_timeout_s": 3.0,
        "action_max_attempts": 2, "action_retry_poll_s": 0.05,
    })


@pytest.fixture
def cli(settings: Settings) -> Any:
    env = {"AUTOMATIONS_REDIS_URL": str(settings.redis_url),
           "AUTOMATIONS_PREFIX": settings.prefix}

    async def invoke(*args: str, code: int = 0, given: str | None = None) -> str:
        result = await anyio.to_thread.run_sync(
            lambda: CliRunner().invoke(app, list(args), env=env, input=given))
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return str(result.stdout + result.stderr)

    return invoke


async def test_a_retried_dead_event_is_evaluated_again_and_fires(
    h: Harness, settings: Settings, keys: Keys, redis: aioredis.Redis,
) -> None:
    await h.load(engine_automation({"posture": "Reactive", "expect": [FAILED], "threshold": 1,
                                    "within": 0}))
    far = settings.max_future_s + 60
    early = event(FAILED, far, "flow-run.1")
    assert await h.send(early) == []  # too far ahead of the engine's clock: dead-lettered
    assert await dead_streams(redis, keys) == {keys.dead(keys.events): 1}
    [events_dead] = dead_keys(keys, "events")
    [letter] = await read(redis, events_dead)
    assert "ahead of the engine's clock" in letter.reason
    assert letter.source.startswith(f"{keys.events} ")
    assert letter.to_json(full=True)["payload"]["id"] == str(early.id)

    h.clock.advance(far)  # the producer's clock was right after all
    where = await redrive(redis, keys, letter, now=time.time())
    assert where.startswith(f"back on {keys.events} as ")
    await h.engine.run_until_idle()
    [firing] = await h.firings()
    assert firing.triggering_event is not None
    assert str(firing.triggering_event["id"]) == str(early.id)
    assert await redis.xlen(keys.dead(keys.events)) == 0
    with pytest.raises(NotFound):  # not twice
        await redrive(redis, keys, letter, now=time.time())


async def test_a_retried_dead_action_is_delivered(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/hook", Response(503), Response(503), Response(200))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/hook"))))
    firing = await fire(redis, keys, a, disk_event())
    await dispatcher.drain()  # two attempts, then given up
    [letter] = await read(redis, keys.dead("firings"))
    assert letter.is_action and letter.fields["attempts"] == "2"
    assert letter.source == f"action 0 (call-webhook) of firing {firing.id}"
    [record] = await read_history(redis, keys)
    assert record.actions[0].outcome == DEAD

    assert "scheduled now as attempt 3" in await redrive(redis, keys, letter, now=time.time())
    assert await redis.xlen(keys.dead("firings")) == 0
    await dispatcher.drain()
    requests = http_sink.received("/hook")
    assert len(requests) == 3
    assert requests[-1].headers["Idempotency-Key"] == f"{firing.id}:0"
    assert await redis.get(keys.done(f"{firing.id}:0")) == b"done"
    [record] = await read_history(redis, keys)
    assert record.actions[0].outcome == EXECUTED and record.actions[0].attempts == 3


async def test_a_retried_rejected_firing_goes_back_to_the_firings_stream(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    a = automation(CallWebhook(url=http_sink.url("/late")), name="late")  # not stored yet
    firing = await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [letter] = await read(redis, keys.partition(0).dead_firings)
    assert not letter.is_action and "does not exist" in letter.reason
    await stored(store, a)
    await redrive(redis, keys, letter, now=time.time())
    await dispatcher.drain()
    [request] = await http_sink.wait_for(1, "/late")
    assert request.headers["Idempotency-Key"] == f"{firing.id}:0"


async def test_find_errors(redis: aioredis.Redis, keys: Keys) -> None:
    with pytest.raises(ValueError, match="not a stream entry id"):
        await find(redis, keys, "abc")
    with pytest.raises(NotFound, match="no dead letter 1-0 in events"):
        await find(redis, keys, "1-0", "events")
    await redis.xadd(keys.dead("events"), {"data": "x"}, id="5-0")
    await redis.xadd(keys.dead("runs"), {"data": "y"}, id="5-0")
    with pytest.raises(ValueError, match="several dead streams"):
        await find(redis, keys, "5-0")
    assert (await find(redis, keys, "5-0", keys.dead("runs"))).fields == {"data": "y"}


async def test_cli_ls_show_retry_purge(
    h: Harness, settings: Settings, keys: Keys, redis: aioredis.Redis, cli: Any,
) -> None:
    await h.load(engine_automation({"posture": "Reactive", "expect": [FAILED], "threshold": 1,
                                    "within": 0}))
    far = settings.max_future_s + 60
    sent = [event(FAILED, far, f"flow-run.{i}") for i in range(4)]
    assert await h.send(*sent) == []
    raw: Any = await redis.xrange(keys.dead(keys.events))
    ids = [i.decode() for i, _ in raw]

    assert "events" in await cli("dead", "ls")
    [line] = (await cli("dead", "ls", "--json")).splitlines()
    assert orjson.loads(line) == {"stream": "events", "key": keys.dead(keys.events), "count": 4}
    listed = [orjson.loads(x) for x in (await cli("dead", "ls", "events", "--json")).splitlines()]
    assert [x["id"] for x in listed] == ids[::-1]
    assert ids[0] in await cli("dead", "ls", "events")
    shown = await cli("dead", "show", ids[0])
    assert "ahead of the engine's clock" in shown and f'"id": "{sent[0].id}"' in shown
    full = orjson.loads(await cli("dead", "show", ids[0], "events", "--json"))
    assert full["payload"]["event"] == FAILED and full["fields"]["source_stream"] == keys.events

    h.clock.advance(far)
    assert f"retried {ids[0]}" in await cli("dead", "retry", ids[0], "events")
    await h.engine.run_until_idle()
    assert len(await h.firings()) == 1
    assert "no dead letter 1-0" in await cli("dead", "retry", "1-0", code=EXIT_NOT_FOUND)
    assert "no dead letter" in await cli("dead", "show", ids[0], code=EXIT_NOT_FOUND)
    assert "--all needs a STREAM" in await cli("dead", "retry", "--all", code=EXIT_USER_ERROR)
    assert "one STREAM at most" in await cli("dead", "purge", "a", "b", code=EXIT_USER_ERROR)

    assert "purged 1" in await cli("dead", "purge", ids[1])
    await cli("dead", "purge", "--all", "events", given="n\n", code=1)  # declined: kept
    assert await redis.xlen(keys.dead(keys.events)) == 2
    assert "2 of 2 retried" in await cli("dead", "retry", "--all", "events")
    await h.engine.run_until_idle()
    assert len(await h.firings()) == 2
    await redis.xadd(keys.dead(keys.events), {"data": "{}"})  # no source stream recorded
    out = await cli("dead", "retry", "--all", "events", code=EXIT_USER_ERROR)
    assert "names no source stream" in out
    assert orjson.loads(await cli("dead", "purge", "--all", "events", "--yes", "--json")) == {
        "purged": 1}
    assert "no dead letters" in await cli("dead", "ls")
