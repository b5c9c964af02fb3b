"""Property tests: the Redis engine (one instance, or two taking turns on one stream) produces
the same firings as ``triggers.reference`` for random automations and event sequences with
duplicates, late and out-of-order events and ``follows`` chains.

Each step is mirrored exactly: the same events in the same order with the same wall clock;
an "advance" step is the reference's ``advance`` and the engine's ``release_lost`` + timer
tick. The engine also consumes its own ``prefect.automation.*`` events (they move the events
clock), so the reference is fed the same ones, in stream order, after each step.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automations.connection import connect
from automations.events import Event
from automations.models import Automation
from automations.settings import Settings
from tests.automations.engine_harness import Clock, Harness, automation
from triggers.firing import Firing
from triggers.reference import ReferenceEvaluator

NAMES = ["a", "b", "c"]
RESOURCES = ["r1", "r2"]
FOLLOWS_WAIT_S = 60
MAX_EXAMPLES = 300

name = st.sampled_from(NAMES)


@st.composite
def event_triggers(draw: st.DrawFn) -> dict[str, Any]:
    posture = draw(st.sampled_from(["Reactive", "Proactive"]))
    within = draw(st.sampled_from([0, 5, 30] if posture == "Reactive" else [10, 30]))
    return {
        "type": "event", "posture": posture, "within": within,
        "expect": sorted(draw(st.sets(name, min_size=1, max_size=2))),
        "after": sorted(draw(st.sets(name, max_size=1))),
        "for_each": ["prefect.resource.id"] if draw(st.booleans()) else [],
        "threshold": draw(st.integers(1, 3)),
    }


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["event", "event", "compound", "sequence"]))
    if kind == "event":
        return draw(event_triggers())
    children = draw(st.lists(event_triggers(), min_size=2, max_size=3))
    within = draw(st.sampled_from([None, 20]))
    if kind == "sequence":
        return {"type": "sequence", "within": within, "triggers": children}
    require = draw(st.sampled_from(["any", "all", 2]))
    return {"type": "compound", "require": require, "within": within, "triggers": children}


@dataclass(frozen=True)
class EventSpec:
    name: str
    resource: str
    delta: int  # occurred = wall clock + delta seconds (negative: late)
    follows: int | None  # index into the scenario's new events (may be a later one)
    duplicate: int | None  # resend an earlier event instead


@dataclass(frozen=True)
class Step:
    dt: int  # wall clock advance before the step
    events: tuple[EventSpec, ...]  # empty: an "advance" step (timer, lost followers)


event_specs = st.builds(
    EventSpec, name=name, resource=st.sampled_from(RESOURCES),
    delta=st.sampled_from([-40, -20, -5, -1, 0, 0, 0, 2]),
    follows=st.none() | st.none() | st.integers(0, 30),
    duplicate=st.none() | st.none() | st.none() | st.integers(0, 30),
)
steps = st.lists(
    st.builds(
        Step, dt=st.sampled_from([0, 1, 3, 7, 15, 40, 70]),
        events=st.one_of(
            st.just(()), st.lists(event_specs, min_size=1, max_size=3).map(tuple),
            st.lists(event_specs, min_size=1, max_size=3).map(tuple),
        ),
    ),
    min_size=1, max_size=20,
)
automation_lists = st.lists(triggers(), min_size=1, max_size=3)


def key(firing: Firing) -> tuple[Any, ...]:
    event = firing.triggering_event
    return (
        str(firing.automation_id), str(firing.trigger_id),
        tuple(s.value for s in firing.trigger_states),
        "" if event is None else str(event["id"]),
        tuple(sorted(firing.triggering_labels.items())),
        tuple(str(f.trigger_id) for f in firing.triggering_firings),
    )


class Scenario:
    def __init__(self, specs: list[Step]) -> None:
        self.specs = specs
        self.ids = [uuid.uuid4() for _ in range(max(1, sum(len(s.events) for s in specs)))]
        self.made: list[Event] = []

    def build(self, step: Step, clock: Clock) -> list[Event]:
        out: list[Event] = []
        for spec in step.events:
            if spec.duplicate is not None and self.made:
                out.append(self.made[spec.duplicate % len(self.made)])
                continue
            number = len(self.made)
            follows = None
            if spec.follows is not None:
                leader = self.ids[spec.follows % len(self.ids)]
                follows = leader if leader != self.ids[number] else None
            made = Event(
                id=self.ids[number], event=spec.name,
                occurred=clock.now + timedelta(seconds=spec.delta),
                resource={"prefect.resource.id": spec.resource}, follows=follows,
            )
            self.made.append(made)
            out.append(made)
        return out


async def _run(redis_url: str, automations: list[Automation], specs: list[Step],
               engines: int, partitions: int = 1, *, cluster: bool = False) -> None:
    prefix = f"prop-{uuid.uuid4().hex[:10]}"
    config = Settings(redis_url=redis_url, prefix=prefix, follows_wait_s=FOLLOWS_WAIT_S,
                      block_ms=10, consumer_name="prop", partitions=partitions,
                      redis_cluster=cluster)
    client = connect(config)
    clock = Clock()
    h = Harness(client, config, clock, engines=engines)
    reference = ReferenceEvaluator(automations, follows_wait=timedelta(seconds=FOLLOWS_WAIT_S))
    scenario = Scenario(specs)
    cursor = "0-0"
    try:
        await h.load(*automations)
        for number, step in enumerate(specs):
            clock.advance(step.dt)
            engine = h.engines[number % engines]
            if step.events:
                events = scenario.build(step, clock)
                expected = [f for e in events for f in reference.process(e, clock.now)]
                await h.publisher.publish(events)
            else:
                expected = reference.advance(clock.now)
                await engine.release_lost()
                await h.timer.tick()
            await engine.run_until_idle()
            got = await h.firings()
            assert sorted(map(key, got)) == sorted(map(key, expected)), (
                f"step {number} of {specs}\ngot {sorted(map(key, got))}\n"
                f"expected {sorted(map(key, expected))}\nautomations: "
                f"{[a.trigger.model_dump(mode='json') for a in automations]}"
            )
            cursor = await _mirror_automation_events(client, h, reference, clock, cursor)
    finally:
        found = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for name in found:  # one at a time: on a cluster they live in several slots
            await client.delete(name)
        await client.aclose()


async def _mirror_automation_events(
    client: aioredis.Redis, h: Harness, reference: ReferenceEvaluator, clock: Clock, cursor: str
) -> str:
    """Feed the reference the engine's own events, which the engine consumed this step."""
    entries: Any = await client.xrange(h.keys.events, min=f"({cursor}")
    for entry_id, fields in entries:
        cursor = entry_id.decode()
        event = Event.from_json(fields[b"data"])
        if event.event.startswith("prefect.automation."):
            assert reference.process(event, clock.now) == []
    return cursor


def _automations(trigger_list: list[dict[str, Any]]) -> list[Automation]:
    return [automation(t, name=f"auto-{i}") for i, t in enumerate(trigger_list)]


@pytest.mark.parametrize(("engines", "partitions"), [(1, 1), (2, 1), (2, 3)])
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(trigger_list=automation_lists, specs=steps)
def test_engine_matches_reference(
    redis_url: str, engines: int, partitions: int, trigger_list: list[dict[str, Any]],
    specs: list[Step],
) -> None:
    """One engine or two taking turns, on one partition or three (the automations of one
    list spread over them, events ordered across them)."""
    asyncio.run(_run(redis_url, _automations(trigger_list), specs, engines, partitions))
