"""Intake refuses raw stream entries no event may be (written past ``emit()``'s checks):
dead-lettered with the reason, whether a trigger cares about their name or not, while the good
events around them still fire."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import orjson
import pytest

from automations.engine.intake import decode_event
from automations.events import MAX_EVENT_BYTES
from automations.settings import Settings
from tests.automations.engine_harness import Harness, automation, event
from triggers.index import TriggerIndex

FAILED = "prefect.flow-run.Failed"


async def dead_reasons(h: Harness) -> list[str]:
    dead: Any = await h.redis.xrange(h.keys.dead(h.keys.events))
    return [fields[b"reason"].decode() for _, fields in dead]


async def test_an_oversize_entry_is_dead_lettered_whether_watched_or_not(h: Harness) -> None:
    """An XADD over the 1.5 MB limit is refused, for a watched name and for one nobody
    watches."""
    await h.load(automation({"posture": "Reactive", "expect": [FAILED]}))
    big = {"x": "a" * MAX_EVENT_BYTES}
    raws = [event(FAILED, 0), event(FAILED, 1).model_copy(update={"payload": big}),
            event("other.thing", 2).model_copy(update={"payload": big}), event(FAILED, 3)]
    for raw in raws:
        await h.redis.xadd(h.keys.events, {b"data": raw.to_json()})

    await h.engine.run_until_idle()

    reasons = await dead_reasons(h)
    assert len(reasons) == 2
    assert all(f"at most {MAX_EVENT_BYTES} are allowed" in r for r in reasons)
    assert len(await h.firings()) == 2


async def test_a_wrongly_typed_event_nobody_watches_is_still_refused(h: Harness) -> None:
    """The light decode path (no trigger cares about the name) still refuses a payload that
    is not an object or related that is not a list, with the model's message."""
    await h.load(automation({"posture": "Reactive", "expect": [FAILED]}))
    good = event("other.thing", 0).to_dict()
    for bad in ({"payload": [1]}, {"related": "x"}):
        data = orjson.dumps({**good, **bad, "id": str(uuid4())})
        await h.redis.xadd(h.keys.events, {b"data": data})
    await h.redis.xadd(h.keys.events, {b"data": event(FAILED, 1).to_json()})

    await h.engine.run_until_idle()

    assert [r.split(":")[1].strip() for r in await dead_reasons(h)] == ["payload", "related"]
    assert len(await h.firings()) == 1


async def test_an_event_far_ahead_of_the_clock_is_dead_lettered_and_blocks_nothing(
    h: Harness, settings: Settings,
) -> None:
    """An event dated 9999-12-31 would open a window that kept its resource's threshold
    trigger from ever firing; beyond ``max_future_s`` it is refused instead."""
    await h.load(automation({"posture": "Reactive", "expect": [FAILED], "threshold": 2,
                             "within": 60, "for_each": ["prefect.resource.id"]}))
    far = settings.max_future_s + 1
    firings = await h.send(event(FAILED, far, "a"), event(FAILED, 1, "a"), event(FAILED, 2, "a"),
                           event(FAILED, settings.max_future_s - 1, "b"))

    assert await dead_reasons(h) == [
        f"invalid event: occurred is {far:,.0f} s ahead of the engine's clock "
        f"(more than AUTOMATIONS_MAX_FUTURE_S={settings.max_future_s:g}); "
        "check the producer's clock"
    ]
    assert [f.triggering_labels for f in firings] == [{"prefect.resource.id": "a"}]


@pytest.mark.parametrize("fields", [
    {},
    {"id": "0190D0A4-9C3E-7000-8000-00000000000A",
     "follows": "0190D0A4-9C3E-7000-8000-00000000000B"},
    {"id": "0190d0a49c3e7000800000000000000d"},  # no dashes
    {"occurred": "2026-01-01T12:00:00"},  # naive: UTC
    {"occurred": "2026-01-01T14:00:00.123+02:00"},
    {"occurred": "1969-12-31T23:59:59.999999Z"},
    {"follows": "0190d0a4-9c3e-7000-8000-00000000000c", "related": [], "payload": {}},
])
def test_the_light_path_reads_what_the_model_reads(fields: dict[str, Any]) -> None:
    """An event no trigger watches skips the model: its id, time and leader must still be
    those the model gives (canonical ids, exact microseconds, any offset)."""
    data = {"id": "0190d0a4-9c3e-7000-8000-000000000001", "occurred": "2026-01-01T12:00:00Z",
            "event": FAILED, "resource": {"prefect.resource.id": "r1"}, **fields}
    raw = orjson.dumps(data)
    watching = TriggerIndex()
    watched = automation({"posture": "Reactive", "expect": [FAILED]})
    watching.add(watched.id, watched.trigger)

    light, model = decode_event(raw, TriggerIndex()), decode_event(raw, watching)

    assert light.event is None and model.event is not None
    assert (light.id, light.name, light.occurred_us, light.follows, light.raw) == \
        (model.id, model.name, model.occurred_us, model.follows, model.raw)
