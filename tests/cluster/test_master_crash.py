"""A master dies (SIGKILL, no handover) while events flow through two engines, and the
cluster promotes its replica by itself after the node timeout; ``test_engine_migration``'s
counters (one per partition, counting every event) and pairs (firing once per resource).

Redis replicates asynchronously: the writes the dead master acknowledged last may be missing
on its replica, so unlike a manual failover (``test_failover``) exactly-once is not checked.
What must hold whatever was lost:

- the engines evaluate again once the replica serves, and everything published is evaluated
  within a deadline;
- nothing is counted twice: each counter holds exactly the events its partition recorded as
  evaluated (never more than were published), and no pair fires twice for one resource;
- what is lost is bounded: an event a partition never evaluated was either dead-lettered
  (kept, re-drivable) or published in the last ``TAIL_S`` before the kill (the writes the
  replica had not received yet: tens of milliseconds at most, measured on loopback).

Measured (docs/cluster.md): killing the global slot's master usually loses nothing, and now
and then the last 10-80 events of the stream (the tail the replica lacked); killing a
partition's master can dead-letter batches another engine held during the outage (their
delivery counts grew while it retried them). An engine that raises is replaced, as a
supervisor restarts a process (none has since its events consumer restarts itself); redis-py's
``REDIS_PY_RACE`` is tolerated where it shows (a restarted consumer's log line, a refused
publish), any other error fails the test."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from automations.connection import CONNECTION_ERRORS, connect
from automations.engine.engine import Engine
from automations.errors import BusUnavailable
from automations.events import Event
from automations.keys import ANNOUNCE_GROUP, ENGINE_GROUP, Keys
from automations.models import Automation
from automations.settings import Settings
from automations.streams.publish import Publisher
from bench.redis_cluster import LocalCluster
from tests.cluster.test_engine_migration import (
    AUTOMATIONS,
    Flow,
    counts,
    one_per_partition,
    pair_automations,
    read_firings,
)
from tests.cluster.test_failover import announced
from tests.redis_cluster import replicated_cluster as replicated_cluster
from tests.redis_cluster import settings_for, wait_for_progress
from tests.wait import acknowledged, wait_until

pytestmark = pytest.mark.timeout(120)

REPUBLISH_S = 30.0  # how long a batch is published again while the cluster refuses it
DRAIN_S = 60.0
ENGINES = 2
REDIS_PY_RACE = "'NoneType' object has no attribute 'writelines'"
"""redis-py (8.1) closing a node's free connections after a connection error while another
task reconnects one of them: that task's command raises this AttributeError, which the
services do not take for an outage (``automations.connection.CONNECTION_ERRORS``): the
consumer that meets it is restarted (logged as an error), and ``Publisher.publish`` raises it
(not ``BusUnavailable``)."""
TAIL_S = 1.0
"""How recent an event lost without a trace may be: the replica lacks only what its master
wrote last (milliseconds on loopback; 1 s leaves room for a loaded machine)."""


class RepublishingFlow(Flow):
    """``Flow`` whose batches are published again while the cluster refuses them (the
    stream's master dead, or every slot refused while a master is down and not yet
    replaced), as a producer must: ``BusUnavailable`` leaves the batch maybe on the stream,
    maybe not, and the engine counts an event id once. Remembers when each event's publish
    call returned."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0
        self.sent_at: dict[str, float] = {}
        self.races: list[str] = []  # publish calls that raised ``REDIS_PY_RACE``

    async def send(self, publisher: Publisher, events: list[Event]) -> None:
        deadline = time.monotonic() + REPUBLISH_S
        while True:
            try:
                await publisher.publish(events)
            except (BusUnavailable, AttributeError) as exc:
                if isinstance(exc, AttributeError):
                    if str(exc) != REDIS_PY_RACE:
                        raise
                    self.races.append(failure(exc))
                self.refused += 1
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.05)
                continue
            now = time.monotonic()
            self.sent_at.update((str(e.id), now) for e in events)
            return


