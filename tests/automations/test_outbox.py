"""The outbox entry of an event and the announcer that turns firings into events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import orjson

from automations.engine.announcer import Announcer
from automations.engine.outbox import firings_of
from automations.events import Event
from automations.keys import ANNOUNCE_GROUP
from tests.automations.engine_harness import Harness, automation, event
from triggers.firing import Firing

FAILED = "prefect.flow-run.Failed"


def reactive(**fields: Any) -> dict[str, Any]:
    return {"posture": "Reactive", "expect": [FAILED], **fields}


async def entries(h: Harness) -> list[dict[bytes, bytes]]:
    raw: Any = await h.redis.xrange(h.keys.partition(0).firings)
    return [fields for _, fields in raw]


async def triggered_events(h: Harness) -> list[Event]:
    raw: Any = await h.redis.xrange(h.keys.events)
    found = [Event.from_json(f[b"data"]) for _, f in raw]
    return [e for e in found if e.event.startswith("prefect.automation.")]


async def test_an_event_firing_several_automations_is_stored_once(h: Harness) -> None:
    stateless = automation(reactive(), name="at-once")
    counting = automation(reactive(threshold=1, within=60), name="windowed")
    compound = automation({"type": "compound", "require": "all", "triggers": [
        reactive(), reactive(match={"prefect.resource.id": "r*"})]}, name="both")
    await h.load(stateless, counting, compound)
    e = event(FAILED, 0)
    firings = await h.send(e)
    [fields] = await entries(h)
    assert fields[b"event_id"] == str(e.id).encode()
    assert orjson.loads(fields[b"event"])["id"] == str(e.id)
    assert sorted(str(f.automation_id) for f in firings) == sorted(
        str(a.id) for a in (stateless, counting, compound))
    assert all(f.triggering_event is not None and f.triggering_event["id"] == str(e.id)
               for f in firings)
    [parent] = [f for f in firings if f.automation_id == compound.id]
    assert [f.triggering_event and f.triggering_event["id"] for f in parent.triggering_firings] \
        == [str(e.id)] * 2
    # the event is in the entry once, not in every firing (nor in the compound's children)
    assert str(e.id).encode() not in fields[b"firings"]
    assert len({f.id for f in firings}) == 3
    assert len({f.automation_triggered_event_id for f in firings}) == 3


async def test_each_firing_is_announced_once_with_its_event_id(h: Harness) -> None:
    a = automation(reactive(), name="a")
    b = automation(reactive(threshold=2, within=60), name="b")
    await h.load(a, b)
    firings = await h.send(event(FAILED, 0), event(FAILED, 1))
    assert len(firings) == 3
    announced = await triggered_events(h)
    assert sorted(str(e.id) for e in announced) == sorted(
        str(f.automation_triggered_event_id) for f in firings)
    assert await h.engine.announcer.run_until_idle() == 0  # nothing left, nothing repeated
    assert len(await triggered_events(h)) == 3
    last = await h.redis.hgetall(h.keys.last_fired)
    assert set(last) == {str(a.id).encode(), str(b.id).encode()}


async def test_an_unacknowledged_batch_is_announced_by_the_next_reader(h: Harness) -> None:
    await h.load(automation(reactive(), name="a"))
    await h.publisher.publish([event(FAILED, 0)])
    await h.engine._consumer.run_until_idle()  # evaluated, not announced yet
    # a reader that takes the entry and dies before announcing it
    outbox = h.keys.partition(0).firings
    await h.redis.xgroup_create(outbox, ANNOUNCE_GROUP, id="0", mkstream=True)
    taken: Any = await h.redis.xreadgroup(ANNOUNCE_GROUP, "died", {outbox: ">"})
    assert len(taken[0][1]) == 1
    assert await triggered_events(h) == []
    heir = Announcer(h.redis, h.settings.model_copy(update={"claim_idle_ms": 0}),
                     keys=h.keys, resource_of=lambda _: None, consumer="heir")
    await heir.run_until_idle()
    [announced] = await triggered_events(h)
    # the automation is unknown to this announcer: the resource names it by id only
    [firing] = await h.firings()
    by_id = {"prefect.resource.id": f"prefect.automation.{firing.automation_id}"}
    assert announced.resource == by_id
    assert (await h.redis.xpending(h.keys.partition(0).firings, ANNOUNCE_GROUP))["pending"] == 0


async def test_hand_written_and_broken_entries_are_not_announced(h: Harness) -> None:
    a = automation(reactive(), name="a")
    await h.load(a)
    hand = Firing(automation_id=a.id, trigger_id=a.trigger.id, triggered=datetime.now(UTC))
    await h.redis.xadd(h.keys.partition(0).firings, {b"data": hand.to_json()})
    await h.redis.xadd(h.keys.partition(0).firings, {b"firings": b"{not a list"})
    await h.publisher.publish([event(FAILED, 0)])
    await h.engine.run_until_idle()
    [announced] = await triggered_events(h)  # only the engine's own firing
    assert announced.resource["prefect.resource.name"] == "a"
    assert (await h.redis.xpending(h.keys.partition(0).firings, ANNOUNCE_GROUP))["pending"] == 0


def test_firings_of_reads_both_entry_forms() -> None:
    now = datetime.now(UTC).isoformat()
    ids = {"automation_id": "3f6f2f4e-5b0a-4f7c-9d61-0e4f3b1f9a10",
           "trigger_id": "0b8d9a39-4a52-4c39-8c86-3e1c2d9d7f11", "triggered": now}
    one = Firing.model_validate({**ids, "triggering_event": {"id": "e1"}})
    assert firings_of({b"data": one.to_json()}) == [one]
    many = firings_of({b"firings": orjson.dumps([ids, ids]), b"event": b'{"id": "e2"}',
                       b"event_id": b"e2"})
    assert [f.triggering_event for f in many] == [{"id": "e2"}, {"id": "e2"}]
    none = firings_of({b"firings": orjson.dumps([ids])})
    assert none[0].triggering_event is None


async def test_a_large_batch_is_announced_and_acknowledged_whole(h: Harness) -> None:
    """More entries and automations in one batch than one Lua unpack takes (1,000 values)."""
    now = datetime.now(UTC).isoformat()
    async with h.redis.pipeline(transaction=False) as pipe:
        for _ in range(1_500):
            firing = {"id": str(uuid4()), "automation_id": str(uuid4()),
                      "trigger_id": str(uuid4()), "triggered": now,
                      "automation_triggered_event_id": str(uuid4())}
            pipe.xadd(h.keys.partition(0).firings, {b"firings": orjson.dumps([firing])})
        await pipe.execute()
    announcer = Announcer(h.redis, h.settings.model_copy(update={"batch_size": 2_000}),
                          keys=h.keys, resource_of=lambda _: None, consumer="big")
    assert await announcer.run_until_idle() == 1_500
    assert announcer.announced == 1_500
    assert len(await triggered_events(h)) == 1_500
    assert await h.redis.hlen(h.keys.last_fired) == 1_500
    assert (await h.redis.xpending(h.keys.partition(0).firings, ANNOUNCE_GROUP))["pending"] == 0
