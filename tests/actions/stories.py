"""Story helpers for action tests: an automation, an event, a firing on the stream, and
readers for the action events and dead letters the dispatcher writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import orjson
import redis.asyncio as aioredis

from actions.models import Action
from automations.events import Event
from automations.insight.dead_letters import dead_keys, read_all
from automations.keys import Keys
from automations.models import Automation
from automations.store import AutomationStore
from triggers.firing import Firing, TriggerState
from triggers.models import EventTrigger


def automation(*actions: Action, name: str = "storm", **fields: Any) -> Automation:
    return Automation(
        name=name,
        trigger=EventTrigger(expect={"disk.full"}, match={"prefect.resource.id": "host.*"}),
        actions=list(actions), **fields,
    )


def disk_event(host: str = "host.db1", **payload: Any) -> Event:
    return Event(event="disk.full", resource={"prefect.resource.id": host,
                                              "prefect.resource.name": host.split(".")[-1]},
                 payload=payload or {"free_mb": 12})


async def fire(
    redis: aioredis.Redis, keys: Keys, a: Automation, event: Event | None = None,
    *, states: Sequence[TriggerState] = (TriggerState.Triggered,),
    labels: dict[str, str] | None = None,
) -> Firing:
    """Write a firing of ``a`` to the firings stream, as the engine would."""
    firing = Firing(
        automation_id=a.id, trigger_id=a.trigger.id, trigger_states=list(states),
        triggered=datetime.now(UTC), triggering_labels=labels or {},
        triggering_event=None if event is None else event.to_dict(),
        automation_triggered_event_id=uuid4(),
    )
    await redis.xadd(keys.of(a.id).firings, {b"data": firing.to_json()})
    return firing


async def stored(store: AutomationStore, *automations: Automation) -> list[Automation]:
    await store.apply(list(automations))
    return [await store.by_name(a.name) for a in automations]


async def action_events(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every ``prefect.automation.action.*`` event on the events stream, in order."""
    raw: Any = await redis.xrange(keys.events)
    found = [orjson.loads(fields[b"data"]) for _, fields in raw]
    return [e for e in found if e["event"].startswith("prefect.automation.action.")]


async def dead_letters(redis: aioredis.Redis, keys: Keys) -> list[dict[str, str]]:
    """Every firings dead letter (given-up actions and every outbox's rejects), oldest first."""
    letters = await read_all(redis, dead_keys(keys, "firings"))
    return [letter.fields for letter in reversed(letters)]
