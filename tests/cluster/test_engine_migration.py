"""A partition's slot moves to another master while events flow through two engines: every
window still counts each event once.

- Counters (one per partition) count every event in one window that never fills: at the end
  each holds exactly the number of events published (a count lost in the move, or an event
  counted twice, shows).
- Pairs (three per partition) wait for two events of one resource; each resource gets two,
  so each pair automation fires exactly once per resource, on one of them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from automations.connection import connect
from automations.engine.engine import Engine
from automations.engine.outbox import firings_of
from automations.events import Event
from automations.keys import ENGINE_GROUP, Keys
from automations.models import Automation
from automations.settings import Settings
from automations.streams.publish import Publisher
from bench.redis_cluster import LocalCluster
from tests.automations.engine_harness import automation
from tests.redis_cluster import settings_for, wait_for_progress
from tests.wait import wait_until

pytestmark = pytest.mark.timeout(180)

AUTOMATIONS = 9
PAIRS_PER_ROUND = 10


class Flow:
    """Publishes pairs of events (one resource each) until ``stop``; ``rounds`` counts the
    batches published, so the migration can wait for traffic between its steps."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.done = anyio.Event()  # publish() returned: its last round is counted
        self.rounds = 0
        self.resources: list[str] = []
        self.pair: dict[str, set[str]] = {}  # resource -> the ids of its two events
        self.published = 0

    async def publish(self, publisher: Publisher) -> None:
        try:
            await self._rounds(publisher)
        finally:
            self.done.set()

    async def _rounds(self, publisher: Publisher) -> None:
        n = 0
        while not self.stop.is_set():
            firsts = [self._event(f"r{n}.{i}") for i in range(PAIRS_PER_ROUND)]
            seconds = [self._event(f"r{n}.{i}") for i in range(PAIRS_PER_ROUND)]
            await self.send(publisher, firsts)
            await self.send(publisher, seconds)
            for first, second in zip(firsts, seconds, strict=True):
                resource = second.resource["prefect.resource.id"]
                self.resources.append(resource)
                self.pair[resource] = {str(first.id), str(second.id)}
            self.published += len(firsts) + len(seconds)
            self.rounds += 1
            n += 1
            await anyio.sleep(0.005)

    async def send(self, publisher: Publisher, events: list[Event]) -> None:
        await publisher.publish(events)  # retried by the client through the move

    @staticmethod
    def _event(resource: str) -> Event:
        return Event(event="load", resource={"prefect.resource.id": resource})

    def paced(self) -> None:
        """In the migration thread: wait until more events went out."""
        wait_for_progress(lambda: self.rounds, "the publisher")


@pytest.fixture
def moving(own_cluster: LocalCluster, prefix: str, tmp_path: Path) -> tuple[LocalCluster, Settings]:
    settings = settings_for(own_cluster, prefix, tmp_path / "data").model_copy(
        update={"decision_log": False})
    return own_cluster, settings


def refusals(cluster: LocalCluster) -> int:
    """TRYAGAIN and ASK replies the masters gave (a slot in migration refusing a call)."""
    total = 0
    for node in cluster.nodes():
        with cluster.client(node.port) as client:
            stats: Any = client.info("errorstats")
        total += sum(int(stats.get(f"errorstat_{kind}", {}).get("count", 0))
                     for kind in ("TRYAGAIN", "ASK"))
    return total


def pair_automations() -> list[Automation]:
    """``AUTOMATIONS`` automations that fire on the second ``load`` event of a resource."""
    return [
        automation({"posture": "Reactive", "expect": ["load"], "threshold": 2, "within": 600,
                    "for_each": ["prefect.resource.id"]}, name=f"pair-{i}")
        for i in range(AUTOMATIONS)]


