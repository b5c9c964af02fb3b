"""One contract every delivering executor passes (STYLE.md lesson 14): the classification of
200/400/401/429/500/timeout, and no secret in any error, event, dead letter or log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from actions.models import Action, CallWebhook, SendNotification
from automations.blocks import BlockStore
from automations.dispatch.dispatcher import Dispatcher
from automations.dispatch.notifiers import NotifierPool
from automations.keys import Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, disk_event, fire, stored
from tests.sinks import HttpSink, Response

TOKEN = "S3cr3tT0kenXyz"
API_KEY = "Ap1KeyQwerty42"
PASSWORD = "hunter2hunter2"
HEADER_SECRET = "HeaderS3cretValue"


@dataclass(frozen=True)
class Case:
    response: Response
    outcome: str
    reason: str | None
    will_retry: bool | None


CASES = {
    "200": Case(Response(200, b"ok"), "executed", None, None),
    "400": Case(Response(400, f"bad token {TOKEN}".encode()), "failed", "http-client-error",
                False),
    "401": Case(Response(401, b"who are you"), "failed", "unauthorized", False),
    "429": Case(Response(429, b"slow down", {"Retry-After": "0"}), "failed", "rate-limited",
                True),
    "500": Case(Response(500, f"crash near {API_KEY}".encode()), "failed", "server-error", True),
    "timeout": Case(Response(200, delay=3), "failed", "timeout", True),
}


def webhook(block: str) -> Action:
    return CallWebhook(block=block, payload={"text": "{{ event.event }}"},
                       headers={"X-Api-Key": HEADER_SECRET})


def notification(block: str) -> Action:
    return SendNotification(subject="s", body="{{ event.event }}", block=block)


EXECUTORS: dict[str, tuple[Callable[[str], Action], str]] = {
    "call-webhook": (webhook, "http"),
    "send-notification": (notification, "json"),
}


@pytest.fixture
async def contract_dispatcher(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> AsyncIterator[Dispatcher]:
    quick = settings.model_copy(update={"action_timeout_s": 0.5, "action_max_attempts": 2})
    await NotifierPool.warm_up()  # the first notification must not pay for plugin loading
    async with Dispatcher(redis, quick, ports=build_ports(redis, quick, keys), keys=keys) as d:
        yield d


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("kind", list(EXECUTORS))
async def test_executor_contract(
    kind: str, case: str, redis: aioredis.Redis, keys: Keys, store: AutomationStore,
    contract_dispatcher: Dispatcher, http_sink: HttpSink, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    make, scheme = EXECUTORS[kind]
    expected = CASES[case]
    path = f"/hook/{TOKEN}"
    http_sink.script(path, expected.response)
    secret_url = (http_sink.url(path, scheme).replace("://", f"://user:{PASSWORD}@")
                  + f"?apikey={API_KEY}")
    await BlockStore(redis, keys).set("ops", secret_url)
    [a] = await stored(store, automation(make("ops")))
    await fire(redis, keys, a, disk_event())

    await contract_dispatcher.drain(wait_retries=False)

    assert len(http_sink.received(path)) == 1
    outcome = (await action_events(redis, keys))[-1]
    assert outcome["event"] == f"prefect.automation.action.{expected.outcome}"
    assert outcome["payload"].get("reason") == expected.reason
    # A notification that timed out may have been delivered: never sent again (at most once).
    at_most_once = kind == "send-notification" and case == "timeout"
    assert outcome["payload"].get("will_retry") == (False if at_most_once else
                                                    expected.will_retry)
    everything = [str(await redis.xrange(keys.events)),
                  str(await redis.xrange(keys.dead("firings"))),
                  str(await redis.hgetall(keys.action_retry_jobs)), caplog.text]
    for secret in (TOKEN, API_KEY, PASSWORD, HEADER_SECRET):
        for text in everything:
            assert secret not in text


async def test_missing_block_fails_permanently_naming_the_variable(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(CallWebhook(block="nowhere")))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    failed = (await action_events(redis, keys))[-1]
    assert failed["payload"]["reason"] == "missing-secret"
    assert "AUTOMATIONS_BLOCK_NOWHERE" in failed["payload"]["message"]
    assert failed["payload"]["will_retry"] is False


async def test_block_from_environment(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOMATIONS_BLOCK_OPS_HOOK", http_sink.url(f"/env/{TOKEN}"))
    [a] = await stored(store, automation(CallWebhook(block="ops-hook")))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert len(http_sink.received(f"/env/{TOKEN}")) == 1
    executed = (await action_events(redis, keys))[-1]
    assert executed["payload"]["url"] == "block:ops-hook"
    assert TOKEN not in str(await redis.xrange(keys.events))
