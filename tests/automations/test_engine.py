"""Reactive behaviours of reference section 3.5 on the Redis engine, plus the outbox shape."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from automations.engine.engine import Engine
from automations.settings import Settings
from automations.streams.entries import Entry
from tests.automations.engine_harness import Clock, Harness, automation, event, event_ids
from tests.wait import wait_until

FAILED = "prefect.flow-run.Failed"


def reactive(**fields: Any) -> dict[str, Any]:
    return {"posture": "Reactive", "expect": [FAILED], **fields}


async def test_every_event_fires_with_within_zero(h: Harness) -> None:
    await h.load(automation(reactive()))
    events = [event(FAILED, i) for i in range(3)]
    firings = await h.send(*events)
    assert event_ids(firings) == [str(e.id) for e in events]


async def test_firing_and_triggered_event_written_together(h: Harness) -> None:
    a = automation(reactive(for_each=["prefect.resource.id"]), name="failures")
    await h.load(a)
    e = event(FAILED, 0, "flow-run.1")
    [firing] = await h.send(e)
    assert firing.automation_id == a.id
    assert firing.trigger_id == a.trigger.id
    assert firing.triggering_labels == {"prefect.resource.id": "flow-run.1"}
    assert firing.triggering_event is not None and firing.triggering_event["id"] == str(e.id)
    [triggered] = await h.automation_events()
    assert triggered.event == "prefect.automation.triggered"
    assert triggered.id == firing.automation_triggered_event_id
    assert triggered.resource == {
        "prefect.resource.id": f"prefect.automation.{a.id}",
        "prefect.resource.name": "failures",
        "prefect.posture": "Reactive",
    }
    assert triggered.related == [{
        "prefect.resource.id": f"prefect.event.{e.id}",
        "prefect.resource.role": "triggering-event",
    }]
    assert triggered.payload["triggering_labels"] == {"prefect.resource.id": "flow-run.1"}
    assert triggered.payload["triggering_event"]["id"] == str(e.id)
    assert await h.redis.hget(h.keys.last_fired, str(a.id)) is not None


async def test_threshold_fires_eagerly_then_cools_down(h: Harness) -> None:
    await h.load(automation(reactive(threshold=3, within=60)))
    assert await h.send(event(FAILED, 0), event(FAILED, 10)) == []
    third = event(FAILED, 20)
    assert event_ids(await h.send(third)) == [str(third.id)]
    # the next window is [60, 120): events until the old end are ignored, not counted
    assert await h.send(event(FAILED, 30), event(FAILED, 40), event(FAILED, 50)) == []
    assert await h.send(event(FAILED, 61), event(FAILED, 62)) == []
    assert len(await h.send(event(FAILED, 63))) == 1


async def test_debounce_with_threshold_one(h: Harness) -> None:
    await h.load(automation(reactive(within=60, for_each=["prefect.resource.id"])))
    first = await h.send(event(FAILED, 0, "a"), event(FAILED, 1, "b"))
    assert len(first) == 2
    assert await h.send(event(FAILED, 30, "a"), event(FAILED, 59, "b")) == []
    assert len(await h.send(event(FAILED, 60, "a"))) == 1


async def test_expired_window_starts_fresh_and_counts_the_event(h: Harness) -> None:
    await h.load(automation(reactive(threshold=2, within=10)))
    assert await h.send(event(FAILED, 0)) == []
    assert await h.send(event(FAILED, 100)) == []  # beyond the window: opens [100, 110)
    assert len(await h.send(event(FAILED, 105))) == 1


async def test_first_window_is_backdated(h: Harness) -> None:
    await h.load(automation(reactive(threshold=2, within=60)))
    assert await h.send(event(FAILED, 1000)) == []
    late = event(FAILED, 1000 - 600)  # 10 min earlier: inside the backdated window
    assert event_ids(await h.send(late)) == [str(late.id)]


async def test_after_then_expect(h: Harness) -> None:
    await h.load(automation(reactive(after=["prefect.flow-run.Running"], within=60)))
    assert await h.send(event(FAILED, 0)) == []  # no window: held, nothing opened it
    assert await h.send(event("prefect.flow-run.Running", 100)) == []
    assert len(await h.send(event(FAILED, 110))) == 1
    assert await h.send(event(FAILED, 120)) == []  # the bucket is gone: needs a new after


async def test_expect_before_after_is_held_and_counted(h: Harness) -> None:
    await h.load(automation(reactive(after=["prefect.flow-run.Running"], within=60)))
    failed = event(FAILED, 10)
    assert await h.send(failed) == []
    firings = await h.send(event("prefect.flow-run.Running", 0))
    assert event_ids(firings) == [str(failed.id)]


async def test_duplicates_count_once(h: Harness) -> None:
    await h.load(automation(reactive(threshold=2, within=60)))
    e = event(FAILED, 0)
    assert await h.send(e, e) == []
    assert await h.send(e) == []
    assert len(await h.send(event(FAILED, 1))) == 1


async def test_reactive_within_zero_threshold_n_expires(h: Harness, clock: Clock) -> None:
    await h.load(automation(reactive(threshold=2)))
    assert await h.send(event(FAILED, 0)) == []
    clock.advance(3600)
    assert await h.send(event(FAILED, 3600)) == []  # the first count was swept
    assert len(await h.send(event(FAILED, 3601))) == 1


async def test_invalid_events_are_rejected_not_fatal(h: Harness) -> None:
    await h.load(automation(reactive()))
    entries = [
        Entry("1-0", {b"data": b"not json"}, 1),
        Entry("1-1", {b"data": orjson.dumps({"id": "x", "occurred": "y", "event": FAILED})}, 1),
        Entry("1-2", {b"other": b"1"}, 1),
        Entry("1-3", {b"data": event(FAILED, 0).to_json()}, 1),
    ]
    rejects = await h.engine.handle_batch(entries)
    assert [r.entry.id for r in rejects] == ["1-0", "1-1", "1-2"]
    assert "id" in rejects[1].reason
    assert len(await h.firings()) == 1


async def test_log_write_is_skipped(h: Harness) -> None:
    await h.load(automation({"posture": "Reactive", "expect": ["prefect.log.*"]}))
    assert await h.send(event("prefect.log.write", 0)) == []


async def test_repr(h: Harness) -> None:
    await h.load(automation(reactive()))
    await h.send(event(FAILED, 0))
    assert "fired=1" in repr(h.engine)


async def test_redelivered_batch_is_not_counted_twice(h: Harness) -> None:
    """A crash after the script but before XACK redelivers the batch: nothing doubles."""
    await h.load(automation(reactive(threshold=2, within=60)))
    entries = [Entry(f"1-{i}", {b"data": event(FAILED, i).to_json()}, 1) for i in range(3)]
    await h.engine.handle_batch(entries)
    await h.engine.handle_batch([Entry(e.id, e.fields, 2) for e in entries])
    assert len(await h.firings()) == 1


async def test_large_batches_are_split_across_script_calls(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("automations.engine.engine.OPS_PER_CALL", 2)
    await h.load(automation(reactive(threshold=2, within=60)), automation(reactive(), name="b"))
    leader = event("prefect.flow-run.Running", 0)
    follower = event(FAILED, 5, follows=leader.id)
    firings = await h.send(follower, event(FAILED, 1), event(FAILED, 2), leader)
    assert len(firings) == 4  # three "every" firings, one "threshold 2"


async def test_immediate_trigger_fires_without_bucket_state(h: Harness) -> None:
    """Reactive, within 0, threshold 1: every event fires and no bucket is ever written."""
    a = automation(reactive(for_each=["prefect.resource.id"]))
    await h.load(a)
    firings = await h.send(event(FAILED, 0, "r1"), event(FAILED, 1, "r1"), event(FAILED, 2, "r2"))
    assert [f.triggering_labels["prefect.resource.id"] for f in firings] == ["r1", "r1", "r2"]
    pattern = h.keys.partition(0).bucket(str(a.id), "*", "*")
    assert [k async for k in h.redis.scan_iter(match=pattern)] == []
    assert await h.redis.zcard(h.keys.partition(0).deadlines) == 0


async def test_last_fired_is_recorded_for_every_automation_of_a_batch(h: Harness) -> None:
    autos = [automation(reactive(), name=f"a{i}") for i in range(3)]
    await h.load(*autos)
    assert len(await h.send(event(FAILED, 0))) == 3
    assert sorted(await h.redis.hkeys(h.keys.last_fired)) == sorted(
        str(a.id).encode() for a in autos)


def entries_of(*events: Any, start: int = 1) -> list[Entry]:
    return [Entry(f"{start + i}-0", {b"data": e.to_json(), b"id": str(e.id).encode()}, 1)
            for i, e in enumerate(events)]


async def test_a_batch_prepared_ahead_is_applied_as_prepared(h: Harness) -> None:
    """``look_ahead`` decodes and matches a batch while the one before waits for Redis; the
    batch then fires and is logged exactly as if it had been handled from scratch."""
    a = automation(reactive(threshold=2, within=60))
    await h.load(a, automation(reactive(), name="every"))
    events = [event(FAILED, i) for i in range(3)]
    ahead = entries_of(*events)
    await h.engine.look_ahead(ahead)
    assert await h.engine.handle_batch(ahead) == []
    assert len(await h.firings()) == 4  # three "every", one "threshold 2"
    logged: Any = await h.redis.xrange(h.keys.decisions)
    assert [f[b"entry"].decode() for _, f in logged] == [e.id for e in ahead]


async def test_a_batch_prepared_ahead_is_matched_again_after_a_reload(h: Harness) -> None:
    await h.load(automation(reactive(), name="old"))
    ahead = entries_of(event(FAILED, 0))
    await h.engine.look_ahead(ahead)
    new = automation(reactive(), name="new")
    await h.load(new)  # between the head start and the handling
    await h.engine.handle_batch(ahead)
    assert [f.automation_id for f in await h.firings()] == [new.id]


async def test_a_batch_prepared_ahead_but_not_handled_leaves_no_trace(h: Harness) -> None:
    """The consumer drops a batch read ahead when the one before it fails (it is read again
    later): its decisions are not logged with another batch."""
    await h.load(automation(reactive()))
    await h.engine.look_ahead(entries_of(event(FAILED, 0)))
    other = entries_of(event(FAILED, 1), start=10)
    await h.engine.handle_batch(other)
    logged: Any = await h.redis.xrange(h.keys.decisions)
    assert [f[b"entry"].decode() for _, f in logged] == [other[0].id]
    assert len(await h.firings()) == 1


async def test_a_running_engine_reads_a_backlog_ahead_and_loses_nothing(
    h: Harness, settings: Settings, redis: Any
) -> None:
    """A backlog read in batches of 10 with look-ahead: every event counted once, in order
    (each resource's window fires on its third event, and only then)."""
    await h.load(automation(reactive(threshold=3, within=3600,
                                     for_each=["prefect.resource.id"])))
    events = [event(FAILED, i, f"r{i % 5}") for i in range(95)]
    await h.publisher.publish(events)
    engine = Engine(redis, settings.model_copy(update={"batch_size": 10}), clock=h.clock)
    await engine.load([automation(reactive(threshold=3, within=3600,
                                           for_each=["prefect.resource.id"]))])
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        await wait_until(lambda: engine.events >= 95)
        engine.stop()
    logged: Any = await redis.xrange(h.keys.decisions)
    assert [f[b"event_id"].decode() for _, f in logged] == [str(e.id) for e in events]
    firings = await h.firings()
    assert sorted(event_ids(firings)) == sorted(str(e.id) for e in events[10:15])


async def test_an_unexpected_error_of_the_events_consumer_restarts_it(
    h: Harness, settings: Settings, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An error the consumer does not take for an outage (redis-py's cluster client raised an
    AttributeError while reconnecting a failed-over node) restarts the events consumer; the
    engine's run goes on and evaluates what comes next."""
    a = automation(reactive())
    await h.load(a)
    engine = Engine(redis, settings, clock=h.clock)
    await engine.load([a])
    consumer = engine._consumer
    real_read = consumer._read
    failed = 0

    async def read(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            failed += 1
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return await real_read(*args, **kwargs)

    consumer._read = read  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        await h.publisher.publish([event(FAILED, 1)])
        await wait_until(lambda: engine.fired >= 1, timeout=15)
        engine.stop()
    assert failed == 1
    assert any("failed; restarting it" in r.message for r in caplog.records)
    assert len(await h.firings()) == 1
