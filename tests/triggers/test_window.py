"""Window state in Redis: time encoding, spec registration, reset, bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis

from automations.engine.window import WindowBatch, script_source
from automations.events import from_micros, micros
from tests.automations.engine_harness import Clock, Harness, at, automation, event

FAILED = "prefect.flow-run.Failed"


def test_micros_are_exact() -> None:
    moment = datetime(2026, 11, 25, 0, 0, 0, 999_999, tzinfo=UTC)
    assert from_micros(micros(moment)) == moment
    assert micros(moment) % 1_000_000 == 999_999


def test_scripts_share_the_state_machine() -> None:
    for name in ("apply", "tick"):
        source = script_source(name)
        assert "local function evaluate" in source and "local function publish" in source


def test_batch_repr(h: Harness) -> None:
    batch = WindowBatch(h.keys.partition(0))
    batch.add_event("id", 1, b"{}", asof_us=1)
    assert repr(batch) == "WindowBatch(events=1, ops=0, specs=0)"


async def _state_keys(redis: aioredis.Redis, prefix: str) -> list[str]:
    kinds = ("bucket", "held-expect", "unresolved", "composite")
    found = [k.decode() async for k in redis.scan_iter(match=f"{prefix}:*")]
    return sorted(k for k in found if k.split(":")[2] in kinds)  # <prefix>:{<tag>}:<kind>:...


async def test_reactive_buckets_are_swept(h: Harness, clock: Clock) -> None:
    await h.load(automation({
        "posture": "Reactive", "expect": [FAILED], "threshold": 5, "within": 30,
        "for_each": ["prefect.resource.id"],
    }))
    await h.send(*[event(FAILED, i, f"run-{i}") for i in range(100)])
    assert len(await _state_keys(h.redis, h.keys.prefix)) == 100
    assert await h.redis.zcard(h.keys.partition(0).deadlines) == 100
    clock.advance(100 + 30 + 60)
    await h.tick()
    assert await _state_keys(h.redis, h.keys.prefix) == []
    assert await h.redis.zcard(h.keys.partition(0).deadlines) == 0


async def test_upsert_with_changed_trigger_resets_state(h: Harness) -> None:
    a = automation({"posture": "Reactive", "expect": [FAILED], "threshold": 2, "within": 60})
    await h.load(a)
    await h.send(event(FAILED, 0))
    assert await _state_keys(h.redis, h.keys.prefix)
    await h.engine.upsert(a, trigger_changed=False)
    assert len(await h.send(event(FAILED, 1))) == 1  # the count survived
    await h.send(event(FAILED, 100))
    await h.engine.upsert(a, trigger_changed=True)
    assert await _state_keys(h.redis, h.keys.prefix) == []
    assert await h.send(event(FAILED, 101)) == []


async def test_removed_automation_stops_and_timer_forgets_it(
    h: Harness, clock: Clock
) -> None:
    a = automation({"posture": "Proactive", "after": ["x"], "expect": [FAILED], "within": 10})
    await h.load(a)
    await h.send(event("x", 0))
    await h.engine.remove(a.id)
    assert await h.redis.hlen(h.keys.partition(0).trigger_specs) == 0
    assert await h.send(event(FAILED, 1)) == []
    clock.advance(20)
    assert await h.tick() == []
    assert await _state_keys(h.redis, h.keys.prefix) == []


async def test_specs_published_for_the_timer(h: Harness) -> None:
    a = automation({"posture": "Proactive", "expect": [FAILED], "within": 10})
    await h.load(a)
    assert await h.redis.hexists(h.keys.partition(0).trigger_specs, str(a.trigger.id))
    assert await h.redis.hexists(h.keys.partition(0).proactive_globals, str(a.trigger.id))


async def test_held_expect_events_expire(h: Harness) -> None:
    await h.load(automation({"posture": "Reactive", "after": ["x"], "expect": [FAILED],
                             "within": 60}))
    await h.send(event(FAILED, 0))
    [held] = [k for k in await _state_keys(h.redis, h.keys.prefix) if "held-expect" in k]
    ttl = await h.redis.pttl(held)
    assert 0 < ttl <= (60 + 15 * 60) * 1000 + 3_600_000


async def test_load_withdraws_specs_of_automations_no_longer_loaded(h: Harness) -> None:
    gone = automation({"posture": "Proactive", "expect": [FAILED], "within": 10}, name="gone")
    kept = automation({"posture": "Proactive", "expect": [FAILED], "within": 10}, name="kept")
    await h.load(gone, kept)
    await h.load(kept)  # e.g. a resync after `gone` was deleted while no engine ran
    part = h.keys.partition(0)
    assert await h.redis.hkeys(part.trigger_specs) == [str(kept.trigger.id).encode()]
    assert await h.redis.hkeys(part.proactive_globals) == [str(kept.trigger.id).encode()]


async def test_bucket_snapshot(h: Harness) -> None:
    a = automation({"posture": "Reactive", "expect": [FAILED], "threshold": 3, "within": 60,
                    "for_each": ["prefect.resource.id"]})
    await h.load(a)
    await h.send(event(FAILED, 0, "run-1"), event(FAILED, 1, "run-1"))
    key = h.keys.partition(0).bucket(str(a.id), str(a.trigger.id), '["run-1"]')
    bucket = await h.engine.window.bucket(key)
    assert bucket is not None and bucket.count == 2
    assert bucket.labels == {"prefect.resource.id": "run-1"}
    assert "count=2" in repr(bucket)
    assert await h.engine.window.bucket(key + "x") is None


async def test_a_call_writes_and_drops_buckets_in_chunks(h: Harness) -> None:
    """Deadlines and deletions go in batched commands: more than one chunk's worth of them in
    one call (1,000 events a batch) lands whole."""
    await h.load(automation({
        "posture": "Reactive", "expect": [FAILED], "threshold": 2, "within": 0,
        "for_each": ["prefect.resource.id"],
    }))
    deadlines = h.keys.partition(0).deadlines
    assert await h.send(*[event(FAILED, i / 1000, f"run-{i}") for i in range(1200)]) == []
    due = await h.redis.zrange(deadlines, 0, -1, withscores=True)
    assert sorted(int(score) for _, score in due) == [
        micros(at(i / 1000)) + 60_000_000 for i in range(1200)]  # its end plus the sweep
    assert len(await _state_keys(h.redis, h.keys.prefix)) == 1200
    fired = await h.send(*[event(FAILED, 2 + i / 1000, f"run-{i}") for i in range(1200)])
    assert len(fired) == 1200
    assert await _state_keys(h.redis, h.keys.prefix) == []
    assert await h.redis.zcard(deadlines) == 0
