"""The benchmark workload: a realistic mix of automations, and events that interest ~1% of them.

Automations are spread over ``GROUPS`` (100) event names ``bench.evt.<g>``; an event names one
group, so it interests the automations of that group: 1% of them on average, whatever their
number. Each block of ten consecutive automations is one of each kind (40% reactive
``within 0``, 30% threshold-within with ``for_each``, 20% proactive with ``after``, 10%
compound), so every group holds the same mix. Everything is seeded: two runs with the same
seed produce the same automation ids, event ids and event times, which is what lets scale-out
and peer runs compare fired sets.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from actions.models import DoNothing
from automations.models import Automation
from triggers.models import CompoundTrigger, EventTrigger, Posture

GROUPS = 100
RESOURCES = 1000
KINDS = ("reactive", "reactive", "reactive", "reactive", "threshold", "threshold", "threshold",
         "proactive", "proactive", "compound")
MATCH = {"prefect.resource.id": "bench.res.*"}


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def kind_of(index: int, *, proactive: bool = True) -> str:
    kind = KINDS[index % len(KINDS)]
    return "reactive" if kind == "proactive" and not proactive else kind


def group_of(index: int) -> int:
    return (index // len(KINDS)) % GROUPS


def build_automation(
    index: int, rng: random.Random, *, proactive: bool = True, idle: bool = False
) -> Automation:
    """Automation ``index`` of the mix, listening to ``bench.evt.<group_of(index)>`` (or, when
    ``idle``, to ``bench.idle.<group>``, which no benchmark event is named: it is loaded and
    indexed like the others but never interested)."""
    group = group_of(index)
    name = f"bench.{'idle' if idle else 'evt'}.{group}"
    kind = kind_of(index, proactive=proactive)
    trigger: EventTrigger | CompoundTrigger
    if kind == "reactive":
        trigger = EventTrigger(id=_uuid(rng), expect={name}, match=MATCH,
                               posture=Posture.Reactive, threshold=1, within=timedelta(0))
    elif kind == "threshold":
        trigger = EventTrigger(id=_uuid(rng), expect={name}, match=MATCH,
                               for_each={"prefect.resource.id"}, posture=Posture.Reactive,
                               threshold=3, within=timedelta(seconds=60))
    elif kind == "proactive":
        trigger = EventTrigger(id=_uuid(rng), after={name}, expect={f"bench.done.{group}"},
                               match=MATCH, for_each={"prefect.resource.id"},
                               posture=Posture.Proactive, threshold=1,
                               within=timedelta(seconds=30))
    else:
        trigger = CompoundTrigger(
            id=_uuid(rng), require="all", within=timedelta(seconds=60),
            triggers=[
                EventTrigger(id=_uuid(rng), expect={name}, match=MATCH),
                EventTrigger(id=_uuid(rng), expect={name},
                             match_related={"prefect.resource.role": "flow"}),
            ],
        )
    return Automation(id=_uuid(rng), name=f"bench-{index:05d}-{kind}", trigger=trigger,
                      actions=[DoNothing()], tags=["bench", kind])


def build_automations(
    count: int, *, seed: int = 7, proactive: bool = True, active: int | None = None
) -> list[Automation]:
    """``count`` automations of the mix; with ``active``, only the first ``active`` listen to
    benchmark events (the rest are idle, to measure what carrying them costs)."""
    rng = random.Random(seed)
    return [build_automation(i, rng, proactive=proactive,
                             idle=active is not None and i >= active) for i in range(count)]


def event_dict(
    name: str, resource: int, event_id: uuid.UUID, occurred: datetime, *, sent: float = 0.0
) -> dict[str, Any]:
    """A flow-run-like event of about 770 bytes (the size measured in DESIGN.md)."""
    return {
        "id": str(event_id),
        "occurred": occurred.isoformat(),
        "event": name,
        "resource": {
            "prefect.resource.id": f"bench.res.{resource}",
            "prefect.resource.name": f"bench-resource-{resource}",
            "prefect.state-name": "Completed", "prefect.state-type": "COMPLETED",
            "prefect.run-count": "1",
        },
        "related": [
            {"prefect.resource.id": f"prefect.flow.{resource % 50}",
             "prefect.resource.role": "flow", "prefect.resource.name": f"flow-{resource % 50}"},
            {"prefect.resource.id": f"prefect.deployment.{resource % 20}",
             "prefect.resource.role": "deployment",
             "prefect.resource.name": f"deployment-{resource % 20}"},
            {"prefect.resource.id": "prefect.tag.bench", "prefect.resource.role": "tag"},
            {"prefect.resource.id": "prefect.tag.prod", "prefect.resource.role": "tag"},
        ],
        "payload": {
            "intended": {"from": "RUNNING", "to": "COMPLETED"},
            "initial_state": {"type": "RUNNING", "name": "Running"},
            "validated_state": {"type": "COMPLETED", "name": "Completed", "message": "ok"},
            "sent": sent,
        },
        "follows": None,
    }


@dataclass
class EventPlan:
    """Which group and resource each generated event uses (for expectations)."""

    groups: list[int]
    resources: list[int]

    def interested_per_event(self, automations: int) -> float:
        """Average number of automations an event of this plan interests (``automations``:
        how many listen to benchmark events)."""
        per_group = Counter(group_of(i) for i in range(automations))
        if not self.groups:
            return 0.0
        return sum(per_group[g] for g in self.groups) / len(self.groups)


def build_events(
    count: int, *, seed: int = 11, start: datetime | None = None, step_ms: float = 1.0,
    resources: int = RESOURCES, groups: int = GROUPS,
) -> tuple[list[dict[str, Any]], EventPlan]:
    """``count`` events in event-time order ``step_ms`` apart, seeded."""
    rng = random.Random(seed)
    base = start or datetime.now(UTC)
    events, plan = [], EventPlan([], [])
    for i in range(count):
        group, resource = rng.randrange(groups), rng.randrange(resources)
        occurred = base + timedelta(milliseconds=i * step_ms)
        events.append(event_dict(f"bench.evt.{group}", resource, _uuid(rng), occurred))
        plan.groups.append(group)
        plan.resources.append(resource)
    return events, plan


def encode(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """Pre-encoded ``(id, data)`` pairs, so producing costs only the XADD."""
    return [(e["id"].encode(), orjson.dumps(e)) for e in events]


async def push(
    redis: aioredis.Redis, stream: str, encoded: list[tuple[bytes, bytes]], *, chunk: int = 1000
) -> None:
    """Pipelined XADD of pre-encoded events (fields ``data`` and ``id``, as ``emit`` writes)."""
    for offset in range(0, len(encoded), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for event_id, data in encoded[offset:offset + chunk]:
                pipe.xadd(stream, {b"data": data, b"id": event_id})
            await pipe.execute()


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Create ``group`` at the start of ``stream`` (idempotent)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def automations_json(automations: list[Automation]) -> bytes:
    return orjson.dumps([a.model_dump(mode="json") for a in automations])


def expected_firings(automations: int, plan: EventPlan) -> dict[int, int]:
    """Firings per automation index for a mix without proactive triggers, when every event
    occurs within one 60 s window (both engines should agree; the peer run checks it).

    Reactive ``within 0`` fires on every event of its group; the compound's two children both
    fire on that same event, so it fires once per event too; threshold 3 within 60 s with
    ``for_each`` resource fires once per resource that gets at least 3 events of its group
    (then the window's cooldown discards the rest)."""
    per_group = Counter(plan.groups)
    per_resource = Counter(zip(plan.groups, plan.resources, strict=True))
    expected: dict[int, int] = {}
    for index in range(automations):
        group = group_of(index)
        if kind_of(index, proactive=False) == "threshold":
            expected[index] = sum(1 for (g, _), n in per_resource.items() if g == group and n >= 3)
        else:
            expected[index] = per_group[group]
    return expected
