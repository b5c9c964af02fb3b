"""The action dispatcher: firings stream in, actions out, each exactly once in effect.

``Dispatcher.run()`` consumes every partition's outbox, ``<p>:{<tag>}:firings`` (group
``dispatch``; any number of dispatchers share each), through one
``automations.streams.consumer.StreamConsumer`` per outbox and reader (one that fails is
restarted, never taking the others down) and, beside them, claims due retries from the
``RetryQueue``. A batch's firings run concurrently (at most
``action_concurrency`` actions at once); the batch is acked when every first attempt has ended
(each bounded by ``action_timeout_s``): transient failures continue as delayed retry jobs,
never as sleeps.

One action attempt is ``ActionRunner.run_action`` (``dispatch/attempt.py``): idempotency
check -> action.triggered (one script for a whole batch: ``ledger``) -> render -> execute ->
record the outcome. While a batch runs, its entries are kept claimed (XCLAIM JUSTID), so a slow
batch is never reclaimed and repeated by another reader.

Exactly once in effect: ``done:<firing id>:<index>`` is written right after the executor
returns, in one script with the ``.executed`` event, retried through Redis blips and shielded
from cancellation (``Ledger.record``). Each running action holds a renewed lease
(``dispatch/lease.py``): a reclaimed batch does not start a second copy of an action that runs
elsewhere, and a stale executor's record is refused. The only window where a crash repeats an
effect is between the effect (e.g. the webhook's response) and that record, one Redis round
trip; webhooks carry ``Idempotency-Key`` so receivers can close it, run-deployment closes it
in the runtime (flow runs are created once per key). The idempotency check runs before
rendering (the design's "render -> check" order would emit a second ``.failed`` for a
redelivered action whose template fails).

Slots (Redis Cluster): the ledger's scripts touch global keys only (done records, leases,
events, history, retries, given-up actions' dead letters); a firing's ack, claim and reject
touch its partition's outbox only. The ack follows the record: a crash between them
redelivers a firing whose actions are done, which ``begin`` skips.

Isolation: a firing that cannot be read, planned or encoded is dead-lettered alone
(``dispatch/batch.py``); an action whose pipeline raises gets its own dead letter with the real
cause, and never cancels its siblings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import redis.asyncio as aioredis

from automations.backoff import Backoff, retry
from automations.connection import CONNECTION_ERRORS
from automations.dispatch.attempt import ActionRunner
from automations.dispatch.automation_cache import AutomationCache
from automations.dispatch.batch import Plan, parse_entries, plan_batch
from automations.dispatch.executors import EXECUTORS, Executor
from automations.dispatch.invocation import Invocation
from automations.dispatch.isolation import (
    beside,
    describe,
    first_cause,
    leaves,
    redis_unavailable,
)
from automations.dispatch.lease import LeaseKeeper, Leases
from automations.dispatch.ledger import Begun, Ledger, Start
from automations.dispatch.logs import SecretSafeLogs
from automations.dispatch.notifiers import NotifierPool
from automations.dispatch.ports import Clients, Ports
from automations.dispatch.retries import RetryJob, RetryQueue
from automations.events import utcnow
from automations.keys import DISPATCH_GROUP, Keys
from automations.metrics import current_metrics
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.consumer import StreamConsumer, run_restarting, stop_when_set
from automations.streams.entries import Entry, Reject

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 5.0
"""A retry job's claim covers one attempt plus this: rendering and the record around it. Short,
so a job of a dispatcher that died is due again within seconds; a claim that runs out while the
attempt still runs costs nothing, since the action's own lease makes the second claimer wait."""