@dataclass
class Outcome:
    """What a run counted and lost; per partition lists are in partition order."""

    published: int
    counted: list[int]  # each partition's counter
    unseen: list[set[str]]  # events published that a partition never evaluated
    dead_lettered: set[str]  # event ids the engines gave up on (the dead stream)
    ages_s: dict[str, float]  # event id -> seconds from its publish to the kill
    pairs_wanted: int
    pairs_fired: int  # (automation, resource) that fired at least once
    doubled_pairs: int  # firings of an (automation, resource) that had fired already
    refused_publishes: int
    promoted_after_s: float
    crashes: list[str]  # tracebacks of the engines that raised (each replaced)
    publish_races: list[str]  # tracebacks of publish calls that raised ``REDIS_PY_RACE``

    def silent(self, part: int) -> set[str]:
        """Lost by the partition and not dead-lettered."""
        return self.unseen[part] - self.dead_lettered

    def __str__(self) -> str:
        silent_ms = [max((self.ages_s[i] * 1000 for i in self.silent(p)), default=0.0)
                     for p in range(len(self.counted))]
        return (f"published={self.published} "
                f"lost_counts={[self.published - c for c in self.counted]} "
                f"of_them_dead_lettered={[len(u & self.dead_lettered) for u in self.unseen]} "
                f"dead_letters={len(self.dead_lettered)} "
                f"oldest_silent_loss_ms={[round(ms, 1) for ms in silent_ms]} "
                f"pairs_lost={self.pairs_wanted - self.pairs_fired}/{self.pairs_wanted} "
                f"doubled_pairs={self.doubled_pairs} refused_publishes={self.refused_publishes} "
                f"promoted_after_s={self.promoted_after_s:.1f} "
                f"engines_crashed={len(self.crashes)} "
                f"publish_races={len(self.publish_races)}")


async def drained(redis: aioredis.Redis, keys: Keys) -> bool:
    """Every outbox announced and acknowledged, then every events-stream entry (the
    announcements too) evaluated and acknowledged."""
    for outbox in keys.outboxes:
        if not await acknowledged(redis, outbox, ANNOUNCE_GROUP):
            return False
    return await acknowledged(redis, keys.events, ENGINE_GROUP)


async def evaluated_ids(redis: aioredis.Redis, keys: Keys) -> list[set[str]]:
    """Per partition, the event ids it recorded as evaluated (its dedupe sets, written in
    the same script call as its counts and firings)."""
    found = []
    for part in keys.all_partitions:
        seen: set[str] = set()
        async for key in redis.scan_iter(match=f"{part.seen_ids_prefix}*"):
            members: Any = await redis.smembers(key)
            seen |= {m.decode() for m in members}
        found.append(seen)
    return found


