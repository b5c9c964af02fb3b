"""The trigger engine: events stream -> window state in Redis -> firings (the outbox).

One batch reads top to bottom (``handle_batch``): decode -> order -> match -> apply per
partition -> forget released followers -> ack (by the ``StreamConsumer``).

- **decode** (``intake``): orjson, the model only where a trigger may care, limits; repeats
  of an id inside the batch are dropped (the authoritative check is in each partition).
- **order** (``ordering`` + ``lua/order.lua``, global slot): holds followers whose leader has
  not arrived, releases those of the events that arrive right after them, moves the events
  clock. It runs while the batch is matched.
- **match** (``plan``): per event name, the covering triggers and their static op arguments
  come precomputed (once per name); per event only the resource check and ``for_each`` keys
  remain. One operation per (event, trigger), in its automation's partition.
- **apply** (``window`` + ``lua/apply.lua``): per partition the batch touches, one script
  call, all of them concurrent (a batch over ``OPS_PER_CALL`` operations is split, so one
  call never blocks Redis for long). Each marks its events seen in its partition (SET NX),
  updates the buckets and writes the firings to its outbox in one atomic step: a crash before
  a call loses nothing (the batch is redelivered), a crash after it double-counts nothing
  (the partition skips the events it has seen), whatever happened to the other partitions.
  An event no trigger watches touches no partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import anyio
import redis.asyncio as aioredis

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS
from automations.engine.announcer import Announcer
from automations.engine.decisions import DecisionLog
from automations.engine.intake import SKIPPED_EVENTS, BatchSource, Incoming, Intake
from automations.engine.loaded import Loaded
from automations.engine.ordering import Ordered, Ordering, OrderReply, OrderResult
from automations.engine.plan import Step
from automations.engine.specs import WindowSpec
from automations.engine.window import OpTemplate, Window, WindowBatch
from automations.events import Event, utcnow
from automations.keys import ENGINE_GROUP, Keys
from automations.metrics import current_metrics
from automations.models import Automation
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer, run_restarting, stop_when_set
from automations.streams.entries import Entry, Reject

log = logging.getLogger(__name__)

OPS_PER_CALL = 2_000  # bucket operations per round of calls (~30-40 ms of Redis at the bench mix)
READY_WEIGHT = 4  # ready firings (triggers that keep no state) counting as one operation
YIELD_EVERY = 10  # events matched between yields to the event loop while calls are in flight
DECODE_EVERY = 50  # entries decoded ahead between yields (~0.1-0.5 ms)

Matched = list[tuple[WindowSpec, OpTemplate]]  # an event's operations, in evaluation order


@dataclass(slots=True)
class Batch:
    """A batch decoded and matched: the CPU half of ``handle_batch``, done ahead of time
    (``look_ahead``) while the batch before it waits for Redis."""

    entries: Sequence[Entry]
    now: datetime
    items: list[Incoming]
    rejects: list[Reject]
    matched: dict[int, Matched] = field(default_factory=dict)  # by index in ``items``
    generation: int = 0  # of the loaded automations it was matched against


class Engine:
    """Evaluates the events stream against the loaded automations. All state is in Redis:
    any number of engines may share a stream (consumer group ``engine``)."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, *, keys: Keys | None = None,
        clock: Callable[[], datetime] = utcnow, consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys.from_settings(settings)
        self.clock = clock
        self._loaded = Loaded(self.keys)
        self._planner = self._loaded.planner
        self._window = Window(redis, self.keys, settings)
        self.ordering = Ordering(redis, self.keys, settings, declare_keys=settings.redis_cluster)
        self._consumer = StreamConsumer(
            redis, settings, stream=self.keys.events, group=ENGINE_GROUP,
            handler=self.handle_batch, dead_stream=self.keys.dead(self.keys.events),
            consumer=consumer, maxlen=settings.events_maxlen, look_ahead=self.look_ahead,
        )
        self.announcer = Announcer(redis, settings, keys=self.keys, consumer=consumer,
                                   resource_of=self._loaded.resources.get)
        self._intake = Intake(self._planner, settings, self.ordering.waits)
        self._ahead: Batch | None = None  # the next batch, decoded and matched (look_ahead)
        self._stopped: anyio.Event | None = None  # set by stop() while run() runs
        self._decisions = DecisionLog(redis, self.keys, settings) if settings.decision_log \
            else None
        self.events = 0
        self.fired = 0
        self.rejected = 0
        self.parked = 0
        self.processed = 0  # events evaluated (not duplicates, not held)
        self.metrics = current_metrics()

    @property
    def window(self) -> Window:
        """The bucket scripts (for inspection: ``await engine.window.bucket(key)``)."""
        return self._window

    def __repr__(self) -> str:
        return (
            f"Engine({self._loaded!r}, "
            f"events={self.events}, fired={self.fired}, parked={self.parked}, "
            f"rejected={self.rejected})"
        )

    # -- automations -----------------------------------------------------------------
    async def load(self, automations: Iterable[Automation]) -> None:
        """Replace the loaded automations (all of them: specs published for other triggers
        are withdrawn from the timer). Window state in Redis is kept."""
        for automation_id in self._loaded.ids():
            self._loaded.forget(automation_id)
        specs: list[WindowSpec] = []
        for automation in automations:
            if automation.enabled:
                specs.extend(self._loaded.remember(automation))
        await self._window.register(specs, replace=True)

    async def upsert(self, automation: Automation, *, trigger_changed: bool) -> None:
        """Add or replace one automation; a changed trigger starts from empty state."""
        old = self._loaded.forget(automation.id)
        if trigger_changed:
            await self._window.unregister(old)
            await self._window.reset(str(automation.id))
        if automation.enabled:
            await self._window.register(self._loaded.remember(automation))
        else:
            await self._window.unregister(old)

    async def remove(self, automation_id: UUID) -> None:
        """Stop evaluating an automation (deleted or paused). Its window state stays, so a
        resumed automation carries on; state of a deleted one expires (reactive buckets are
        swept, due proactive ones are dropped by the timer once the spec is gone)."""
        old = self._loaded.forget(automation_id)
        await self._window.unregister(old)

    # -- the loop ----------------------------------------------------------------------
    async def run(self, stopping: anyio.Event | None = None) -> None:
        """Consume until ``stop()`` (or ``stopping``); held followers past ``follows_wait_s``
        are released alongside, and the announcer publishes the firings' events. Both
        consumers finish the batch in hand. An error the events consumer does not take for
        an outage (redis-py's cluster client can raise an AttributeError while it reconnects
        a failed-over node) restarts it after a backoff, as the announcer's consumers are."""
        self._stopped = anyio.Event()  # ends a restart's backoff as soon as stop() is called
        async with anyio.create_task_group() as tg:
            if stopping is not None:
                tg.start_soon(stop_when_set, stopping, self.stop)
            async with anyio.create_task_group() as work:
                work.start_soon(self.announcer.run)
                async with anyio.create_task_group() as releasing:
                    releasing.start_soon(self._release_loop)
                    await run_restarting(self._consumer, self._stopped)
                    releasing.cancel_scope.cancel()
                self.announcer.stop()
            tg.cancel_scope.cancel()

    def stop(self) -> None:
        self._consumer.stop()
        self.announcer.stop()
        if self._stopped is not None:
            self._stopped.set()

    @property
    def failed_batches(self) -> int:
        """Batches whose handling failed and was retried (outages, slots in migration)."""
        return self._consumer.failures

    async def run_until_idle(self) -> int:
        """Handle every pending and new event, and announce every firing (whose events are
        handled in turn); returns how many events-stream entries were handled (for tests and
        benchmarks). Lost followers wait for ``release_lost()``, which ``run`` calls every
        second."""
        handled = 0
        while True:
            handled += await self._consumer.run_until_idle()
            if not await self.announcer.run_until_idle():
                return handled

    async def _release_loop(self) -> None:
        """``release_lost`` about every second. An outage backs off (logged once); anything
        else is a bug, logged with its traceback, and must not stop the engine."""
        period = min(1.0, max(self.settings.follows_wait_s, 0.05))
        redis_backoff = Backoff("engine: releasing lost followers",
                                cap_s=self.settings.reconnect_max_s, logger=log)
        delay = period
        while True:
            await anyio.sleep(delay)
            try:
                await self.release_lost()
            except CONNECTION_ERRORS as exc:
                delay = redis_backoff.next_delay(exc)
                continue
            except Exception as exc:
                log.exception("engine: releasing lost followers failed")
                delay = max(period, redis_backoff.next_delay(exc, outage=False))
                continue
            redis_backoff.recovered()
            delay = period

    async def release_lost(self) -> int:
        """Evaluate followers held longer than ``follows_wait_s`` (their leader never came)."""
        now = self.clock()
        order = await self.ordering.lost(now, self._planner)
        if order.items:
            await self._apply(order, {}, now)
            await self.ordering.forget(order.released)
        return len(order.items)

    async def handle_batch(self, entries: Sequence[Entry]) -> list[Reject]:
        """One batch: decode -> order (beside: match) -> apply per partition -> forget. A
        batch the consumer read ahead comes decoded and matched already (``look_ahead``)."""
        batch, self._ahead = self._ahead, None
        if batch is not None and (batch.entries is not entries
                                  or batch.generation != self._loaded.generation):
            self._discard(batch)
            batch = None
        if batch is None:
            batch = self._decode(entries, self.clock())
            items = batch.items
            if items:
                ordering = asyncio.ensure_future(self.ordering.order(items, batch.now))
                try:
                    await asyncio.sleep(0)  # the order call goes out; match meanwhile
                    await self._match_all(batch, ordering)
                finally:
                    reply = await ordering
        elif batch.items:
            reply = await self.ordering.order(batch.items, batch.now)
        if batch.items:
            await self._commit(batch, reply)
        self.events += len(entries)
        self.rejected += len(batch.rejects)
        self.metrics.events_handled(len(entries), len(batch.items), len(batch.rejects))
        return batch.rejects

    async def look_ahead(self, entries: Sequence[Entry]) -> None:
        """Decode and match ``entries`` (the batch after the one being handled, which the
        consumer read ahead) while that one waits for Redis: ``handle_batch(entries)`` then
        starts at the order call. Yields to the event loop every few events, so the batch in
        hand goes on as soon as its replies come. A failure here only loses the head start."""
        if self._ahead is not None:
            self._discard(self._ahead)
            self._ahead = None
        now = self.clock()
        batch: Batch | None = None
        ready = False
        try:
            source = BatchSource(self._intake, entries, now)
            batch = self._batch(source, await source.decode_yielding(DECODE_EVERY))
            await self._match_all(batch, None)
            ready = True
        except Exception:
            log.exception("engine: preparing a batch ahead failed; it is prepared when handled")
        finally:
            if ready:
                self._ahead = batch
            elif batch is not None:
                self._discard(batch)

    def _decode(self, entries: Sequence[Entry], now: datetime) -> Batch:
        source = BatchSource(self._intake, entries, now)
        return self._batch(source, source.decode())

    def _batch(self, source: BatchSource, items: list[Incoming]) -> Batch:
        """The batch of ``source``'s decoded ``items``, opened in the decision log."""
        batch = Batch(source.entries, source.now, items, source.rejects,
                      generation=self._loaded.generation)
        if self._decisions is not None and items:
            self._decisions.begin(batch, source.entries)
        return batch

    def _discard(self, batch: Batch) -> None:
        if self._decisions is not None:
            self._decisions.discard(batch)

    async def _commit(self, batch: Batch, reply: OrderReply) -> None:
        """The Redis half of a batch: its order resolved, applied per partition, released
        followers forgotten."""
        order = self.ordering.resolve(reply, batch.items, batch.now, self._planner,
                                      batch.matched, first=bool(self._loaded.global_keys))
        recording = self._decisions.write(batch) if self._decisions else None
        await self._apply(order, batch.matched, batch.now)
        if recording is not None:
            await recording  # beside the script calls (it logs its own failures)
        await self.ordering.forget(order.released)
        self.parked += order.parked
        self.processed += order.new

    async def _match_all(self, batch: Batch, pending: asyncio.Future[OrderReply] | None
                         ) -> None:
        """Every watched event's operations, by batch index, into ``batch.matched``
        (yielding to the event loop now and then while a call is in flight: the order call
        of this batch, or ``pending`` None, the calls of the batch before)."""
        matched = batch.matched
        for n, item in enumerate(batch.items):
            ops = self._ops_of(item, batch)
            if ops:
                matched[n] = ops
            if n % YIELD_EVERY == 0 and (pending is None or not pending.done()):
                await asyncio.sleep(0)

    async def _apply(self, order: OrderResult, matched: dict[int, Matched], now: datetime
                     ) -> None:
        """The ordered events' operations, grouped by partition: one script call per partition
        touched, concurrent, at most ``OPS_PER_CALL`` operations a round (the next round is
        built while one is in flight; rounds go one after the other, so each partition sees
        its events in order)."""
        iso = now.isoformat()
        batches: dict[int, WindowBatch] = {}
        ops = 0.0
        flight: asyncio.Future[None] | None = None
        opens = frozenset(self._loaded.global_keys)  # the first counted event opens missing ones
        try:
            for ordered in order.items:
                found = self._operations(ordered, matched) or []
                if opens and ordered.item.name not in SKIPPED_EVENTS:
                    ops += self._add(batches, ordered, found, iso, opens)
                    opens = frozenset()
                elif found:
                    ops += self._add(batches, ordered, found, iso)
                else:
                    continue
                if ops >= OPS_PER_CALL:
                    if flight is not None:
                        await flight
                    flight = asyncio.ensure_future(self._send(list(batches.values()), now))
                    batches, ops = {}, 0.0
            if flight is not None:
                await flight
                flight = None
            if batches:
                await self._send(list(batches.values()), now)
        finally:
            if flight is not None and not flight.done():
                flight.cancel()

    def _operations(self, ordered: Ordered, matched: dict[int, Matched]) -> Matched | None:
        if ordered.batch_index >= 0:
            return matched.get(ordered.batch_index)
        return self._ops_of(ordered.item, None)  # a released follower: matched now

    def _ops_of(self, item: Incoming, batch: Batch | None) -> Matched | None:
        """An event's operations (None when no trigger may care: no model was built)."""
        if item.event is None or item.name in SKIPPED_EVENTS:
            return None
        return self._ops(item.event, batch, item.id)

    def _add(self, batches: dict[int, WindowBatch], ordered: Ordered, found: Matched,
             iso: str, partitions: Iterable[int] = ()) -> float:
        """Add one event and its operations to the batches of their partitions (and to
        ``partitions``, without operations: as in the reference, the first event after a load
        opens the global proactive windows that are missing). Returns their weight toward
        ``OPS_PER_CALL``: a ready firing costs the script an appended string, not a bucket."""
        item = ordered.item
        numbers: dict[int, int] = {}

        def number_in(part: int) -> int:
            number = numbers.get(part)
            if number is None:
                batch = batches.get(part)
                if batch is None:
                    batch = batches[part] = self._window.batch(
                        part, iso, self._loaded.global_keys.get(part, ()))
                number = numbers[part] = batch.add_event(
                    item.id, item.occurred_us, item.raw, ordered.asof_us)
            return number

        for part in partitions:
            number_in(part)
        ready = 0
        for spec, template in found:
            number = number_in(spec.partition)
            batch = batches[spec.partition]
            if spec.fires_at_once:
                batch.add_ready(number, spec, template)
                ready += 1
            else:
                batch.add_op(number, spec, template)
        return len(found) - ready + ready / READY_WEIGHT

    async def _send(self, batches: list[WindowBatch], now: datetime) -> None:
        """One round: every partition's call at once. A failed call fails the batch (it is
        redelivered; the partitions that applied it skip it then)."""
        results = await asyncio.gather(
            *(self._window.apply(b, now) for b in batches), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            self.fired += result.fired

    def _ops(self, event: Event, batch: Batch | None, event_id: str) -> Matched:
        """The event's operations: name-level work comes precomputed from the planner, only
        the resource check and ``for_each`` keys are per event (its decision noted for
        ``batch``, None: a follower released outside its batch)."""
        plan, steps = self._planner.match(event)
        if self._decisions is not None:
            self._decisions.note(batch, event, plan.steps, steps, event_id)
        if not steps:
            return []
        if plan.ordered and len(steps) > 1 and not all(s.spec.top_level for s in steps):
            steps.sort(key=_evaluation_order)  # a composite's children in trigger walk order
        encode = self._planner.encode
        resource, related = event.resource, event.related
        out: Matched = []
        for step in steps:
            template = step.template
            if template is None:
                compiled = step.compiled
                template = step.keyed(*encode(
                    compiled, compiled.bucketing_key_parts(resource, related)))
            out.append((step.spec, template))
        return out


def _evaluation_order(step: Step) -> tuple[str, int]:
    return (step.spec.automation_id, step.spec.ordinal)
