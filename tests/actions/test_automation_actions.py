"""pause-/resume-automation (selected and inferred) and do-nothing, through the dispatcher."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from actions.models import DoNothing, PauseAutomation, ResumeAutomation
from automations.dispatch.dispatcher import Dispatcher
from automations.events import Event
from automations.keys import Keys
from automations.store import AutomationStore
from tests.actions.stories import action_events, automation, disk_event, fire, stored


async def test_pause_selected_then_resume_inferred(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    target = automation(DoNothing(), name="target")
    [target] = await stored(store, target)
    pauser = automation(PauseAutomation(automation_id=target.id), name="pauser")
    resumer = automation(ResumeAutomation(source="inferred"), name="resumer")
    pauser, resumer = await stored(store, pauser, resumer)

    await fire(redis, keys, pauser, disk_event())
    await dispatcher.drain()
    assert (await store.by_name("target")).enabled is False
    executed = (await action_events(redis, keys))[-1]
    assert executed["event"] == "prefect.automation.action.executed"
    assert {"prefect.resource.id": f"prefect.automation.{target.id}",
            "prefect.resource.role": "target", "prefect.resource.name": "target"} \
        in executed["related"]

    about_target = Event(event="ops.resume", resource={
        "prefect.resource.id": f"prefect.automation.{target.id}"})
    await fire(redis, keys, resumer, about_target)
    await dispatcher.drain()
    assert (await store.by_name("target")).enabled is True


async def test_inference_failures_are_permanent(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(PauseAutomation(source="inferred"), name="nothing"))
    await fire(redis, keys, a, None)  # a proactive firing without an event
    await fire(redis, keys, a, disk_event())  # an event about no automation
    await dispatcher.drain()
    messages = sorted(e["payload"]["message"] for e in await action_events(redis, keys)
                      if e["event"].endswith(".failed"))
    assert messages == ["No automation could be inferred", "No event to infer the automation from"]


async def test_pausing_a_deleted_automation_is_not_found(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    gone = automation(DoNothing(), name="gone")
    [a] = await stored(store, automation(PauseAutomation(automation_id=gone.id)))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    failed = (await action_events(redis, keys))[-1]
    assert failed["payload"]["reason"] == "not-found"


async def test_pause_and_resume_by_name(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [target] = await stored(store, automation(DoNothing(), name="target"))
    pauser, resumer = await stored(
        store, automation(PauseAutomation(automation="target"), name="pauser"),
        automation(ResumeAutomation(automation="target"), name="resumer"))
    await fire(redis, keys, pauser, disk_event())
    await dispatcher.drain()
    assert (await store.by_name("target")).enabled is False
    executed = (await action_events(redis, keys))[-1]
    assert executed["payload"]["automation_id"] == str(target.id)
    await fire(redis, keys, resumer, disk_event())
    await dispatcher.drain()
    assert (await store.by_name("target")).enabled is True


async def test_an_unknown_automation_name_fails_at_once_with_the_name(
    redis: aioredis.Redis, keys: Keys, store: AutomationStore, dispatcher: Dispatcher,
) -> None:
    [a] = await stored(store, automation(PauseAutomation(automation="ghost")))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    [failed] = [e for e in await action_events(redis, keys) if e["event"].endswith(".failed")]
    assert failed["payload"]["reason"] == "not-found"
    assert failed["payload"]["message"] == "no automation named 'ghost'"
    assert failed["payload"]["will_retry"] is False


def test_a_name_or_an_id_is_required_and_not_with_inferred() -> None:
    assert PauseAutomation.model_validate({"automation": "x"}).automation == "x"
    with pytest.raises(ValidationError, match=r"automation_id \(or automation\) is required"):
        PauseAutomation.model_validate({})
    with pytest.raises(ValidationError, match="not allowed when source is 'inferred'"):
        ResumeAutomation.model_validate({"source": "inferred", "automation": "x"})
