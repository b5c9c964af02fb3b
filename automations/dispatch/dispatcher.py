"""The action dispatcher: firings stream in, actions out, each exactly once in effect.

``Dispatcher.run()`` consumes every partition's outbox, ``<p>:{<tag>}:firings`` (group
``dispatch``; any number of dispatchers share each), through one
``automations.streams.consumer.StreamConsumer`` per outbox and reader (one that fails is
restarted, never taking the others down) and, beside them, claims due retries from the
``RetryQueue``. A batch's firings run concurrently (at most
``action_concurrency`` actions at once); the batch is acked when every first attempt has ended
(each bounded by ``action_timeout_s``): transient failures continue as delayed retry jobs,
never as sleeps.

One action runs through ``run_action``, the whole pipeline in one function:
idempotency check -> action.triggered (one script for a whole batch: ``ledger``)
-> render -> execute (timeout, classified outcome) -> record done + action.executed | schedule
retry + action.failed | dead letter + action.failed. While a batch runs, its entries are kept
claimed (XCLAIM JUSTID), so a slow batch is never reclaimed and repeated by another reader.

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
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any
from uuid import UUID

import aiohttp
import anyio
import redis.asyncio as aioredis
from pydantic import ValidationError

from actions.outcome import ActionError, PermanentError, Reason, TransientError
from actions.secrets import Redactor
from actions.templating import TemplateEngine, Templates, render_action
from automations.backoff import Backoff, retry
from automations.connection import CONNECTION_ERRORS
from automations.dispatch.automation_cache import AutomationCache
from automations.dispatch.batch import Plan, parse_entries, plan_batch
from automations.dispatch.executors import EXECUTORS, Executor
from automations.dispatch.invocation import (
    Invocation,
    action_outcome,
    action_triggered,
    new_invocation,
    plan_actions,
    template_context,
)
from automations.dispatch.isolation import (
    beside,
    describe,
    first_cause,
    leaves,
    redis_unavailable,
)
from automations.dispatch.lease import LeaseKeeper, Leases
from automations.dispatch.ledger import DONE, GAVE_UP, Begun, Ledger, Recorded, Start
from automations.dispatch.logs import SecretSafeLogs
from automations.dispatch.notifiers import NotifierPool
from automations.dispatch.ports import ActionContext, ActionResult, Clients, Ports
from automations.dispatch.retries import RetryJob, RetryQueue, backoff
from automations.events import Event, utcnow
from automations.insight.history import (
    DEAD,
    EXECUTED,
    FAILED,
    RETRYING,
    outcome_entry,
    summarize,
)
from automations.keys import DISPATCH_GROUP, Keys
from automations.metrics import current_metrics
from automations.settings import Settings
from automations.store import AutomationStore, InvalidStoredAutomation
from automations.streams.consumer import (
    Entry,
    Reject,
    StreamConsumer,
    run_restarting,
    stop_when_set,
)
from triggers.firing import Firing

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
        self.executors = dict(EXECUTORS if executors is None else executors)
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
        self.templates = TemplateEngine()
        self.counts = {"executed": 0, "failed": 0, "retried": 0, "gave_up": 0, "skipped": 0,
                       "busy": 0, "fenced": 0}
        self._limit = anyio.Semaphore(settings.action_concurrency)
        self._rng = random.Random()
        self._stopping = anyio.Event()
        self._clients: Clients | None = None
        self._logs = SecretSafeLogs()
        self.metrics = current_metrics()

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
                await self.run_action(inv, lease=lease, begun=True)
        except Exception as exc:
            if not await self._crashed(inv, lease, exc):
                unrecorded.append(exc)
        finally:
            lease.release(inv.key)

    async def _isolated_wait(self, inv: Invocation, unrecorded: list[Exception]) -> None:
        try:
            await self._wait_for_lease(inv, attempt=1, job=None)
        except Exception as exc:
            if not await self._crashed(inv, None, exc):
                unrecorded.append(exc)

    async def _wait_for_lease(self, inv: Invocation, *, attempt: int, job: RetryJob | None
                              ) -> str:
        """Another executor runs the action right now (it holds the lease): do not start a
        second copy; a retry job checks again once the lease would have expired, so the
        action still runs if that executor dies before recording it."""
        due = time.time() + self.ledger.lease_ttl_ms / 1000
        waiting = job or self._retry_job(inv, attempt)
        await self.ledger.record(inv.key, retry=(waiting, due), wait=True)
        self.counts["busy"] += 1
        self.metrics.action_done(inv.action_type, "busy")
        log.info("action %s runs elsewhere (its lease is held); checking it again in %.1f s",
                 inv.key, self.ledger.lease_ttl_ms / 1000, extra={"idempotency_key": inv.key})
        return "busy"

    async def _crashed(self, inv: Invocation, lease: LeaseKeeper | None, exc: Exception, *,
                       attempt: int = 1, job: RetryJob | None = None) -> bool:
        """An action's pipeline raised instead of returning an outcome: give it up with its
        own dead letter naming the real cause (True). False when nothing can be written
        (Redis away): the batch then stays pending and is run again."""
        cause = describe(exc)
        if redis_unavailable(exc):
            log.error("action %s (%s): outcome not recorded, Redis unavailable past %d ms (%s); "
                      "its firing stays pending and runs again", inv.key, inv.action_type,
                      self.settings.claim_idle_ms, cause, extra={"idempotency_key": inv.key})
            return False
        log.error("action %s (%s) of automation %r failed inside the dispatcher: %s", inv.key,
                  inv.action_type, inv.automation.name, cause, exc_info=exc,
                  extra={"idempotency_key": inv.key})
        reason = f"{Reason.INTERNAL.value}: {cause}"
        try:
            recorded = await self.ledger.record(
                inv.key, token=lease.token if lease else "", done=GAVE_UP, job=job,
                dead=self._dead(inv, attempt, reason),
                history=self._outcome(inv, DEAD, attempt, reason))
        except Exception as again:
            log.error("action %s: its failure could not be recorded either: %s", inv.key,
                      describe(again))
            return False
        if recorded is Recorded.WRITTEN:
            self.counts["gave_up"] += 1
            self.metrics.dead_lettered(self.ledger.dead_stream)
        return True

    def _retry_job(self, inv: Invocation, attempt: int) -> RetryJob:
        return RetryJob(key=inv.key, firing=inv.firing_json.decode(),
                        automation_id=str(inv.automation.id), index=inv.index,
                        action_type=inv.action_type, attempt=attempt)

    def _dead(self, inv: Invocation, attempts: int, reason: str) -> dict[str, Any]:
        """A given-up action's dead letter: the firing as it came, the cause and the ids."""
        return {"data": inv.firing_json, "reason": reason, "action_index": str(inv.index),
                "action_type": inv.action_type, "attempts": str(attempts),
                "automation_id": str(inv.automation.id), "idempotency_key": inv.key}

    async def run_retry(self, job: RetryJob) -> str:
        """The next attempt of a retry job, with the automation's current action, under its
        own lease."""
        async with self._limit:
            lease = self.leases.keeper()
            return await beside([lease.keep], partial(self._run_retry, job, lease))

    async def _run_retry(self, job: RetryJob, lease: LeaseKeeper) -> str:
        automation_id = UUID(job.automation_id)
        automation = (await self.automations.lookup([automation_id]))[automation_id]
        try:
            firing = Firing.from_json(job.firing)
        except ValidationError as exc:
            await self._give_up_orphan(job, f"has a retry job whose firing is unreadable: "
                                       f"{describe(exc)}")
            return "gave-up"
        if isinstance(automation, InvalidStoredAutomation):
            await self._give_up_orphan(job, f"is stored but no longer valid: "
                                       f"{automation.problems}")
            return "gave-up"
        if automation is None:
            await self._give_up_orphan(job, "does not exist (deleted before the retry)")
            return "gave-up"
        planned = next((p for p in plan_actions(automation, firing) if p.index == job.index),
                       None)
        if planned is None or planned.action.type != job.action_type:
            await self._give_up_orphan(job, "changed its actions before the retry")
            return "gave-up"
        inv = new_invocation(automation, firing, planned, job.firing.encode())
        try:
            return await self.run_action(inv, lease=lease, attempt=job.attempt, job=job)
        except Exception as exc:
            if await self._crashed(inv, lease, exc, attempt=job.attempt, job=job):
                return "gave-up"
            raise

    # -- the per-action pipeline ------------------------------------------------------------
    async def run_action(self, inv: Invocation, *, lease: LeaseKeeper, attempt: int = 1,
                         job: RetryJob | None = None, begun: bool = False) -> str:
        """idempotency check + lease + action.triggered (``begun``: done for the whole batch)
        -> render -> execute -> record (fenced by the lease): done + .executed | retry job +
        .failed | dead letter."""
        announce = job is None
        if begun and not await lease.confirm(inv.key):
            # Lost while it waited for a slot (this process stalled): take it again as a fresh
            # start would, with the done check, instead of repeating another executor's effect.
            lease.release(inv.key)
            log.warning("action %s (%s): lease lost before it started (this dispatcher stalled "
                        "past %d ms); checking again before running it", inv.key,
                        inv.action_type, self.ledger.lease_ttl_ms,
                        extra={"idempotency_key": inv.key})
            begun, announce = False, False
        if not begun:
            triggered = action_triggered(inv) if announce else None
            [state] = await self.ledger.begin([Start(
                inv.key, triggered.to_json() if triggered else None,
                str(triggered.id) if triggered else "")], lease.token)
            if state is Begun.BUSY:
                return await self._wait_for_lease(inv, attempt=attempt, job=job)
            if state is Begun.SKIP:
                self.counts["skipped"] += 1
                self.metrics.action_done(inv.action_type, "skipped")
                if job is not None:
                    await self.ledger.record(inv.key, job=job)
                return "skipped"
            lease.hold(inv.key)
        try:
            return await self._attempt(inv, lease, attempt, job)
        finally:
            lease.release(inv.key)

    async def _attempt(self, inv: Invocation, lease: LeaseKeeper, attempt: int,
                       job: RetryJob | None) -> str:
        ctx = self._context(inv, attempt)
        started = time.perf_counter()
        try:
            ctx.action = await render_action(inv.planned.action, ctx.templates)
            result = await self._execute(ctx)
        except ActionError as exc:
            took = time.perf_counter() - started
            outcome = await self._failed(inv, ctx, exc, job, lease)
            self.metrics.action_done(inv.action_type, outcome, took)
            return outcome
        took = time.perf_counter() - started
        executed = self._executed_event(inv, ctx, result)
        # Retried through a Redis blip and shielded: giving up here would fail the batch,
        # whose redelivery repeats the effect.
        recorded = await self.ledger.record(
            inv.key, token=lease.token, done=DONE, events=[executed], job=job,
            history=self._outcome(inv, EXECUTED, ctx.attempt, summarize(executed.payload)))
        if recorded is Recorded.FENCED:
            return self._fenced(inv, "executed")
        self.counts["executed"] += 1
        self.metrics.action_done(inv.action_type, "executed", took)
        return "executed"

    def _fenced(self, inv: Invocation, outcome: str) -> str:
        """This executor lost the action's lease (it stalled, or lost Redis, past the lease)
        and another executor took the action over: its outcome is not recorded."""
        self.counts["fenced"] += 1
        self.metrics.action_done(inv.action_type, "fenced")
        log.warning("action %s (%s): record of this attempt (%s) refused, fenced: another "
                    "executor took its lease over after this one held it past %d ms; the "
                    "other's outcome stands", inv.key, inv.action_type, outcome,
                    self.ledger.lease_ttl_ms, extra={"idempotency_key": inv.key})
        return "fenced"

    def _executed_event(self, inv: Invocation, ctx: ActionContext, result: ActionResult) -> Event:
        """The ``.executed`` event; a malformed result (an executor bug) must not keep a done
        effect from being recorded, so it degrades to an event without the result."""
        now = self.clock()
        try:
            return action_outcome(inv, now=now, attempt=ctx.attempt,
                                         details=result.details, related=result.related,
                                         redactor=ctx.redactor)
        except Exception as exc:
            problem = ctx.redactor.redact(f"{type(exc).__name__}: {exc}")
            log.error("action %s: unusable result from %s: %s", inv.key, inv.action_type, problem)
            return action_outcome(inv, now=now, attempt=ctx.attempt,
                                         details={"result_error": problem}, redactor=ctx.redactor)

    def _context(self, inv: Invocation, attempt: int) -> ActionContext:
        firing, event = inv.firing, inv.triggering_event
        context, loaders = template_context(inv.automation, firing, event, self.ports)
        return ActionContext(
            firing=firing, automation=inv.automation, action=inv.planned.action,
            action_index=inv.index, idempotency_key=inv.key, triggering_event=event,
            labels=dict(firing.triggering_labels), now=self.clock(), ports=self.ports,
            ledger=self.ledger, clients=self.clients, redactor=Redactor(),
            templates=Templates(self.templates, context, loaders),
            action_timeout_s=self.settings.action_timeout_s, attempt=attempt,
        )

    async def _execute(self, ctx: ActionContext) -> ActionResult:
        """The executor under the per-action timeout; anything unclassified it raises is a
        transient ``Reason.INTERNAL``."""
        executor = self.executors.get(ctx.action.type)
        if executor is None:
            raise PermanentError(Reason.UNSUPPORTED,
                                 f"no executor for action type '{ctx.action.type}'")
        timeout = self.settings.action_timeout_s
        try:
            with anyio.fail_after(timeout):
                return await executor(ctx.action, ctx)
        except ActionError:
            raise
        except TimeoutError:
            raise TransientError(Reason.TIMEOUT, f"action timed out after {timeout:g}s") from None
        except Exception as exc:
            # The message is redacted; the traceback is logged without exception text.
            message = ctx.redactor.redact(f"{type(exc).__name__}: {exc}")
            log.error("executor for %s raised %s\n%s", ctx.action.type, message,
                      "".join(traceback.format_tb(exc.__traceback__)))
            raise TransientError(Reason.INTERNAL, message) from None

    async def _failed(self, inv: Invocation, ctx: ActionContext, exc: ActionError,
                      job: RetryJob | None, lease: LeaseKeeper) -> str:
        """Retry a transient failure later, or give up: dead letter + done (as given up)."""
        retry = exc.transient and ctx.attempt < self.settings.action_max_attempts
        message = ctx.redactor.redact(exc.message)
        details = dict(exc.details)
        if retry:
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            delay = backoff(ctx.attempt, self.settings, self._rng, retry_after)
            details["retry_in_s"] = round(delay, 3)
        failed = action_outcome(
            inv, now=self.clock(), attempt=ctx.attempt, details=details, reason=exc.reason.value,
            message=message, will_retry=retry, redactor=ctx.redactor)
        ids = _ids(inv, ctx.attempt, exc.reason.value)
        log.warning("action %s (%s) of automation %s failed (attempt %d, %s): %s", inv.key,
                    inv.action_type, inv.automation.name, ctx.attempt, exc.reason.value, message,
                    extra=ids)
        self.counts["failed"] += 1
        if retry:
            recorded = await self.ledger.record(
                inv.key, token=lease.token, events=[failed],
                retry=(self._retry_job(inv, ctx.attempt + 1), time.time() + delay),
                history=self._outcome(inv, RETRYING, ctx.attempt,
                                      f"{exc.reason.value}: {message}; retry in {delay:.1f}s"))
            if recorded is Recorded.FENCED:
                return self._fenced(inv, "failed, to retry")
            self.counts["retried"] += 1
            return "retrying"
        outcome = DEAD if exc.transient else FAILED  # transient: its attempts ran out
        why = f" (given up after {ctx.attempt} attempts)" if exc.transient else ""
        recorded = await self.ledger.record(
            inv.key, token=lease.token, done=GAVE_UP, events=[failed], job=job,
            dead=self._dead(inv, ctx.attempt, f"{exc.reason.value}: {message}"),
            history=self._outcome(inv, outcome, ctx.attempt, f"{exc.reason.value}: {message}{why}"))
        if recorded is Recorded.FENCED:
            return self._fenced(inv, "given up")
        self.counts["gave_up"] += 1
        self.metrics.dead_lettered(self.ledger.dead_stream)
        log.error("action %s (%s) of automation %r given up after %d attempt(s), dead-lettered "
                  "to %s: firing %s, event %s: %s: %s", inv.key, inv.action_type,
                  inv.automation.name, ctx.attempt, self.ledger.dead_stream,
                  ids["firing_id"], ids["event_id"], exc.reason.value, message, extra=ids)
        return "gave-up"

    async def _give_up_orphan(self, job: RetryJob, why: str) -> None:
        reason = f"automation {job.automation_id} {why}"
        dead = {"data": job.firing, "reason": reason, "action_index": str(job.index),
                "action_type": job.action_type, "attempts": str(job.attempt - 1),
                "automation_id": job.automation_id, "idempotency_key": job.key}
        record = None if not self.settings.history_maxlen else outcome_entry(
            firing_id=job.key.rpartition(":")[0], automation_id=job.automation_id,
            index=job.index, action_type=job.action_type, outcome=DEAD,
            attempt=job.attempt - 1, detail=reason)
        await self.ledger.record(job.key, done=GAVE_UP, job=job, dead=dead, history=record)
        self.counts["gave_up"] += 1
        self.metrics.action_done(job.action_type, "gave-up")
        self.metrics.dead_lettered(self.ledger.dead_stream)
        log.error("action %s (%s) given up before its retry, dead-lettered to %s: %s", job.key,
                  job.action_type, self.ledger.dead_stream, reason,
                  extra={"automation_id": job.automation_id, "action": job.action_type,
                         "action_index": job.index, "idempotency_key": job.key,
                         "firing_id": job.key.rpartition(":")[0]})

    # -- history records (automations.insight.history), written with the ledger's writes ---
    def _outcome(self, inv: Invocation, outcome: str, attempt: int, detail: str | None
                 ) -> bytes | None:
        if not self.settings.history_maxlen:
            return None
        return outcome_entry(firing_id=inv.firing.id, automation_id=inv.automation.id,
                             index=inv.index, action_type=inv.action_type, outcome=outcome,
                             attempt=attempt, detail=detail)


def _readers(name: str, settings: Settings, keys: Keys) -> list[str]:
    """The reader names of each outbox: ``dispatch_readers`` in all, shared out between the
    partitions, at least one each. Several readers of an outbox: while one waits for its
    batch's slowest action, the next reads new firings (a batch is acked only when all its
    first attempts ended)."""
    count = max(1, -(-settings.dispatch_readers // keys.partitions))
    return [name] if count == 1 else [f"{name}-{i}" for i in range(count)]


def _ids(inv: Invocation, attempt: int, reason: str) -> dict[str, Any]:
    """The ids of an action's log lines (``extra=``: fields of a JSON log line)."""
    event = inv.firing.triggering_event or {}
    return {"automation": inv.automation.name, "automation_id": str(inv.automation.id),
            "firing_id": str(inv.firing.id), "event_id": event.get("id"),
            "action": inv.action_type, "action_index": inv.index, "attempt": attempt,
            "idempotency_key": inv.key, "reason": reason}
