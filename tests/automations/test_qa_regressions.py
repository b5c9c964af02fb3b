"""Regressions found by fault-injection QA: raw stream entries that bypass ``emit()``."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis.asyncio as aioredis

from automations.events import MAX_EVENT_BYTES
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.consumer import Entry, StreamConsumer
from tests.automations.engine_harness import Harness, automation, event

FAILED = "prefect.flow-run.Failed"


async def test_oversize_raw_entries_are_dead_lettered(h: Harness) -> None:
    """An XADD over the 1.5 MB limit is refused by the engine, whether a trigger cares about
    its name or not; the good events around it still fire."""
    await h.load(automation({"posture": "Reactive", "expect": [FAILED]}))
    big = {"x": "a" * MAX_EVENT_BYTES}
    raws = [event(FAILED, 0).to_json(), event(FAILED, 1).model_copy(update={"payload": big}),
            event("other.thing", 2).model_copy(update={"payload": big}), event(FAILED, 3)]
    for raw in raws:
        data = raw if isinstance(raw, bytes) else raw.to_json()
        await h.redis.xadd(h.keys.events, {b"data": data})

    await h.engine.run_until_idle()

    dead: Any = await h.redis.xrange(h.keys.dead(h.keys.events))
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 2
    assert all(f"at most {MAX_EVENT_BYTES} are allowed" in r for r in reasons)
    assert len(await h.firings()) == 2


async def test_wrongly_typed_event_nobody_watches_is_still_refused(h: Harness) -> None:
    """The light decode path (no trigger cares about the name) still refuses a payload that
    is not an object or related that is not a list, with the model's message."""
    await h.load(automation({"posture": "Reactive", "expect": [FAILED]}))
    good = event("other.thing", 0).to_dict()
    for bad in ({"payload": [1]}, {"related": "x"}):
        data = orjson.dumps({**good, **bad, "id": str(uuid4())})
        await h.redis.xadd(h.keys.events, {b"data": data})
    await h.redis.xadd(h.keys.events, {b"data": event(FAILED, 1).to_json()})

    await h.engine.run_until_idle()

    dead: Any = await h.redis.xrange(h.keys.dead(h.keys.events))
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert [r.split(":")[1].strip() for r in reasons] == ["payload", "related"]
    assert len(await h.firings()) == 1


async def test_an_event_far_ahead_of_the_clock_is_dead_lettered_and_blocks_nothing(
    h: Harness, settings: Settings,
) -> None:
    """QA sent one event dated 9999-12-31: it opened a window that kept its resource's
    threshold trigger from ever firing. Beyond ``max_future_s`` it is now refused instead."""
    await h.load(automation({"posture": "Reactive", "expect": [FAILED], "threshold": 2,
                             "within": 60, "for_each": ["prefect.resource.id"]}))
    far = settings.max_future_s + 1
    firings = await h.send(event(FAILED, far, "a"), event(FAILED, 1, "a"), event(FAILED, 2, "a"),
                           event(FAILED, settings.max_future_s - 1, "b"))

    dead: Any = await h.redis.xrange(h.keys.dead(h.keys.events))
    assert [f[b"reason"].decode() for _, f in dead] == [
        f"invalid event: occurred is {far:,.0f} s ahead of the engine's clock "
        f"(more than AUTOMATIONS_MAX_FUTURE_S={settings.max_future_s:g}); "
        "check the producer's clock"
    ]
    assert [f.triggering_labels for f in firings] == [{"prefect.resource.id": "a"}]


async def test_outage_in_a_handler_logs_one_line_and_keeps_entries_pending(
    redis: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection errors raised by several tasks of a batch (an ExceptionGroup) are an outage:
    a warning without a traceback per task; the entries stay pending for redelivery."""
    keys = Keys(settings.prefix)
    calls = 0

    async def handler(entries: list[Entry]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ExceptionGroup("batch", [ConnectionError("gone"), ConnectionError("gone")])

    consumer = StreamConsumer(redis, settings, stream=keys.events, group="qa", handler=handler,
                              dead_stream=keys.dead(keys.events))
    await redis.xadd(keys.events, {b"data": b"{}"})

    assert await consumer.run_until_idle() == 1
    assert calls == 2
    [record] = [r for r in caplog.records if "Redis unreachable while handling" in r.message]
    assert record.exc_info is None