class Dispatcher:
    """Use as ``async with Dispatcher(...) as d:`` (it owns an HTTP client and the Apprise
    pool); then ``await d.run()`` until ``d.stop()``, or ``await d.drain()`` in tests."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        *,
        ports: Ports,
        keys: Keys | None = None,
        executors: Mapping[str, Executor] | None = None,
        clock: Callable[[], datetime] = utcnow,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys.from_settings(settings)
        self.ports = ports
        self.clock = clock
        name = consumer or settings.consumer_name
        self.consumers = [
            StreamConsumer(
                redis, settings, stream=outbox, group=DISPATCH_GROUP,
                handler=self._handler_for(outbox, reader), dead_stream=self.keys.dead(outbox),
                consumer=reader, maxlen=settings.firings_maxlen,
            )
            for outbox in self.keys.outboxes for reader in _readers(name, settings, self.keys)
        ]
        self.retries = RetryQueue(redis, self.keys)
        self.ledger = Ledger(redis, self.keys, settings, self.retries)
        self.leases = Leases(redis, self.keys, self.ledger.lease_ttl_ms, name)
        self.automations = AutomationCache(AutomationStore(redis, self.keys))
        self.metrics = current_metrics()
        self.runner = ActionRunner(
            self.ledger, settings, automations=self.automations, ports=ports, clock=clock,
            metrics=self.metrics,
            executors=dict(EXECUTORS if executors is None else executors),
            clients=lambda: self.clients,
        )
        self.executors = self.runner.executors
        self.counts = self.runner.counts
        self._limit = anyio.Semaphore(settings.action_concurrency)
        # Firings whose lease another dispatcher holds only record a check for later (one
        # Redis call each), but a batch can hold hundreds of them: bounded apart, so they
        # neither wait behind running actions nor open a connection each at once.
        self._waits = anyio.Semaphore(settings.action_concurrency)
        self._stopping = anyio.Event()
        self._clients: Clients | None = None
        self._logs = SecretSafeLogs()

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"Dispatcher({self.consumers[0].consumer!r}, {counts})"

    async def __aenter__(self) -> Dispatcher:
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.action_concurrency * 2),
            timeout=aiohttp.ClientTimeout(total=self.settings.action_timeout_s),
        )
        self._clients = Clients(http=http, notifiers=NotifierPool())
        self._logs.__enter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._logs.__exit__()
        if self._clients is not None:
            await self._clients.http.close()
            self._clients.notifiers.clear()
            self._clients = None

    @property
    def clients(self) -> Clients:
        """The shared HTTP client and Apprise pool (only inside ``async with``)."""
        assert self._clients is not None, "use the Dispatcher as an async context manager"
        return self._clients

    # -- loops ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        for consumer in self.consumers:
            consumer.stop()

    async def run(self, stopping: anyio.Event | None = None) -> None:
        """Consume firings and run due retries until ``stop()`` (or ``stopping``); finishes
        the work in hand."""
        async with anyio.create_task_group() as tg:
            if stopping is not None:
                tg.start_soon(stop_when_set, stopping, self.stop)
            async with anyio.create_task_group() as work:
                # Apprise's plugins load in a thread meanwhile (half a second, once a process).
                work.start_soon(NotifierPool.warm_up)
                work.start_soon(self._retry_loop)
                for consumer in self.consumers:
                    work.start_soon(run_restarting, consumer, self._stopping)
            tg.cancel_scope.cancel()

    async def _retry_loop(self) -> None:
        """Claim due retries while action slots are free; Redis being away only pauses it."""
        redis_backoff = Backoff("action retries", cap_s=self.settings.reconnect_max_s,
                                logger=log)
        async with anyio.create_task_group() as tg:
            while not self._stopping.is_set():
                jobs: list[RetryJob] = []
                try:
                    if self._limit.value > 0:
                        jobs = await self._claim_retries(int(self._limit.value))
                        redis_backoff.recovered()
                except CONNECTION_ERRORS as exc:
                    await redis_backoff.wait(exc, self._stopping)
                    continue
                for job in jobs:
                    tg.start_soon(self._guarded_retry, job)
                if not jobs:
                    with anyio.move_on_after(self.settings.action_retry_poll_s):
                        await self._stopping.wait()

    async def _guarded_retry(self, job: RetryJob) -> None:
        """One retry job; a failure here must not cancel its siblings. Redis away: the job is
        made due again as soon as Redis answers (not a whole job lease later)."""
        try:
            await self.run_retry(job)
        except Exception as exc:
            if not redis_unavailable(exc):
                log.error("retry of action %s failed: %s; it runs again when its lease ends",
                          job.key, describe(exc), exc_info=exc)
                return
            log.warning("retry of action %s interrupted (%s); it runs again once Redis is "
                        "back", job.key, describe(exc))
            lease = self.settings.action_timeout_s + LEASE_MARGIN_S
            try:
                await retry(partial(self.retries.release, job.key, time.time()),
                            Backoff(f"action {job.key}: requeueing its retry",
                                    cap_s=self.settings.reconnect_max_s, logger=log),
                            deadline_s=lease)
            except Exception as again:  # its lease runs out by then: due anyway
                log.warning("retry of action %s not requeued (%s); due when its lease ends",
                            job.key, describe(again))

    async def run_retry(self, job: RetryJob) -> str:
        """The next attempt of a retry job, with the automation's current action, under its
        own lease."""
        async with self._limit:
            lease = self.leases.keeper()
            return await beside([lease.keep], partial(self.runner.run_retry_job, job, lease))

    async def _claim_retries(self, limit: int) -> list[RetryJob]:
        """Due jobs, no more than ``limit`` (free action slots: a leased job should not wait
        for one, its lease covers one attempt plus a margin)."""
        lease = self.settings.action_timeout_s + LEASE_MARGIN_S
        return await self.retries.claim(time.time(), lease, limit)

    async def drain(self, *, wait_retries: bool = True) -> int:
        """Handle every firing and every due retry (waiting for scheduled ones when
        ``wait_retries``) until nothing is left; returns the firings handled. No polling."""
        handled = 0
        while True:
            for consumer in self.consumers:
                handled += await consumer.run_until_idle()
            jobs = await self._claim_retries(self.settings.action_concurrency)
            if jobs:
                async with anyio.create_task_group() as tg:
                    for job in jobs:
                        tg.start_soon(self.run_retry, job)
                continue
            due = await self.retries.next_due() if wait_retries else None
            if due is None:
                return handled
            await anyio.sleep(max(0.0, due - time.time()))

    # -- firings --------------------------------------------------------------------------
    def _handler_for(self, outbox: str, reader: str
                     ) -> Callable[[list[Entry]], Awaitable[list[Reject]]]:
        async def handle(entries: list[Entry]) -> list[Reject]:
            try:
                return await self.handle_batch(entries, reader=reader, outbox=outbox)
            except BaseExceptionGroup as group:  # never "ExceptionGroup: unhandled errors"
                causes = leaves(group)
                for cause in causes[1:]:
                    log.error("dispatcher batch failed: %s", describe(cause), exc_info=cause)
                first = first_cause(group)
                if isinstance(first, Exception):
                    raise first from None
                raise
        return handle

    async def handle_batch(self, entries: list[Entry], *, reader: str | None = None,
                           outbox: str | None = None) -> list[Reject]:
        """Run the first attempt of every action of every firing in the batch. While it runs,
        ``reader`` keeps the entries' idle time fresh on their ``outbox``, so no other
        dispatcher reclaims (and repeats) a batch that is merely slow, and the actions' leases
        are renewed."""
        lease = self.leases.keeper()
        background = [lease.keep]
        if reader is not None and outbox is not None:
            background.append(partial(self._keep_claimed, outbox, reader,
                                      [e.id for e in entries]))
        return await beside(background, partial(self._handle, entries, lease))

    async def _keep_claimed(self, outbox: str, reader: str, ids: list[str]) -> None:
        """XCLAIM ... JUSTID our own in-flight entries (resets idle, not the delivery count)
        three times per ``claim_idle_ms``. An outage must not cancel the batch's actions: it
        is retried with backoff, so the claim is renewed soon after Redis is back."""
        interval = self.settings.claim_idle_ms / 3000
        redis_backoff = Backoff("dispatcher: keeping in-flight firings claimed",
                                cap_s=min(interval, self.settings.reconnect_max_s), logger=log)
        claimed: list[Any] = list(ids)
        delay = interval
        while True:
            await anyio.sleep(delay)
            try:
                await self.redis.xclaim(outbox, DISPATCH_GROUP, reader, 0, claimed,
                                        justid=True)
            except CONNECTION_ERRORS as exc:
                delay = redis_backoff.next_delay(exc)
                continue
            redis_backoff.recovered()
            delay = interval

    async def _handle(self, entries: list[Entry], lease: LeaseKeeper) -> list[Reject]:
        """Begin every action of the batch (one script), run those begun, each on its own.
        A firing that cannot be run is rejected alone; an action that could not be recorded
        at all (Redis away past ``claim_idle_ms``) keeps the batch pending: its redelivery
        skips the actions recorded done."""
        rejects: list[Reject] = []
        parsed = parse_entries(entries, rejects)
        found = await self.automations.lookup(item.firing.automation_id for item in parsed)
        plan = plan_batch(parsed, found, rejects, history=bool(self.settings.history_maxlen))
        begun = await self._begin(plan, lease, rejects)
        self.counts["skipped"] += begun.count(Begun.SKIP)
        unrecorded: list[Exception] = []
        async with anyio.create_task_group() as tg:
            for inv, state in zip(plan.invocations, begun, strict=True):
                if state is Begun.RUN:
                    lease.hold(inv.key)
                    tg.start_soon(self._isolated_action, inv, lease, unrecorded)
                elif state is Begun.BUSY:
                    tg.start_soon(self._isolated_wait, inv, unrecorded)
                elif state is Begun.SKIP:
                    self.metrics.action_done(inv.action_type, "skipped")
        if unrecorded:
            raise unrecorded[0]
        return rejects

    async def _begin(self, plan: Plan, lease: LeaseKeeper, rejects: list[Reject]
                     ) -> list[Begun | None]:
        """The batch's idempotency checks, leases and action.triggered events: one script
        call. Should it fail for another reason than Redis being away (something in one
        firing), each firing begins on its own and the one that fails is rejected."""
        try:
            return list(await self.ledger.begin(plan.starts, lease.token))
        except Exception as exc:
            if redis_unavailable(exc):
                raise
            log.warning("dispatcher: beginning the batch failed (%s); beginning each firing "
                        "on its own", describe(exc))
        begun: list[Begun | None] = []  # None: its firing is rejected
        first = 0
        for entry, count in plan.firings:
            starts: list[Start] = plan.starts[first:first + count]
            try:
                begun += await self.ledger.begin(starts, lease.token)
            except Exception as exc:
                if redis_unavailable(exc):
                    raise
                rejects.append(Reject(entry, f"cannot begin firing: {describe(exc)}"))
                begun += [None] * count
            first += count
        return begun

    async def _isolated_action(self, inv: Invocation, lease: LeaseKeeper,
                               unrecorded: list[Exception]) -> None:
        """One action of a batch: whatever it raises stays its own (dead letter with the real
        cause); only an outcome that could not be written at all goes to ``unrecorded``."""
        try:
            # The whole pipeline holds a slot, so a batch of 1,000 firings never opens more
            # than ``action_concurrency`` Redis connections and HTTP requests at once.
            async with self._limit:
                await self.runner.run_action(inv, lease=lease, begun=True)
        except Exception as exc:
            if not await self.runner.crashed(inv, lease, exc):
                unrecorded.append(exc)
        finally:
            lease.release(inv.key)

    async def _isolated_wait(self, inv: Invocation, unrecorded: list[Exception]) -> None:
        try:
            async with self._waits:
                await self.runner.wait_for_lease(inv, attempt=1, job=None)
        except Exception as exc:
            if not await self.runner.crashed(inv, None, exc):
                unrecorded.append(exc)

    # -- one action (dispatch/attempt.py) -------------------------------------------------
    async def run_action(self, inv: Invocation, *, lease: LeaseKeeper, attempt: int = 1,
                         job: RetryJob | None = None, begun: bool = False) -> str:
        """One attempt of one action: ``ActionRunner.run_action``."""
        return await self.runner.run_action(inv, lease=lease, attempt=attempt, job=job,
                                            begun=begun)


def _readers(name: str, settings: Settings, keys: Keys) -> list[str]:
    """The reader names of each outbox: ``dispatch_readers`` in all, shared out between the
    partitions, at least one each. Several readers of an outbox: while one waits for its
    batch's slowest action, the next reads new firings (a batch is acked only when all its
    first attempts ended)."""
    count = max(1, -(-settings.dispatch_readers // keys.partitions))
    return [name] if count == 1 else [f"{name}-{i}" for i in range(count)]

