"""Event dedupe in a partition (``engine/dedupe.py``): per-slice sets of evaluated ids,
remembered at least ``dedupe_ttl_s``; the one-key markers of the versions before, written and
looked at for one ``dedupe_ttl_s`` after an upgrade only."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import redis.asyncio as aioredis

from automations.engine.dedupe import slice_us, slices
from automations.events import US
from automations.keys import Keys
from automations.layout import PARTITIONS_FIELD, SEEN_IDS_SINCE
from automations.models import Automation
from automations.settings import Settings
from tests.automations.engine_harness import Clock, Harness, automation, event

NAME = "job.done"


def counting() -> Automation:
    """Counts every ``job.done`` of a resource in an hour it never fills."""
    return automation({"expect": [NAME], "for_each": ["prefect.resource.id"],
                       "threshold": 1000, "within": 3600})


async def count(h: Harness, a: Automation, resource: str = "r1") -> int:
    key = h.keys.of(a.id).bucket(str(a.id), str(a.trigger.id), f'["{resource}"]')
    value: Any = await h.redis.hget(key, "c")
    return int(value) if value is not None else 0


async def test_a_repeat_counts_once_for_at_least_the_ttl_across_slices(
    h: Harness, clock: Clock, settings: Settings
) -> None:
    a = counting()
    await h.load(a)
    first = event(NAME, 0)
    await h.send(first)
    assert await count(h, a) == 1
    # two slices later (one dedupe_ttl_s): still in a set that is looked at
    for _ in range(2):
        clock.advance(slice_us(settings.dedupe_ttl_s) / US)
        await h.send(first, event(NAME, 1))
    assert await count(h, a) == 3  # the repeats not counted, the two new events counted
    # past the longest it is kept (three slices), an id is new again
    clock.advance(2 * slice_us(settings.dedupe_ttl_s) / US)
    await h.send(first)
    assert await count(h, a) == 4


async def test_a_slice_set_expires_once_no_call_looks_at_it(
    h: Harness, clock: Clock, settings: Settings
) -> None:
    a = counting()
    await h.load(a)
    await h.send(event(NAME, 0))
    part = h.keys.of(a.id)
    seen = slices(part, clock(), settings.dedupe_ttl_s)
    assert await h.redis.scard(seen.current) == 1
    ttl = await h.redis.ttl(seen.current)
    length_s = slice_us(settings.dedupe_ttl_s) / US
    assert 2 * length_s <= ttl <= 3 * length_s + 60
    assert [k async for k in h.redis.scan_iter(match=part.seen("*"))] == []  # no one-key marker


async def installation_from_before(redis: aioredis.Redis, settings: Settings) -> Keys:
    """An installation recorded by a version before the id sets (its layout has no
    ``seen_ids_since``)."""
    keys = Keys.from_settings(settings)
    await redis.hset(keys.layout, PARTITIONS_FIELD, keys.partitions)
    return keys


async def test_after_an_upgrade_the_one_key_markers_are_looked_at_and_written_for_a_ttl(
    redis: aioredis.Redis, settings: Settings, clock: Clock
) -> None:
    keys = await installation_from_before(redis, settings)
    h = Harness(redis, settings, clock)
    a = counting()
    for engine in h.engines:  # as an engine of this version starting on it
        await engine.load([a])
    part = keys.of(a.id)
    # evaluated by the version before (its marker), redelivered after the upgrade
    done_before = event(NAME, 0, id=uuid4())
    await redis.set(part.seen(str(done_before.id)), "1", ex=settings.dedupe_ttl_s)
    fresh = event(NAME, 1)
    await h.send(done_before, fresh)
    assert await count(h, a) == 1  # only the new one
    assert await redis.exists(part.seen(str(fresh.id))) == 1  # for an engine of before
    assert int(await redis.hget(keys.layout, SEEN_IDS_SINCE)) == int(clock().timestamp())
    # a dedupe_ttl_s later no marker of before can be left: none are written or read
    clock.advance(settings.dedupe_ttl_s)
    later = event(NAME, 2)
    await h.send(later)
    assert await count(h, a) == 2
    assert await redis.exists(part.seen(str(later.id))) == 0


async def test_a_new_installation_records_that_it_has_no_one_key_markers(h: Harness) -> None:
    await h.load(counting())
    assert await h.redis.hget(h.keys.layout, SEEN_IDS_SINCE) == b"0"
