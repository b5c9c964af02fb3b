"""Proactive triggers: timer on the deadlines, exactly once, lag compensation, the DESIGN.md
section 5 fixes, Resolved firings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import redis.asyncio as aioredis

from automations.engine.timer import ProactiveTimer
from automations.events import utcnow
from automations.settings import Settings
from tests.automations.engine_harness import (
    Clock,
    Harness,
    at,
    automation,
    event,
    event_ids,
)
from tests.wait import wait_until
from triggers.firing import TriggerState

RUNNING = "prefect.flow-run.Running"
COMPLETED = "prefect.flow-run.Completed"


def stuck(**fields: Any) -> dict[str, Any]:
    """'Running not followed by Completed within 60 s', per flow run."""
    return {
        "posture": "Proactive", "after": [RUNNING], "expect": [COMPLETED],
        "for_each": ["prefect.resource.id"], "threshold": 1, "within": 60, **fields,
    }


async def test_fires_when_the_expected_event_does_not_come(h: Harness, clock: Clock) -> None:
    a = automation(stuck())
    await h.load(a)
    running = event(RUNNING, 0, "run-1")
    assert await h.send(running) == []
    clock.advance(59)
    assert await h.tick() == []
    clock.advance(1)
    [firing] = await h.tick()
    assert firing.automation_id == a.id
    assert event_ids([firing]) == [str(running.id)]
    assert firing.triggering_labels == {"prefect.resource.id": "run-1"}
    assert await h.tick() == []  # deleted after firing (it has after)
    [triggered] = await h.automation_events()
    assert triggered.resource["prefect.posture"] == "Proactive"


async def test_no_fire_when_the_expected_event_comes(h: Harness, clock: Clock) -> None:
    await h.load(automation(stuck()))
    await h.send(event(RUNNING, 0, "run-1"), event(RUNNING, 0, "run-2"))
    await h.send(event(COMPLETED, 30, "run-1"))
    clock.advance(120)
    firings = await h.tick()
    assert [f.triggering_labels["prefect.resource.id"] for f in firings] == ["run-2"]


async def test_expect_before_after_is_no_false_firing(h: Harness, clock: Clock) -> None:
    await h.load(automation(stuck()))
    await h.send(event(COMPLETED, 5, "run-1"))  # delivered first, occurred after Running
    await h.send(event(RUNNING, 0, "run-1"))
    clock.advance(120)
    assert await h.tick() == []


async def test_late_event_beyond_the_end_fires_at_once(h: Harness, clock: Clock) -> None:
    await h.load(automation(stuck()))
    await h.send(event(RUNNING, 0, "run-1"))
    late = event(COMPLETED, 90, "run-1")  # the timer has not run yet
    assert event_ids(await h.send(late)) == [str(late.id)]


async def test_global_window_rolls_and_honours_threshold(h: Harness, clock: Clock) -> None:
    await h.load(automation({
        "posture": "Proactive", "expect": [COMPLETED], "threshold": 1, "within": 10,
    }))
    assert await h.tick() == []  # opens [T0, T0+10)
    clock.advance(10)
    assert len(await h.tick()) == 1  # nothing came: fires and rolls to [10, 20)
    await h.send(event(COMPLETED, 15))
    clock.advance(10)
    assert await h.tick() == []  # met in [10, 20)
    clock.advance(10)
    assert len(await h.tick()) == 1


async def test_global_with_after_has_no_window_until_after(h: Harness, clock: Clock) -> None:
    await h.load(automation({
        "posture": "Proactive", "after": [RUNNING], "expect": [COMPLETED], "within": 10,
    }))
    clock.advance(100)
    assert await h.tick() == []
    await h.send(event(RUNNING, 100))
    clock.advance(10)
    assert len(await h.tick()) == 1


async def test_heartbeat_slides_the_window(h: Harness, clock: Clock) -> None:
    beat = "heartbeat"
    await h.load(automation({
        "posture": "Proactive", "after": [beat], "expect": [beat], "within": 30,
    }))
    for t in (0, 20, 40):
        clock.now = at(t)
        await h.send(event(beat, t))
        assert await h.tick() == []
    clock.now = at(69)
    assert await h.tick() == []
    clock.now = at(70)
    assert len(await h.tick()) == 1


async def test_exactly_once_across_timers(
    h: Harness, clock: Clock, redis: aioredis.Redis, settings: Settings
) -> None:
    await h.load(automation(stuck()))
    await h.send(*[event(RUNNING, 0, f"run-{i}") for i in range(50)])
    clock.advance(61)
    timers = [ProactiveTimer(redis, settings, clock=clock) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for timer in timers:
            tg.start_soon(timer.tick)
    firings = await h.firings()
    assert len(firings) == 50
    assert len({f.triggering_labels["prefect.resource.id"] for f in firings}) == 50
    assert sum(t.fired for t in timers) == 50


async def test_lag_compensation(h: Harness, clock: Clock) -> None:
    await h.load(automation(stuck()))
    # the engine is 30 s behind: the newest event it processed occurred 30 s ago
    clock.now = at(30)
    await h.send(event(RUNNING, 0, "run-1"))
    clock.now = at(75)  # window [0, 60) ended 15 s ago, but as of the lagged clock it is 45
    assert await h.tick() == []
    clock.now = at(90)
    assert len(await h.tick()) == 1


async def test_resolved_after_a_proactive_firing(h: Harness, clock: Clock) -> None:
    await h.load(automation(stuck()))
    await h.send(event(RUNNING, 0, "run-1"))
    clock.advance(61)
    assert len(await h.tick()) == 1
    done = event(COMPLETED, 100, "run-1")
    [resolved] = await h.send(done)
    assert resolved.trigger_states == [TriggerState.Resolved]
    assert event_ids([resolved]) == [str(done.id)]
    names = [e.event for e in await h.automation_events()]
    assert names == ["prefect.automation.triggered", "prefect.automation.resolved"]


async def test_timer_fires_within_a_second_of_window_end(
    redis: aioredis.Redis, settings: Settings
) -> None:
    h = Harness(redis, settings, Clock(utcnow()))
    h.engine.clock = utcnow
    await h.load(automation(stuck(within=10)))
    start = utcnow() - timedelta(seconds=9.3)
    running = event(RUNNING, 0, "run-1").model_copy(update={"occurred": start})
    # a current event after it: the engine is not lagging (offset ~0)
    await h.send(running, event("other", 0).model_copy(update={"occurred": utcnow()}))
    timer = ProactiveTimer(redis, settings)
    stopping = anyio.Event()
    end = start + timedelta(seconds=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(timer.run, stopping)
        await wait_until(h.firings, timeout=5, what="the timer firing")
        lateness = (utcnow() - end).total_seconds()
        stopping.set()
    assert lateness < 1.0


async def test_a_bucket_keeps_its_state_and_not_its_trigger_or_counter_key(
    h: Harness, clock: Clock
) -> None:
    """The trigger id and the Resolved counter's key are read off the bucket's key: a bucket
    stores only its window, count, labels and last event."""
    a = automation(stuck())
    await h.load(a)
    running = event(RUNNING, 0, "run-1")
    await h.send(running)
    part = h.keys.of(a.id)
    [key] = [k async for k in h.redis.scan_iter(match=part.bucket(str(a.id), "*", "*"))]
    fields = await h.redis.hgetall(key)
    assert set(fields) == {b"s", b"e", b"c", b"lb", b"l", b"i"}
    assert fields[b"i"] == str(running.id).encode()
    clock.advance(61)
    [firing] = await h.tick()
    assert firing.triggering_labels == {"prefect.resource.id": "run-1"}
    [resolved] = await h.send(event(COMPLETED, 100, "run-1"))
    assert resolved.trigger_states == [TriggerState.Resolved]


async def test_a_bucket_stored_with_its_trigger_and_counter_key_still_fires_and_resolves(
    h: Harness, clock: Clock
) -> None:
    """Buckets written before they were read off the key (fields ``t`` and ``u``) are read
    as before: the extra fields are ignored."""
    a = automation(stuck())
    await h.load(a)
    await h.send(event(RUNNING, 0, "run-1"))
    part = h.keys.of(a.id)
    trigger_id = str(a.trigger.id)
    key = part.bucket(str(a.id), trigger_id, '["run-1"]')
    assert await h.redis.exists(key) == 1
    await h.redis.hset(key, mapping={
        "t": trigger_id, "u": part.unresolved(str(a.id), trigger_id, '["run-1"]')})
    clock.advance(61)
    [firing] = await h.tick()
    assert firing.trigger_id == a.trigger.id
    [resolved] = await h.send(event(COMPLETED, 100, "run-1"))
    assert resolved.trigger_states == [TriggerState.Resolved]
