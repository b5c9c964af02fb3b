"""The trigger engine: events stream -> window state in Redis -> firings (the outbox).

One batch reads top to bottom (``handle_batch``): decode -> dedupe -> match -> apply ->
(released followers) -> ack (by the ``StreamConsumer``).

- **decode** and **dedupe** (``intake``): orjson, the model only where a trigger may care,
  limits; repeats of an id inside the batch are dropped (the authoritative check is in Redis).
- **match** (``plan``): per event name, the covering triggers and their static op arguments
  come precomputed (once per name); per event only the resource check and ``for_each`` keys
  remain. One operation per (event, trigger).
- **apply** (``window`` + ``lua/apply.lua``): one script call per batch (a batch over
  ``OPS_PER_CALL`` operations is split, so one call never blocks Redis for long) marks each
  event seen (SET NX on ``keys.seen(id)``), holds followers whose leader was not processed
  (``follows``), updates every bucket and writes every firing to the outbox. Marking seen is
  part of the same atomic step as the state change, so a crash before the script loses
  nothing (the batch is redelivered and evaluated), a crash after it double-counts nothing
  (the redelivered events are seen and skipped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from uuid import UUID

import anyio
import orjson
import redis.asyncio as aioredis

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS
from automations.engine.decisions import DecisionLog
from automations.engine.follows import FollowsOrdering
from automations.engine.intake import SKIPPED_EVENTS, BatchSource, Incoming, Intake
from automations.engine.outbox import Announcer, automation_resource
from automations.engine.plan import Planner, Step
from automations.engine.specs import WindowSpec, window_specs
from automations.engine.window import Window, WindowBatch
from automations.events import Event, utcnow
from automations.keys import ENGINE_GROUP, Keys
from automations.metrics import current_metrics
from automations.models import Automation
from automations.settings import Settings
from automations.streams.consumer import Entry, Reject, StreamConsumer, stop_when_set
from triggers.index import TriggerIndex

log = logging.getLogger(__name__)

MAX_ROUNDS = 10_000  # apply calls per batch (each released follower chain costs one)
OPS_PER_CALL = 2_000  # bucket operations per script call (~30-40 ms of Redis at the bench mix)
YIELD_EVERY = 10  # events matched between yields to the event loop while a call is in flight


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
        self._index = TriggerIndex()
        self._specs: dict[tuple[UUID, UUID], WindowSpec] = {}
        self._automations: dict[UUID, list[WindowSpec]] = {}
        self._spec_of: dict[int, WindowSpec] = {}  # id(event trigger) -> its spec
        self._resources: dict[str, bytes] = {}  # automation id -> its events' resource JSON
        self._planner = Planner(self.keys, self._index, self._spec_of.__getitem__)
        self._window = Window(redis, self.keys, settings)
        self.ordering = FollowsOrdering(redis, self.keys, settings)
        self._consumer = StreamConsumer(
            redis, settings, stream=self.keys.events, group=ENGINE_GROUP,
            handler=self.handle_batch, dead_stream=self.keys.dead(self.keys.events),
            consumer=consumer, maxlen=settings.events_maxlen,
        )
        self.announcer = Announcer(redis, settings, keys=self.keys, consumer=consumer,
                                   resource_of=self._resources.get)
        self._intake = Intake(self._planner, settings, self.ordering.waits)
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
            f"Engine(automations={len(self._automations)}, triggers={len(self._specs)}, "
            f"events={self.events}, fired={self.fired}, parked={self.parked}, "
            f"rejected={self.rejected})"
        )

    # -- automations -----------------------------------------------------------------
    async def load(self, automations: Iterable[Automation]) -> None:
        """Replace the loaded automations (all of them: specs published for other triggers
        are withdrawn from the timer). Window state in Redis is kept."""
        for automation_id in list(self._automations):
            self._forget(automation_id)
        specs: list[WindowSpec] = []
        for automation in automations:
            if automation.enabled:
                specs.extend(self._remember(automation))
        await self._window.register(specs, replace=True)

    async def upsert(self, automation: Automation, *, trigger_changed: bool) -> None:
        """Add or replace one automation; a changed trigger starts from empty state."""
        old = self._forget(automation.id)
        if trigger_changed:
            await self._window.unregister([s.trigger_id for s in old])
            await self._window.reset(str(automation.id))
        if automation.enabled:
            await self._window.register(self._remember(automation))
        else:
            await self._window.unregister([s.trigger_id for s in old])

    async def remove(self, automation_id: UUID) -> None:
        """Stop evaluating an automation (deleted or paused). Its window state stays, so a
        resumed automation carries on; state of a deleted one expires (reactive buckets are
        swept, due proactive ones are dropped by the timer once the spec is gone)."""
        old = self._forget(automation_id)
        await self._window.unregister([s.trigger_id for s in old])

    def _remember(self, automation: Automation) -> list[WindowSpec]:
        specs = window_specs(automation.id, automation.trigger, self.keys)
        self._resources[str(automation.id)] = orjson.dumps(
            automation_resource(automation.id, automation.name, automation.trigger))
        self._index.add(automation.id, automation.trigger)
        self._automations[automation.id] = specs
        self._planner.clear()
        for spec in specs:
            self._specs[(automation.id, spec.trigger.id)] = spec
            self._spec_of[id(spec.trigger)] = spec
        return specs

    def _forget(self, automation_id: UUID) -> list[WindowSpec]:
        self._index.remove(automation_id)
        self._resources.pop(str(automation_id), None)
        specs = self._automations.pop(automation_id, [])
        self._planner.clear()
        for spec in specs:
            self._specs.pop((automation_id, spec.trigger.id), None)
            self._spec_of.pop(id(spec.trigger), None)
        return specs

    # -- the loop ----------------------------------------------------------------------
    async def run(self, stopping: anyio.Event | None = None) -> None:
        """Consume until ``stop()`` (or ``stopping``); held followers past ``follows_wait_s``
        are released alongside, and the announcer publishes the firings' events. Both
        consumers finish the batch in hand."""
        async with anyio.create_task_group() as tg:
            if stopping is not None:
                tg.start_soon(stop_when_set, stopping, self.stop)
            async with anyio.create_task_group() as work:
                work.start_soon(self.announcer.run)
                async with anyio.create_task_group() as releasing:
                    releasing.start_soon(self._release_loop)
                    await self._consumer.run()
                    releasing.cancel_scope.cancel()
                self.announcer.stop()
            tg.cancel_scope.cancel()

    def stop(self) -> None:
        self._consumer.stop()
        self.announcer.stop()

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
        lost = await self.ordering.lost(now, self._planner)
        if lost:
            await self._evaluate(lost, now, lost={item.id for item in lost})
        return len(lost)

    async def handle_batch(self, entries: Sequence[Entry]) -> list[Reject]:
        """One batch: decode -> dedupe -> match -> apply (Lua) -> released followers."""
        now = self.clock()
        source = BatchSource(self._intake, entries, now)
        if self._decisions is not None:
            self._decisions.begin(entries)
        processed = self.processed
        await self._evaluate([], now, source=source)
        self.events += len(entries)
        self.rejected += len(source.rejects)
        self.metrics.events_handled(len(entries), self.processed - processed, len(source.rejects))
        return source.rejects

    async def _evaluate(
        self, incoming: list[Incoming], now: datetime, *, lost: set[str] | None = None,
        source: BatchSource | None = None,
    ) -> None:
        """Apply the events in order (``incoming``, then what ``source`` decodes), at most
        ``OPS_PER_CALL`` operations per script call (a script blocks Redis while it runs);
        followers released by an event go right after it, except ``lost`` ones, which keep
        their place in ``incoming`` (as in the reference)."""
        pending = incoming
        batch: WindowBatch | None = self._match(pending, now, source)
        for _ in range(MAX_ROUNDS):
            if batch is None or not batch.events:
                return
            # The next call's events are decoded and matched while Redis runs this one (the
            # usual case: nothing released, so the next call starts where this one ends).
            applying = asyncio.ensure_future(self._window.apply(batch, now))
            recording = self._decisions.write(batch) if self._decisions is not None else None
            await asyncio.sleep(0)  # the call starts going out
            rest = pending[len(batch):]
            try:  # may extend `rest` from `source`
                upcoming = await self._match_beside(rest, now, source)
            finally:
                result = await applying
                if recording is not None:
                    await recording  # beside the script call (it logs its own failures)
            self.fired += result.fired
            self.parked += result.parked
            self.processed += result.processed
            released = self.ordering.decode_released(result.released, self._planner)
            if lost:
                released = [item for item in released if item.id not in lost]
            if released or result.consumed != len(batch):
                pending = released + pending[result.consumed:len(batch)] + rest
                batch = self._match(pending, now, source)
            else:
                pending, batch = rest, upcoming
        log.warning("follows chains too deep: %d events left for the next batch", len(pending))
        raise RuntimeError("follows release did not converge")

    def _match(
        self, incoming: list[Incoming], now: datetime, source: BatchSource | None = None
    ) -> WindowBatch:
        """One operation per (event, covering trigger), in event order, for a prefix of
        ``incoming`` (at most about ``OPS_PER_CALL`` operations; empty when there is no event).
        When ``incoming`` runs out first, ``source`` decodes more into it."""
        return next(b for b in self._matching(incoming, now, source) if b is not None)

    async def _match_beside(
        self, incoming: list[Incoming], now: datetime, source: BatchSource | None
    ) -> WindowBatch:
        """``_match`` while a script call is in flight: it yields to the event loop every few
        events, so the call's request (hundreds of KB) reaches Redis as the socket drains
        rather than after the matching (Redis would wait for it, idle)."""
        for batch in self._matching(incoming, now, source):
            if batch is not None:
                return batch
            await asyncio.sleep(0)
        raise AssertionError("_matching ends with its batch")

    def _matching(
        self, incoming: list[Incoming], now: datetime, source: BatchSource | None
    ) -> Iterator[WindowBatch | None]:
        """``_match``'s work: ``None`` every ``YIELD_EVERY`` events (a pause), then the batch."""
        batch = WindowBatch(self.keys, iso=now.isoformat())
        at = 0
        while batch.op_count < OPS_PER_CALL:
            if at == len(incoming) and (source is None or not source.decode_into(incoming)):
                break
            item = incoming[at]
            at += 1
            counts = item.name not in SKIPPED_EVENTS
            number = batch.add_event(
                item.id, item.occurred_us, item.raw,
                follows=item.follows, waits=item.waits, counts=counts,
            )
            if counts and item.event is not None:
                self._ops(batch, number, item.event)
            if at % YIELD_EVERY == 0:
                yield None
        yield batch

    def _ops(self, batch: WindowBatch, number: int, event: Event) -> None:
        """The event's operations: name-level work comes precomputed from the planner, only
        the resource check and ``for_each`` keys are per event."""
        plan = self._planner.plan(event.event)
        resource, related = event.resource, event.related
        steps = [s for s in plan.steps if s.compiled.resources_covered(resource, related)]
        if self._decisions is not None:
            self._decisions.note(batch, event, plan.steps, steps)
        if plan.ordered and len(steps) > 1 and not all(s.spec.top_level for s in steps):
            steps.sort(key=_evaluation_order)  # a composite's children in trigger walk order
        encode = self._planner.encode
        for step in steps:
            template = step.template
            if template is None:
                compiled = step.compiled
                template = step.keyed(*encode(
                    compiled, compiled.bucketing_key_parts(resource, related)))
            if step.spec.fires_at_once:
                batch.add_ready(number, step.spec, template)
            else:
                batch.add_op(number, step.spec, template)


def _evaluation_order(step: Step) -> tuple[str, int]:
    return (step.spec.automation_id, step.spec.ordinal)