def failure(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


class SupervisedEngines:
    """Engines as processes under a supervisor: one that raises is recorded (``crashes``)
    and replaced by a new one (a new consumer name: the others claim what it held)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings,
                 automations: list[Automation]) -> None:
        self.redis = redis
        self.settings = settings
        self.automations = automations
        self.started: list[Engine] = []  # the ones replaced too
        self.crashes: list[str] = []
        self.stopping = anyio.Event()

    def evaluated(self) -> int:
        return sum(engine.processed for engine in self.started)

    async def run(self, n: int) -> None:
        restarts = 0
        while not self.stopping.is_set():
            engine = await self._start(f"engine-{n}.{restarts}")
            try:
                await engine.run(self.stopping)
            except Exception as exc:
                self.crashes.append(failure(exc))
                restarts += 1

    async def _start(self, name: str) -> Engine:
        """An engine with the automations loaded (retried while a slot has no master)."""
        engine = Engine(self.redis, self.settings, consumer=name)
        deadline = time.monotonic() + REPUBLISH_S
        while True:
            try:
                await engine.load(self.automations)
            except Exception as exc:
                if not isinstance(exc, CONNECTION_ERRORS):
                    if str(exc) != REDIS_PY_RACE:
                        raise
                    self.crashes.append(failure(exc))
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.05)
                continue
            self.started.append(engine)
            return engine


async def run_with_crash(cluster: LocalCluster, settings: Settings, victim_key: str
                         ) -> Outcome:
    """Two engines evaluate pairs and counters while the master of ``victim_key`` is killed
    and its replica promoted; then publishing stops and everything left is evaluated."""
    redis = connect(settings)
    keys = Keys.from_settings(settings)
    pairs = pair_automations()
    counters = one_per_partition(keys)
    await redis.xgroup_create(keys.events, ENGINE_GROUP, id="0", mkstream=True)
    engines = SupervisedEngines(redis, settings, pairs + list(counters.values()))
    evaluated = engines.evaluated
    flow = RepublishingFlow()
    killed_at = promoted_after = 0.0

    def crash(flow: Flow, keys: Keys) -> None:
        nonlocal killed_at, promoted_after
        flow.paced()
        wait_for_progress(evaluated, "the engines")
        replica = cluster.kill(cluster.owner(key_slot(victim_key.encode())))
        killed_at = time.monotonic()
        promoted_after = cluster.wait_promoted(replica)
        assert cluster.owner(key_slot(victim_key.encode())).port == replica.port
        flow.paced()  # events published since the replica serves
        wait_for_progress(evaluated, "the engines")  # evaluated
        wait_for_progress(announced(cluster, keys), "the engines' firings")  # and firing

    async with anyio.create_task_group() as tg:
        for n in range(ENGINES):
            tg.start_soon(engines.run, n)
        tg.start_soon(flow.publish, Publisher(redis, settings))
        try:
            await anyio.to_thread.run_sync(crash, flow, keys)
        finally:
            flow.stop.set()
        await flow.done.wait()
        await wait_until(partial(drained, redis, keys), timeout=DRAIN_S,
                         what="every event published evaluated")
        engines.stopping.set()
    firings = await read_firings(redis, keys)
    per_pair: dict[tuple[str, str], int] = {}
    for automation_id, resource, _ in firings:
        per_pair[automation_id, resource] = per_pair.get((automation_id, resource), 0) + 1
    dead: Any = await redis.xrange(keys.dead(keys.events))
    published_ids = set(flow.sent_at)
    outcome = Outcome(
        published=flow.published, counted=await counts(redis, keys, counters),
        unseen=[published_ids - seen for seen in await evaluated_ids(redis, keys)],
        dead_lettered={fields[b"id"].decode() for _, fields in dead},
        ages_s={i: killed_at - at for i, at in flow.sent_at.items()},
        pairs_wanted=len(flow.resources) * AUTOMATIONS, pairs_fired=len(per_pair),
        doubled_pairs=len(firings) - len(per_pair), refused_publishes=flow.refused,
        promoted_after_s=promoted_after, crashes=engines.crashes,
        publish_races=flow.races)
    await redis.aclose()
    return outcome


@pytest.fixture
def crashing(replicated_cluster: LocalCluster, prefix: str,
             tmp_path: Path) -> tuple[LocalCluster, Settings]:
    settings = settings_for(replicated_cluster, prefix, tmp_path / "data").model_copy(
        update={"decision_log": False})
    return replicated_cluster, settings


def partition_apart(cluster: LocalCluster, keys: Keys) -> str:
    """A key of a partition whose master does not serve the global slot."""
    global_owner = cluster.owner(key_slot(keys.events.encode()))
    return next(part.firings for part in keys.all_partitions
                if cluster.owner(key_slot(part.firings.encode())).id != global_owner.id)


@pytest.mark.parametrize("victim", ["global", "partition"])
async def test_a_master_dies_while_engines_evaluate(
        crashing: tuple[LocalCluster, Settings], victim: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """``global``: the master of the events stream, the engine group and the order script
    (and of the partition sharing it); ``partition``: the master of a partition only."""
    cluster, settings = crashing
    keys = Keys.from_settings(settings)
    key = keys.events if victim == "global" else partition_apart(cluster, keys)
    outcome = await run_with_crash(cluster, settings, key)
    print(f"\nmaster crash ({victim}): {outcome}")
    formatter = logging.Formatter()
    errors = outcome.crashes + outcome.publish_races + [
        formatter.format(r) for r in caplog.records if r.levelno >= logging.ERROR]
    unknown = [error for error in errors if REDIS_PY_RACE not in error]
    assert not unknown, unknown[0]  # an engine or one of its loops failed otherwise
    assert outcome.doubled_pairs == 0  # no pair fired twice for one resource
    for part, counted in enumerate(outcome.counted):
        # each event its partition evaluated counted once, no other
        assert counted == outcome.published - len(outcome.unseen[part])
        late = {i: outcome.ages_s[i] for i in outcome.silent(part)
                if not 0 <= outcome.ages_s[i] <= TAIL_S}
        assert not late, f"partition {part} lost, without a dead letter, events published " \
                         f"longer than {TAIL_S} s before the kill (or after it): {late}"
    assert not outcome.crashes  # the engines survive the race: their consumers restart
