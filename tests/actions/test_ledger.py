"""The ledger's executor-facing side (``LedgerPort``) on a real Redis: per-target delivered
records and notification cooldowns, with the semantics send-notification relies on."""

from __future__ import annotations

from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from automations.dispatch.ledger import DROPPED_TTL_MIN_S, Ledger
from automations.dispatch.ports import LedgerPort
from automations.dispatch.retries import RetryQueue
from automations.keys import Keys
from automations.settings import Settings


@pytest.fixture
def ledger(redis: aioredis.Redis, settings: Settings, keys: Keys) -> Ledger:
    return Ledger(redis, keys, settings, RetryQueue(redis, keys))


async def test_delivered_records_last_as_long_as_done_records(
    ledger: Ledger, redis: aioredis.Redis, keys: Keys, settings: Settings,
) -> None:
    port: LedgerPort = ledger
    assert await port.delivered([]) == []
    await port.mark_delivered("f1:0:t1")
    assert await port.delivered(["f1:0:t0", "f1:0:t1"]) == [False, True]
    assert 0 < await redis.ttl(keys.done("f1:0:t1")) <= settings.action_done_ttl_s


async def test_cooldown_grants_its_owner_drops_and_counts_the_others(
    ledger: Ledger, redis: aioredis.Redis, keys: Keys,
) -> None:
    automation = uuid4()
    assert await ledger.claim_cooldown(automation, "t", "f1:0", 60) == 0
    assert await ledger.claim_cooldown(automation, "t", "f1:0", 60) == 0  # a retry of f1:0
    assert await ledger.claim_cooldown(automation, "t", "f2:0", 60) is None
    assert await ledger.claim_cooldown(automation, "t", "f3:0", 60) is None
    assert await ledger.claim_cooldown(automation, "other", "f3:0", 60) == 0
    assert 0 < await redis.pttl(keys.cooldown(str(automation), "t")) <= 60_000
    counter = keys.cooldown_dropped(str(automation), "t")
    assert DROPPED_TTL_MIN_S - 5 < await redis.ttl(counter) <= DROPPED_TTL_MIN_S

    await ledger.release_cooldown(automation, "t", "f2:0")  # not the owner: kept
    assert await ledger.claim_cooldown(automation, "t", "f4:0", 60) is None
    await ledger.release_cooldown(automation, "t", "f1:0")  # f1's delivery failed
    assert await ledger.claim_cooldown(automation, "t", "f6:0", 60) == 3
    assert not await redis.exists(counter)
    assert await ledger.claim_cooldown(automation, "t", "f5:0", 60) is None


async def test_a_long_cooldown_keeps_its_counter_for_ten_cooldowns(
    ledger: Ledger, redis: aioredis.Redis, keys: Keys,
) -> None:
    automation = uuid4()
    assert await ledger.claim_cooldown(automation, "t", "f1:0", 20_000) == 0
    assert await ledger.claim_cooldown(automation, "t", "f2:0", 20_000) is None
    ttl = await redis.ttl(keys.cooldown_dropped(str(automation), "t"))
    assert 200_000 - 5 < ttl <= 200_000
