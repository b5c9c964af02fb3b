"""``follows`` ordering: held in Redis, released by the leader (any engine) or after the
bounded wait; duplicates evaluated once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from automations.events import uuid7
from automations.settings import Settings
from tests.automations.engine_harness import Clock, Harness, automation, event, event_ids
from triggers.reference import ReferenceEvaluator

RUNNING = "prefect.flow-run.Running"
COMPLETED = "prefect.flow-run.Completed"


@pytest.fixture
def h(redis: aioredis.Redis, settings: Settings, clock: Clock) -> Harness:
    return Harness(redis, settings, clock, engines=2)


def after_running(**fields: Any) -> dict[str, Any]:
    return {"posture": "Reactive", "after": [RUNNING], "expect": [COMPLETED], "within": 60,
            **fields}


async def test_follower_waits_for_its_leader(h: Harness) -> None:
    await h.load(automation(after_running()))
    running = event(RUNNING, 0)
    completed = event(COMPLETED, 10, follows=running.id)
    assert await h.send(completed) == []
    assert await h.engine.ordering.held() == 1
    firings = await h.send(running)
    assert event_ids(firings) == [str(completed.id)]
    assert await h.engine.ordering.held() == 0


async def test_leader_processed_by_another_engine_releases(h: Harness) -> None:
    await h.load(automation(after_running()))
    running = event(RUNNING, 0)
    completed = event(COMPLETED, 10, follows=running.id)
    assert await h.send(completed, engine=0) == []
    assert len(await h.send(running, engine=1)) == 1


async def test_leader_and_follower_in_one_batch(h: Harness) -> None:
    await h.load(automation(after_running(threshold=2)))
    running = event(RUNNING, 0)
    c1 = event(COMPLETED, 10, follows=running.id)
    c2 = event(COMPLETED, 11, follows=c1.id)
    firings = await h.send(c2, c1, running)
    assert event_ids(firings) == [str(c2.id)]


async def test_leader_already_seen_does_not_hold(h: Harness) -> None:
    await h.load(automation(after_running()))
    running = event(RUNNING, 0)
    await h.send(running)
    assert len(await h.send(event(COMPLETED, 10, follows=running.id))) == 1


async def test_lost_follower_released_after_the_wait(h: Harness, clock: Clock) -> None:
    await h.load(automation({"posture": "Reactive", "expect": [COMPLETED]}))
    completed = event(COMPLETED, 10, follows=uuid7())  # its leader never comes
    assert await h.send(completed) == []
    clock.advance(h.settings.follows_wait_s - 1)
    assert await h.engine.release_lost() == 0
    clock.advance(1)
    assert await h.engines[1].release_lost() == 1
    assert event_ids(await h.firings()) == [str(completed.id)]
    assert await h.engine.release_lost() == 0  # evaluated once
    assert await h.engine.ordering.held() == 0


async def test_held_duplicates_evaluated_once(h: Harness) -> None:
    await h.load(automation({"posture": "Reactive", "expect": [COMPLETED]}))
    leader = event(RUNNING, 0)
    completed = event(COMPLETED, 10, follows=leader.id)
    assert await h.send(completed, completed) == []
    assert await h.send(completed, engine=1) == []
    assert len(await h.send(leader)) == 1
    assert await h.send(completed) == []


async def test_old_entries_skip_the_wait(
    redis: aioredis.Redis, settings: Settings
) -> None:
    h = Harness(redis, settings.model_copy(update={"follows_wait_s": 0.0}), Clock())
    await h.load(automation({"posture": "Reactive", "expect": [COMPLETED]}))
    assert len(await h.send(event(COMPLETED, 10, follows=uuid7()))) == 1


async def test_lost_followers_keep_occurred_order_like_the_reference(
    h: Harness, clock: Clock
) -> None:
    """F and X wait for leaders that never come, G waits for F. When all are released after
    the wait they go in ``occurred`` order (F, X, G), as in ``triggers.reference``: G is not
    pulled forward by F."""
    a = automation({"posture": "Reactive", "expect": ["b", "c"], "within": 10})
    await h.load(a)
    reference = ReferenceEvaluator([a], follows_wait=timedelta(seconds=h.settings.follows_wait_s))
    f = event("a", 0, follows=uuid7())
    x = event("c", 1, follows=uuid7())
    g = event("b", 2, follows=f.id)
    for e in (g, f, x):
        assert reference.process(e, clock.now) == []
    assert await h.send(g, f, x) == []
    clock.advance(h.settings.follows_wait_s)
    expected = reference.advance(clock.now)
    await h.engine.release_lost()
    assert event_ids(await h.firings()) == event_ids(expected) == [str(x.id)]
