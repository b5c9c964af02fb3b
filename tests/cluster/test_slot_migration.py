"""Slots move between masters while the non-engine writers run (publishers, the dispatcher's
ledger, the automations store, writes to partition outboxes): nothing is lost and nothing is
written twice. The global slot moves one key per MIGRATE, paced so that writers act between
every two (keys of one script split between masters: TRYAGAIN, retried like an outage); a
partition moves with ``redis-cli --cluster reshard``."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from actions.models import DoNothing
from automations.connection import CONNECTION_ERRORS, connect
from automations.dispatch.ledger import DONE, Begun, Ledger, Recorded, Start
from automations.dispatch.retries import RetryQueue
from automations.events import Event
from automations.keys import Keys
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import Publisher
from bench.redis_cluster import LocalCluster
from tests.actions.stories import automation
from tests.redis_cluster import settings_for, wait_for_progress

PACE_TIMEOUT_S = 20.0
BATCH = 20


@dataclass
class Traffic:
    """Writers that run until ``stop``; ``attempts`` counts round trips tried (the migration
    waits for one between batches), ``retried`` those refused for now."""

    stop: threading.Event = field(default_factory=threading.Event)
    attempts: int = 0
    retried: int = 0
    published: list[str] = field(default_factory=list)
    begun: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    outbox: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def until_done(self, op: Callable[[], Awaitable[Any]]) -> Any:
        """``op`` until it gets through: a refusal of a slot in migration is transient."""
        while True:
            self.attempts += 1
            try:
                return await op()
            except CONNECTION_ERRORS as exc:
                self.retried += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                await anyio.sleep(0.01)

    def paced(self) -> None:
        """In the migration thread, after a MIGRATE: wait until the writers tried again."""
        wait_for_progress(lambda: self.attempts, "the writers")


@pytest.fixture
async def moving(own_cluster: LocalCluster, prefix: str,
                 tmp_path: Path) -> tuple[LocalCluster, Settings, aioredis.Redis]:
    settings = settings_for(own_cluster, prefix, tmp_path / "data")
    return own_cluster, settings, connect(settings)


async def publish(traffic: Traffic, publisher: Publisher) -> None:
    n = 0
    while not traffic.stop.is_set():
        batch = [Event(event="load", resource={"prefect.resource.id": f"r{n}.{i}"})
                 for i in range(BATCH)]
        await traffic.until_done(partial(publisher.publish, batch))
        traffic.published += [str(e.id) for e in batch]
        n += 1


async def run_actions(traffic: Traffic, ledger: Ledger) -> None:
    n = 0
    while not traffic.stop.is_set():
        keys = [f"f{n}:{i}" for i in range(5)]
        flags = await traffic.until_done(partial(ledger.begin, [Start(k) for k in keys], "tok"))
        assert flags == [Begun.RUN] * 5, flags
        for key in keys:
            recorded = await traffic.until_done(partial(ledger.commit, key, token="tok",
                                                        done=DONE))
            assert recorded is Recorded.WRITTEN
        traffic.begun += keys
        n += 1


async def apply_automations(traffic: Traffic, store: AutomationStore) -> None:
    n = 0
    while not traffic.stop.is_set():
        name = f"a{n}"
        await traffic.until_done(partial(store.apply, [automation(DoNothing(), name=name)]))
        traffic.applied.append(name)
        n += 1


async def write_outboxes(traffic: Traffic, redis: aioredis.Redis, keys: Keys) -> None:
    n = 0
    while not traffic.stop.is_set():
        part = keys.partition(n % keys.partitions)
        entry = f"{part.number}:{n}"
        await traffic.until_done(partial(redis.xadd, part.firings, {b"data": entry.encode()}))
        traffic.outbox.append(entry)
        n += 1


async def with_traffic(redis: aioredis.Redis, settings: Settings, keys: Keys,
                       migrate: Callable[[Traffic], None]) -> Traffic:
    traffic = Traffic()
    writers = [
        lambda: publish(traffic, Publisher(redis, settings)),
        lambda: run_actions(traffic, Ledger(redis, keys, settings, RetryQueue(redis, keys))),
        lambda: apply_automations(traffic, AutomationStore(redis, keys)),
        lambda: write_outboxes(traffic, redis, keys)]
    async with anyio.create_task_group() as tg:
        for writer in writers:
            tg.start_soon(writer)
        try:
            await anyio.to_thread.run_sync(migrate, traffic)
        finally:
            traffic.stop.set()
    return traffic


async def nothing_lost_nothing_twice(redis: aioredis.Redis, keys: Keys,
                                     traffic: Traffic) -> None:
    entries: Any = await redis.xrange(keys.events)
    ids = [fields[b"id"].decode() for _, fields in entries]
    assert set(ids) == set(traffic.published)
    # A publish retried after a refusal may repeat events it had written (at least once; the
    # engine drops an event id it has seen): never more than that.
    assert len(ids) - len(set(ids)) <= BATCH * traffic.retried
    done: Any = await redis.mget([keys.done(k) for k in traffic.begun])
    assert done == [DONE] * len(traffic.begun)
    names = sorted(a.name for a in await AutomationStore(redis, keys).all())
    assert names == sorted(traffic.applied)
    written = []
    for part in keys.all_partitions:
        raw: Any = await redis.xrange(part.firings)
        written += [fields[b"data"].decode() for _, fields in raw]
    assert sorted(written) == sorted(traffic.outbox)


async def test_the_global_slot_moves_key_by_key_while_writers_run(
        moving: tuple[LocalCluster, Settings, aioredis.Redis]) -> None:
    cluster, settings, redis = moving
    keys = Keys.from_settings(settings)
    ledger = Ledger(redis, keys, settings, RetryQueue(redis, keys))
    for first in range(0, 300, 100):  # keys to move before the writers' keys
        await ledger.begin([Start(f"old{i}") for i in range(first, first + 100)], "tok")
    source = cluster.owner(key_slot(keys.events.encode()))
    target = cluster.other_master(keys.events)

    def migrate(traffic: Traffic) -> None:
        cluster.move_key(keys.events, target, batch=1, between_batches=traffic.paced)

    traffic = await with_traffic(redis, settings, keys, migrate)
    assert cluster.owner(key_slot(keys.events.encode())).id == target.id != source.id
    assert traffic.published and traffic.begun and traffic.applied and traffic.outbox
    await nothing_lost_nothing_twice(redis, keys, traffic)
    await redis.aclose()


async def test_a_partition_moves_with_redis_cli_reshard_while_writers_run(
        moving: tuple[LocalCluster, Settings, aioredis.Redis]) -> None:
    cluster, settings, redis = moving
    keys = Keys.from_settings(settings)
    part = keys.partition(0)
    slot = key_slot(part.firings.encode())
    source = cluster.owner(slot)
    target = cluster.other_master(part.firings)

    def migrate(traffic: Traffic) -> None:
        traffic.paced()  # the writers run before the reshard starts
        cluster.reshard(source, target, slot + 1)  # the source's first slots: 0 to slot
        traffic.paced()

    traffic = await with_traffic(redis, settings, keys, migrate)
    assert cluster.owner(slot).id == target.id
    await nothing_lost_nothing_twice(redis, keys, traffic)
    await redis.aclose()
