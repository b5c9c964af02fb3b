"""How the dispatcher reads stored automations: one whose stored JSON no longer validates is
reported as invalid (not as deleted), for a firing and for a retry; and an automation is
validated once per stored version, not once per batch."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from actions.models import CallWebhook, DoNothing
from automations.dispatch.dispatcher import Dispatcher
from automations.keys import Keys
from automations.models import Automation
from automations.store import AutomationStore
from tests.actions.stories import automation, dead_letters, disk_event, fire, stored
from tests.sinks import HttpSink, Response


async def invalidate(redis: aioredis.Redis, keys: Keys, a: Automation) -> None:
    """Store JSON for ``a`` that no longer validates, as another version or a hand edit might."""
    data = a.model_dump(mode="json")
    data["actions"] = [{"type": "no-such-action"}]
    await redis.hset(keys.automations, str(a.id), orjson.dumps(data))


async def test_automation_made_invalid_after_it_fired_is_dead_lettered_as_invalid(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(DoNothing()))
    await fire(redis, keys, a, disk_event())
    await invalidate(redis, keys, a)

    await dispatcher.drain()

    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith(
        f"automation {a.id} is stored but no longer valid: actions[0]: Input tag 'no-such-action'")
    assert "deleted" not in dead["reason"]
    assert dispatcher.counts["executed"] == 0


async def test_retry_of_an_automation_made_invalid_gives_up_as_invalid(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    http_sink: HttpSink,
) -> None:
    http_sink.script("/hook", Response(429, b"later", {"Retry-After": "1"}))
    [a] = await stored(store, automation(CallWebhook(url=http_sink.url("/hook"))))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain(wait_retries=False)
    assert dispatcher.counts["retried"] == 1
    await invalidate(redis, keys, a)

    await dispatcher.drain()

    [dead] = await dead_letters(redis, keys)
    assert dead["reason"].startswith(f"automation {a.id} is stored but no longer valid: actions[0]")
    assert dead["attempts"] == "1"
    assert len(http_sink.received("/hook")) == 1
    assert dispatcher.counts["gave_up"] == 1


async def test_an_automation_is_validated_once_per_stored_version(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [a] = await stored(store, automation(DoNothing()))
    validated: list[Automation] = []
    validate = Automation.model_validate_json

    def counting(data: Any, **kwargs: Any) -> Automation:
        validated.append(validate(data, **kwargs))
        return validated[-1]

    monkeypatch.setattr(Automation, "model_validate_json", counting)
    for _ in range(30):
        await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    for _ in range(30):  # a second batch: same stored JSON, no validation
        await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert [v.id for v in validated] == [a.id]
    assert dispatcher.counts["executed"] == 60

    await store.apply([automation(DoNothing(), description="changed")])
    before = len(validated)  # applying validates too; count only what dispatching does
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    assert len(validated) == before + 1
    assert validated[-1].description == "changed"
