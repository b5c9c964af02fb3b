"""The decision log's bounded entries: at most ``MISSED_LISTED`` near-miss ids with their
count, read back by ``automations explain`` as if every near miss were listed."""

from __future__ import annotations

from typing import Any

from automations.engine.decisions import MISSED_LISTED, Decision, DecisionLog, read_back
from automations.insight.explain import explain_automation, explain_event
from automations.keys import Keys
from automations.models import Automation
from automations.settings import Settings
from automations.store import AutomationStore
from tests.automations.engine_harness import Clock, Harness, automation, event
from tests.triggers.test_plan import planner_for
from triggers.models import EventTrigger

FAILED = "prefect.flow-run.Failed"
RID = "prefect.resource.id"
MANY = MISSED_LISTED + 5


def on_resource(i: int) -> Automation:
    return automation({"expect": [FAILED], "match": {RID: f"flow-run.{i}"}}, name=f"auto-{i:02d}")


def test_entries_written_before_the_count_list_every_near_miss() -> None:
    old = Decision.parse("1-0", {b"event": b"x", b"counted": b"a", b"missed": b"b,c"})
    assert (old.missed_count, old.missed_all) == (2, True)
    assert old.near_miss("b", watches_name=False) and not old.near_miss("d", watches_name=True)
    assert not old.near_miss("a", watches_name=True)  # counted
    new = Decision.parse("1-0", {b"missed": b"b", b"missed_count": b"3", b"counted": b"a"})
    assert not new.missed_all and new.near_miss("d", watches_name=True)
    assert not new.near_miss("d", watches_name=False) and not new.near_miss("a", True)


async def test_note_lists_a_bounded_number_of_near_misses(
    redis: Any, settings: Settings, keys: Keys
) -> None:
    triggers = [EventTrigger(expect={"x"}, match={RID: f"r{i}"}) for i in range(MANY)]
    planner, _, automation_ids = planner_for(*triggers)
    plan = planner.plan("x")
    log = DecisionLog(redis, keys, settings)
    batch = object()
    hit = event("x", 0, "r3")
    log.note(batch, hit, plan.steps, planner.match(hit)[1])
    log.note(batch, event("x", 1, "none"), plan.steps, [])
    task = log.write(batch)
    assert task is not None
    await task
    second, first = [d async for d in read_back(redis, keys, scan=10)]
    assert first.counted == (automation_ids[3],) and first.missed_count == MANY - 1
    assert first.missed == tuple(a for a in automation_ids if a != automation_ids[3])[
        :MISSED_LISTED]
    assert second.counted == () and second.missed_count == MANY
    assert second.missed == tuple(automation_ids[:MISSED_LISTED])


async def test_explain_shows_every_near_miss(h: Harness, clock: Clock) -> None:
    autos = [on_resource(i) for i in range(MANY)]
    await AutomationStore(h.redis, h.keys).apply(autos)
    await h.load(*autos)
    miss = event(FAILED, 0, "flow-run.other")
    await h.send(miss)
    (decision,) = [d async for d in read_back(h.redis, h.keys, scan=10)]
    assert len(decision.missed) == MISSED_LISTED and decision.missed_count == MANY
    assert str(autos[-1].id) not in decision.missed
    result = await explain_event(h.redis, h.keys, autos, str(miss.id), clock.now)
    assert len(result.automations) == MANY
    assert all(v.near_miss and not v.counted for v in result.automations)
    state = await explain_automation(h.redis, h.keys, autos[-1], clock.now)  # not listed
    assert [r.event_id for r in state.near_misses] == [str(miss.id)]
