"""The dispatcher's Redis side on the cluster: the ledger's scripts (begin, commit with its
retry, dead letter and history, cooldowns, send marks), the retry queue, action leases, the
consumer's dead-letter MULTI on a partition's outbox and the re-drive of both kinds of dead
letters. The ledger tests of the single-Redis suite run here too, unchanged."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from automations.dispatch.lease import Leases
from automations.dispatch.ledger import DEAD_ACTIONS, GAVE_UP, Begun, Ledger, Recorded, Start
from automations.dispatch.retries import RetryJob
from automations.errors import NotFound
from automations.events import Event
from automations.insight.dead_letters import dead_streams, find, redrive
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer
from automations.streams.entries import Entry, Reject
from tests.actions.test_leases import (
    test_the_record_script_fences_a_stale_token as test_the_record_script_fences_a_stale_token,
)
from tests.actions.test_ledger import ledger as ledger
from tests.actions.test_ledger import (
    test_a_long_cooldown_keeps_its_counter_for_ten_cooldowns as test_a_long_cooldown_keeps_its_counter_for_ten_cooldowns,  # noqa: E501
)
from tests.actions.test_ledger import (
    test_cooldown_grants_its_owner_drops_and_counts_the_others as test_cooldown_grants_its_owner_drops_and_counts_the_others,  # noqa: E501
)
from tests.actions.test_ledger import (
    test_delivered_records_last_as_long_as_done_records as test_delivered_records_last_as_long_as_done_records,  # noqa: E501
)


def job(key: str) -> RetryJob:
    return RetryJob(key=key, firing='{"id": "f"}', automation_id="a", index=0,
                    action_type="call-webhook", attempt=1)


async def test_begin_and_commit_publish_retry_and_dead_letter_in_the_global_slot(
        ledger: Ledger, redis: aioredis.Redis, keys: Keys) -> None:
    token = Leases(redis, keys, 60_000, "d").keeper().token
    event = Event.parse({"event": "action.triggered", "resource": {"prefect.resource.id": "x"}})
    starts = [Start(f"f:{i}", event.to_json(), str(event.id), b'{"h": 1}') for i in range(3)]
    assert await ledger.begin(starts, token) == [Begun.RUN] * 3
    assert await redis.xlen(keys.events) == 3 and await redis.xlen(keys.history) == 3

    assert await ledger.commit("f:0", token=token, retry=(job("f:0"), time.time())) \
        is Recorded.WRITTEN
    [claimed] = await ledger.retries.claim(time.time() + 1, 30, 10)
    assert claimed == job("f:0")
    assert await ledger.retries.pending() == 1

    dead = {"data": '{"id": "f"}', "reason": "gave up", "action_index": "1",
            "action_type": "call-webhook", "attempts": "3", "automation_id": "a",
            "idempotency_key": "f:1"}
    assert await ledger.commit("f:1", token=token, done=GAVE_UP, dead=dead) is Recorded.WRITTEN
    assert await ledger.commit("f:1", token=token, done=GAVE_UP, dead=dead) is Recorded.ALREADY
    assert await redis.xlen(keys.dead(DEAD_ACTIONS)) == 1
    assert await ledger.begin(starts[1:2], token) == [Begun.SKIP]


async def test_send_marks_and_leases_of_many_actions(ledger: Ledger, redis: aioredis.Redis,
                                                    keys: Keys) -> None:
    assert await ledger.claim_send("f:0", "t", "me", False)
    assert not await ledger.claim_send("f:0", "t", "other", False)
    await ledger.release_send("f:0", "t", "me")
    assert await ledger.claim_send("f:0", "t", "other", False)
    leases = Leases(redis, keys, 60_000, "d")
    keeper = leases.keeper()
    many = [f"f:{i}" for i in range(50)]
    assert await ledger.begin([Start(k) for k in many], keeper.token) == [Begun.RUN] * 50
    await redis.delete(keys.action_lease("f:7"))
    assert await leases.renew(many, keeper.token) == ["f:7"]


async def test_a_rejected_outbox_entry_is_dead_lettered_in_its_partition_and_redriven(
        redis: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """The consumer's dead-letter MULTI (copy and ack) stays in the outbox's slot."""
    part = keys.partition(2)
    await redis.xadd(part.firings, {b"data": b'{"firing": 1}'})

    async def reject(entries: list[Entry]) -> list[Reject]:
        return [Reject(e, "cannot be planned") for e in entries]

    consumer = StreamConsumer(redis, settings, stream=part.firings, group="dispatch",
                              handler=reject, dead_stream=keys.dead(part.firings))
    await consumer.run_until_idle()
    assert await dead_streams(redis, keys) == {part.dead_firings: 1}
    pending: Any = await redis.xpending(part.firings, "dispatch")
    assert pending["pending"] == 0
    entries: Any = await redis.xrange(part.dead_firings)
    [entry_id] = [i.decode() for i, _ in entries]
    letter = await find(redis, keys, entry_id)
    assert (await redrive(redis, keys, letter, now=time.time())).startswith(
        f"back on {part.firings} as ")
    assert await redis.xlen(part.dead_firings) == 0 and await redis.xlen(part.firings) == 2
    with pytest.raises(NotFound):
        await redrive(redis, keys, letter, now=time.time())


async def test_a_given_up_action_is_redriven_as_a_retry_job(
        ledger: Ledger, redis: aioredis.Redis, keys: Keys) -> None:
    token = Leases(redis, keys, 60_000, "d").keeper().token
    assert await ledger.begin([Start("f:1")], token) == [Begun.RUN]
    dead = {"data": '{"id": "f"}', "reason": "gave up", "action_index": "0",
            "action_type": "call-webhook", "attempts": "3", "automation_id": "a",
            "idempotency_key": "f:1"}
    await ledger.commit("f:1", token=token, done=GAVE_UP, dead=dead)
    entries: Any = await redis.xrange(keys.dead(DEAD_ACTIONS))
    [(entry_id, _)] = entries
    letter = await find(redis, keys, entry_id.decode(), "firings")
    assert "scheduled now as attempt 4" in await redrive(redis, keys, letter, now=time.time())
    [again] = await ledger.retries.claim(time.time() + 1, 30, 10)
    assert (again.key, again.attempt) == ("f:1", 4)
    assert not await redis.exists(keys.done("f:1"))
    assert orjson.loads(again.firing) == {"id": "f"}
