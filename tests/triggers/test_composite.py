"""Composite triggers on the Redis engine: any / all / N / sequence / within, atomic
check-and-clear, child labels reaching the parent firing."""

from __future__ import annotations

from typing import Any

import anyio
import redis.asyncio as aioredis

from automations.engine.specs import window_specs
from automations.keys import Keys
from automations.settings import Settings
from tests.automations.engine_harness import Clock, Harness, automation, event

A, B, C = "event.a", "event.b", "event.c"


def child(name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "event", "posture": "Reactive", "expect": [name], **fields}


def compound(require: Any, *names: str, within: float | None = None) -> dict[str, Any]:
    return {
        "type": "compound",
        "require": require,
        "within": within,
        "triggers": [child(n) for n in names],
    }


async def test_any_fires_on_each_child(h: Harness) -> None:
    a = automation(compound("any", A, B))
    await h.load(a)
    [f1] = await h.send(event(A, 0))
    [f2] = await h.send(event(B, 1))
    assert f1.trigger_id == f2.trigger_id == a.trigger.id
    assert [len(f.triggering_firings) for f in (f1, f2)] == [1, 1]


async def test_all_needs_every_child_and_resets(h: Harness, redis: aioredis.Redis) -> None:
    a = automation(compound("all", A, B, C))
    await h.load(a)
    b = event(B, 2)
    assert await h.send(event(A, 0), event(A, 1), b) == []
    c = event(C, 3)
    [firing] = await h.send(c)
    assert [str(f.trigger_id) for f in firing.triggering_firings] == [
        str(t.id)
        for t in a.trigger.triggers  # type: ignore[union-attr]
    ]
    assert firing.triggering_event is not None and firing.triggering_event["id"] == str(c.id)
    # only the latest firing per child was kept: A's second one
    first = firing.triggering_firings[0].triggering_event
    assert first is not None and first["occurred"].startswith("2026-01-01T12:00:01")
    # each child keeps its own event (C's, the parent's own, is stored once in the entry)
    assert [f.triggering_event and f.triggering_event["id"]
            for f in firing.triggering_firings[1:]] == [str(e.id) for e in (b, c)]
    assert not await redis.exists(h.keys.partition(0).composite(str(a.id), str(a.trigger.id)))
    assert await h.send(event(C, 4)) == []


async def test_require_n(h: Harness) -> None:
    await h.load(automation(compound(2, A, B, C)))
    assert await h.send(event(A, 0)) == []
    [firing] = await h.send(event(C, 1))
    assert len(firing.triggering_firings) == 2


async def test_within_drops_old_child_firings(h: Harness, clock: Clock) -> None:
    await h.load(automation(compound("all", A, B, within=60)))
    await h.send(event(A, 0))
    clock.advance(61)  # wall clock: child firing times are compared, not event times
    assert await h.send(event(B, 61)) == []
    clock.advance(1)
    assert len(await h.send(event(A, 62))) == 1


async def test_sequence_needs_declared_order(h: Harness, clock: Clock) -> None:
    await h.load(automation({"type": "sequence", "within": None, "triggers": [child(A), child(B)]}))
    await h.send(event(B, 0))
    clock.advance(1)
    assert await h.send(event(A, 1)) == []  # B fired before A: out of order
    clock.advance(1)
    assert len(await h.send(event(B, 2))) == 1  # now A then B


async def test_child_labels_reach_the_parent(h: Harness) -> None:
    await h.load(
        automation(
            {
                "type": "compound",
                "require": "all",
                "within": None,
                "triggers": [
                    child(A, for_each=["prefect.resource.id"]),
                    child(B, for_each=["related:flow:prefect.resource.name"]),
                ],
            }
        )
    )
    await h.send(event(A, 0, "run-1"))
    [firing] = await h.send(
        event(
            B,
            1,
            related=[
                {
                    "prefect.resource.id": "flow.1",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": "etl",
                }
            ],
        )
    )
    assert firing.triggering_labels == {
        "prefect.resource.id": "run-1",
        "related:flow:prefect.resource.name": "etl",
    }


async def test_nested_composite(h: Harness) -> None:
    await h.load(
        automation(
            {
                "type": "sequence",
                "within": None,
                "triggers": [compound("all", A, B), child(C)],
            }
        )
    )
    a, b, c = event(A, 0), event(B, 1), event(C, 2)
    assert await h.send(a, b) == []
    [firing] = await h.send(c)
    assert len(firing.triggering_firings) == 2
    inner, last = firing.triggering_firings
    assert [f.triggering_event and f.triggering_event["id"]
            for f in inner.triggering_firings] == [str(a.id), str(b.id)]
    assert last.triggering_event is not None and last.triggering_event["id"] == str(c.id)


async def test_proactive_child(h: Harness, clock: Clock) -> None:
    await h.load(
        automation(
            {
                "type": "compound",
                "require": "all",
                "within": None,
                "triggers": [
                    child(A),
                    {
                        "type": "event",
                        "posture": "Proactive",
                        "after": [B],
                        "expect": [C],
                        "within": 30,
                    },
                ],
            }
        )
    )
    await h.send(event(A, 0), event(B, 0))
    clock.advance(30)
    [firing] = await h.tick()
    assert len(firing.triggering_firings) == 2


async def test_check_and_clear_is_atomic_across_engines(
    redis: aioredis.Redis, settings: Settings, clock: Clock
) -> None:
    h = Harness(redis, settings, clock, engines=2)
    await h.load(automation(compound("all", A, B)))
    for round_ in range(20):
        await h.publisher.publish([event(A, round_), event(B, round_)])
        async with anyio.create_task_group() as tg:
            for engine in h.engines:
                tg.start_soon(engine.run_until_idle)
    assert len(await h.firings()) == 20


def test_specs_describe_the_chain() -> None:
    a = automation({"type": "sequence", "within": 5, "triggers": [compound(2, A, B, C), child(A)]})
    specs = window_specs(a.id, a.trigger, Keys("p"))
    assert len(specs) == 4
    assert all(not s.top_level for s in specs)
    assert '"s":1' in specs[0].json and '"n":2' in specs[0].json
    assert "WindowSpec(" in repr(specs[0])


async def test_children_firing_together_fire_the_parent_without_state(
    h: Harness, redis: aioredis.Redis
) -> None:
    """Both children of an `all` fire on one event: the parent fires once per event and the
    composite hash is never left behind (it lives in the script's write-back cache)."""
    both = {"type": "compound", "require": "all", "within": 60,
            "triggers": [child(A), child(A, match={"prefect.resource.id": "r*"})]}
    a = automation(both)
    await h.load(a)
    firings = await h.send(event(A, 0), event(A, 1))
    assert [len(f.triggering_firings) for f in firings] == [2, 2]
    assert not await redis.exists(h.keys.partition(0).composite(str(a.id), str(a.trigger.id)))


async def test_waiting_children_are_kept_with_an_expiry(
    h: Harness, redis: aioredis.Redis
) -> None:
    a = automation(compound("all", A, B, within=60))
    await h.load(a)
    assert await h.send(event(A, 0), event(A, 1)) == []
    key = h.keys.partition(0).composite(str(a.id), str(a.trigger.id))
    assert await redis.hlen(key) == 1
    assert 0 < await redis.pttl(key) <= 120_000
    assert len(await h.send(event(B, 2))) == 1
    assert not await redis.exists(key)