async def run_with_migration(cluster: LocalCluster, settings: Settings,
                             migrate: Callable[[Flow, Keys], None], *,
                             refusals_expected: bool = False) -> None:
    redis = connect(settings)
    keys = Keys.from_settings(settings)
    pairs = pair_automations()
    counters = one_per_partition(keys)
    automations = pairs + list(counters.values())
    await redis.xgroup_create(keys.events, ENGINE_GROUP, id="0", mkstream=True)
    engines = [Engine(redis, settings, consumer=f"engine-{i}") for i in range(2)]
    for engine in engines:
        await engine.load(automations)
    flow = Flow()
    async with anyio.create_task_group() as tg:
        for engine in engines:
            tg.start_soon(engine.run)
        tg.start_soon(flow.publish, Publisher(redis, settings))
        try:
            await anyio.to_thread.run_sync(migrate, flow, keys)
        finally:
            flow.stop.set()
        await flow.done.wait()  # the round in flight when asked to stop is published whole
        wanted = len(flow.resources) * AUTOMATIONS

        async def all_counted() -> bool:
            return (len(await read_firings(redis, keys)) >= wanted
                    and await counts(redis, keys, counters) == [flow.published] * 3)

        await wait_until(all_counted, timeout=60)
        for engine in engines:
            engine.stop()
    if refusals_expected:
        assert refusals(cluster) > 0  # engine calls did meet the slot half moved
    firings = await read_firings(redis, keys)
    per_pair: dict[tuple[str, str], list[str]] = {}
    for automation_id, resource, event_id in firings:
        per_pair.setdefault((automation_id, resource), []).append(event_id)
    assert len(firings) == len(per_pair)  # no automation fired twice for one resource
    assert len(per_pair) == wanted  # nor missed one
    for (_, resource), event_ids in per_pair.items():
        assert event_ids[0] in flow.pair[resource]
    assert await counts(redis, keys, counters) == [flow.published] * 3
    await redis.aclose()


def one_per_partition(keys: Keys) -> dict[int, Automation]:
    """A counter automation in each partition (ids drawn until every partition has one)."""
    found: dict[int, Automation] = {}
    while len(found) < keys.partitions:
        made = automation({"posture": "Reactive", "expect": ["load"], "threshold": 10**9,
                           "within": 3600}, name="counter")
        found.setdefault(keys.of(made.id).number, made)
    return found


async def counts(redis: aioredis.Redis, keys: Keys, counters: dict[int, Automation]
                 ) -> list[int]:
    """Each counter's count (its one bucket's)."""
    found = []
    for number, made in sorted(counters.items()):
        tid = str(made.trigger.id)
        value = await redis.hget(keys.partition(number).bucket(str(made.id), tid, ""), "c")
        found.append(int(value or 0))
    return found


async def read_firings(redis: aioredis.Redis, keys: Keys) -> list[tuple[str, str, str]]:
    found = []
    for outbox in keys.outboxes:
        entries: Any = await redis.xrange(outbox)
        for _, fields in entries:
            for firing in firings_of(fields):
                event = firing.triggering_event or {}
                found.append((str(firing.automation_id),
                              str(firing.triggering_labels["prefect.resource.id"]),
                              str(event.get("id"))))
    return found


async def test_a_partition_moves_key_by_key_while_engines_evaluate(
        moving: tuple[LocalCluster, Settings]) -> None:
    """One key per MIGRATE, with events published between any two: engine calls meet the
    slot half moved (refused whole, retried) many times."""
    cluster, settings = moving

    def migrate(flow: Flow, keys: Keys) -> None:
        flow.paced()
        part = keys.partition(1)
        cluster.move_key(part.firings, cluster.other_master(part.firings), batch=1,
                         between_batches=flow.paced)
        flow.paced()

    await run_with_migration(cluster, settings, migrate, refusals_expected=True)


async def test_a_partition_moves_with_redis_cli_reshard_while_engines_evaluate(
        moving: tuple[LocalCluster, Settings]) -> None:
    cluster, settings = moving

    def migrate(flow: Flow, keys: Keys) -> None:
        part = keys.partition(0)  # in the first master's slots, which start at 0
        slot = key_slot(part.firings.encode())
        source = cluster.owner(slot)
        target = cluster.other_master(part.firings)
        flow.paced()
        cluster.reshard(source, target, slot + 1)  # its first slots, through the partition's
        assert cluster.owner(slot).id == target.id
        flow.paced()

    await run_with_migration(cluster, settings, migrate)
