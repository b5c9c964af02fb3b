"""The action dispatcher: firings stream in, actions out, each exactly once in effect.

``Dispatcher.run()`` consumes ``<p>:firings`` (group ``dispatch``; any number of dispatchers
share it) through ``automations.streams.consumer.StreamConsumer`` and, beside it, claims due
retries from the ``RetryQueue``. A batch's firings run concurrently (at most
``action_concurrency`` actions at once); the batch is acked when every first attempt has ended
(each bounded by ``action_timeout_s``): transient failures continue as delayed retry jobs,
never as sleeps.

One action runs through ``run_action``, the whole pipeline in one function:
idempotency check -> action.triggered (one script for a whole batch: ``ledger``)
-> render -> execute (timeout, classified outcome) -> record done + action.executed | schedule
retry + action.failed | dead letter + action.failed. While a batch runs, its entries are kept
claimed (XCLAIM JUSTID), so a slow batch is never reclaimed and repeated by another reader.

Exactly once in effect: ``done:<firing id>:<index>`` is written right after the executor
returns, in one MULTI with the ``.executed`` event. The only window where a crash repeats an
effect is between the effect (e.g. the webhook's response) and that MULTI, one Redis round
trip; webhooks carry ``Idempotency-Key`` so receivers can close it, run-deployment closes it
in the runtime (flow runs are created once per key). The idempotency check runs before
rendering (the design's "render -> check" order would emit a second ``.failed`` for a
redelivered action whose template fails).
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from automations.dispatch.executors import EXECUTORS, Executor
from automations.dispatch.invocation import (
    Invocation,
    action_outcome,
    action_triggered,
    new_invocation,
    plan_actions,
    template_context,
)
from automations.dispatch.ledger import DONE, GAVE_UP, Ledger
from automations.dispatch.logs import SecretSafeLogs
from automations.dispatch.notifiers import NotifierPool
from automations.dispatch.ports import ActionContext, ActionResult, Clients, Ports
from automations.dispatch.retries import RetryJob, RetryQueue, backoff
from automations.engine.outbox import OutboxEntryError, firings_of
from automations.events import Event, format_validation_error, utcnow
from automations.insight.history import (
    DEAD,
    EXECUTED,
    FAILED,
    RETRYING,
    fired_entry,
    outcome_entry,
    summarize,
)
from automations.keys import DISPATCH_GROUP, Keys
from automations.metrics import current_metrics
from automations.settings import Settings
from automations.store import AutomationStore, InvalidStoredAutomation
from automations.streams.consumer import Entry, Reject, StreamConsumer, stop_when_set
from triggers.firing import Firing

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 30.0


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
        self.keys = keys or Keys(settings.prefix)
        self.ports = ports
        self.executors = dict(EXECUTORS if executors is None else executors)
        self.clock = clock
        # Several readers per process: while one waits for its batch's slowest action, the
        # next reads new firings (a batch is acked only when all its first attempts ended).
        name = consumer or settings.consumer_name
        self.consumers = [
            StreamConsumer(
                redis, settings, stream=self.keys.firings, group=DISPATCH_GROUP,
                handler=self._handler_for(reader), dead_stream=self.keys.dead(self.keys.firings),
                consumer=reader, maxlen=settings.firings_maxlen,
            )
            for reader in ([name] if settings.dispatch_readers == 1 else
                           [f"{name}-{i}" for i in range(settings.dispatch_readers)])
        ]
        self.retries = RetryQueue(redis, self.keys)
        self.ledger = Ledger(redis, self.keys, settings, self.retries)
        self.automations = AutomationCache(AutomationStore(redis, self.keys))
        self.templates = TemplateEngine()
        self.counts = {"executed": 0, "failed": 0, "retried": 0, "gave_up": 0, "skipped": 0}
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
                    work.start_soon(consumer.run)
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
        """One retry job; whatever goes wrong, its lease runs out and it is claimed again, so
        a failure here must not cancel its siblings."""
        try:
            await self.run_retry(job)
        except CONNECTION_ERRORS as exc:
            log.warning("retry of action %s interrupted (%s: %s); it will run again when its "
                        "lease ends", job.key, type(exc).__name__, exc)
        except Exception:
            log.exception("retry of action %s failed; it will run again when its lease ends",
                          job.key)

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
    def _handler_for(self, reader: str) -> Callable[[list[Entry]], Awaitable[list[Reject]]]:
        async def handle(entries: list[Entry]) -> list[Reject]:
            return await self.handle_batch(entries, reader=reader)
        return handle

    async def handle_batch(self, entries: list[Entry], *, reader: str | None = None
                           ) -> list[Reject]:
        """Run the first attempt of every action of every firing in the batch. While it runs,
        ``reader`` keeps the entries' idle time fresh, so no other dispatcher reclaims (and
        repeats) a batch that is merely slow."""
        async with anyio.create_task_group() as tg:
            if reader is not None:
                tg.start_soon(self._keep_claimed, reader, [e.id for e in entries])
            rejects = await self._handle(entries)
            tg.cancel_scope.cancel()
        return rejects

    async def _keep_claimed(self, reader: str, ids: list[str]) -> None:
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
                await self.redis.xclaim(self.keys.firings, DISPATCH_GROUP, reader, 0, claimed,
                                        justid=True)
            except CONNECTION_ERRORS as exc:
                delay = redis_backoff.next_delay(exc)
                continue
            redis_backoff.recovered()
            delay = interval

    async def _handle(self, entries: list[Entry]) -> list[Reject]:
        rejects: list[Reject] = []
        invocations: list[Invocation] = []
        parsed = self._parse(entries, rejects)
        found = await self.automations.lookup(firing.automation_id for _, firing in parsed)
        for entry, firing in parsed:
            automation = found[firing.automation_id]
            if isinstance(automation, InvalidStoredAutomation):
                rejects.append(Reject(entry, str(automation)))
                continue
            if automation is None:
                rejects.append(Reject(entry, f"automation {firing.automation_id} does not exist "
                                      "(deleted after it fired)"))
                continue
            try:
                invocations += [new_invocation(automation, firing, planned)
                                for planned in plan_actions(automation, firing)]
            except ValidationError as exc:  # e.g. a malformed triggering event: this entry only
                rejects.append(Reject(entry, f"invalid firing: {format_validation_error(exc)}"))
        # The batch's idempotency checks and action.triggered events: one script call.
        fresh = await self.ledger.begin(
            [(inv.key, action_triggered(inv)) for inv in invocations],
            self._fired_records(invocations))
        self.counts["skipped"] += fresh.count(False)
        async with anyio.create_task_group() as tg:
            for inv, new in zip(invocations, fresh, strict=True):
                if new:
                    tg.start_soon(self._limited_action, inv)
                else:
                    self.metrics.action_done(inv.action_type, "skipped")
        return rejects

    async def _limited_action(self, inv: Invocation) -> None:
        # The whole pipeline holds a slot, so a batch of 1,000 firings never opens more than
        # ``action_concurrency`` Redis connections and HTTP requests at once.
        async with self._limit:
            await self.run_action(inv, begun=True)

    def _parse(self, entries: Sequence[Entry], rejects: list[Reject]) -> list[tuple[Entry, Firing]]:
        """``(entry, firing)`` for every firing of the batch; an engine entry holding several
        firings yields an entry per firing (one ``data`` field: what a dead letter keeps)."""
        parsed = []
        for entry in entries:
            try:
                firings = firings_of(entry.fields)
            except OutboxEntryError as exc:
                rejects.append(Reject(entry, str(exc)))
                continue
            except ValidationError as exc:
                rejects.append(Reject(entry, f"invalid firing: {format_validation_error(exc)}"))
                continue
            if len(firings) == 1 and b"data" in entry.fields:
                parsed.append((entry, firings[0]))
            else:
                parsed += [(Entry(entry.id, {b"data": f.to_json()}, entry.deliveries), f)
                           for f in firings]
        return parsed

    async def run_retry(self, job: RetryJob) -> str:
        """The next attempt of a retry job, with the automation's current action."""
        async with self._limit:
            return await self._run_retry(job)

    async def _run_retry(self, job: RetryJob) -> str:
        automation_id = UUID(job.automation_id)
        automation = (await self.automations.lookup([automation_id]))[automation_id]
        firing = Firing.from_json(job.firing)
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
        inv = new_invocation(automation, firing, planned)
        return await self.run_action(inv, attempt=job.attempt, job=job)

    # -- the per-action pipeline ------------------------------------------------------------
    async def run_action(self, inv: Invocation, *, attempt: int = 1,
                         job: RetryJob | None = None, begun: bool = False) -> str:
        """idempotency check + action.triggered (``begun``: done for the whole batch) ->
        render -> execute -> commit: done + .executed | retry job + .failed | dead letter."""
        if not begun:
            [fresh] = await self.ledger.begin(
                [(inv.key, action_triggered(inv) if attempt == 1 else None)])
            if not fresh:
                self.counts["skipped"] += 1
                self.metrics.action_done(inv.action_type, "skipped")
                if job is not None:
                    await self.ledger.commit(inv.key, done=None, events=[], job=job)
                return "skipped"
        ctx = self._context(inv, attempt)
        started = time.perf_counter()
        try:
            ctx.action = await render_action(inv.planned.action, ctx.templates)
            result = await self._execute(ctx)
        except ActionError as exc:
            took = time.perf_counter() - started
            outcome = await self._failed(inv, ctx, exc, job)
            self.metrics.action_done(inv.action_type, outcome, took)
            return outcome
        took = time.perf_counter() - started
        executed = self._executed_event(inv, ctx, result)
        await self._record_done(inv.key, executed, job, self._outcome(
            inv, EXECUTED, ctx.attempt, summarize(executed.payload)))
        self.counts["executed"] += 1
        self.metrics.action_done(inv.action_type, "executed", took)
        return "executed"

    async def _record_done(self, key: str, executed: Event, job: RetryJob | None,
                           history: bytes | None = None) -> None:
        """Commit a done effect, riding out a Redis outage of up to ``claim_idle_ms``: giving
        up here fails the batch, whose redelivery would repeat the effect. (A commit that
        landed but lost its reply is harmless to repeat: same key, same event id.)"""
        await retry(partial(self.ledger.commit, key, done=DONE, events=[executed], job=job,
                            history=history),
                    Backoff(f"action {key}: recording its done effect",
                            cap_s=self.settings.reconnect_max_s, logger=log),
                    deadline_s=self.settings.claim_idle_ms / 1000)

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
                      job: RetryJob | None) -> str:
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
            next_job = RetryJob(
                key=inv.key, firing=inv.firing.to_json().decode(),
                automation_id=str(inv.automation.id), index=inv.index,
                action_type=inv.action_type, attempt=ctx.attempt + 1)
            await self.ledger.commit(inv.key, done=None, events=[failed],
                               retry=(next_job, time.time() + delay),
                               history=self._outcome(inv, RETRYING, ctx.attempt,
                                                     f"{exc.reason.value}: {message}; "
                                                     f"retry in {delay:.1f}s"))
            self.counts["retried"] += 1
            return "retrying"
        dead: dict[str, Any] = {
                "data": inv.firing.to_json(), "reason": f"{exc.reason.value}: {message}",
                "action_index": str(inv.index), "action_type": inv.action_type,
                "attempts": str(ctx.attempt), "automation_id": str(inv.automation.id),
                "idempotency_key": inv.key}
        outcome = DEAD if exc.transient else FAILED  # transient: its attempts ran out
        why = f" (given up after {ctx.attempt} attempts)" if exc.transient else ""
        await self.ledger.commit(inv.key, done=GAVE_UP, events=[failed], job=job, dead=dead,
                                 history=self._outcome(inv, outcome, ctx.attempt,
                                                       f"{exc.reason.value}: {message}{why}"))
        self.counts["gave_up"] += 1
        self.metrics.dead_lettered(self.keys.dead(self.keys.firings))
        log.error("action %s (%s) of automation %r given up after %d attempt(s), dead-lettered "
                  "to %s: firing %s, event %s: %s: %s", inv.key, inv.action_type,
                  inv.automation.name, ctx.attempt, self.keys.dead(self.keys.firings),
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
        await self.ledger.commit(job.key, done=GAVE_UP, events=[], job=job, dead=dead,
                                 history=record)
        self.counts["gave_up"] += 1
        self.metrics.action_done(job.action_type, "gave-up")
        self.metrics.dead_lettered(self.keys.dead(self.keys.firings))
        log.error("action %s (%s) given up before its retry, dead-lettered to %s: %s", job.key,
                  job.action_type, self.keys.dead(self.keys.firings), reason,
                  extra={"automation_id": job.automation_id, "action": job.action_type,
                         "action_index": job.index, "idempotency_key": job.key,
                         "firing_id": job.key.rpartition(":")[0]})

    # -- history records (automations.insight.history), written with the ledger's writes ---
    def _fired_records(self, invocations: Sequence[Invocation]) -> list[bytes | None]:
        """A firing's ``fired`` record rides with the begin of its first action (index 0), so
        a redelivered firing whose actions are done records nothing again."""
        if not self.settings.history_maxlen:
            return []
        types: dict[UUID, list[str]] = {}
        for inv in invocations:
            types.setdefault(inv.firing.id, []).append(inv.action_type)
        return [None if inv.index else fired_entry(
            firing_id=inv.firing.id, automation_id=inv.automation.id,
            automation=inv.automation.name, fired_at=inv.firing.triggered,
            event_id=(inv.firing.triggering_event or {}).get("id"), actions=types[inv.firing.id])
            for inv in invocations]

    def _outcome(self, inv: Invocation, outcome: str, attempt: int, detail: str | None
                 ) -> bytes | None:
        if not self.settings.history_maxlen:
            return None
        return outcome_entry(firing_id=inv.firing.id, automation_id=inv.automation.id,
                             index=inv.index, action_type=inv.action_type, outcome=outcome,
                             attempt=attempt, detail=detail)


def _ids(inv: Invocation, attempt: int, reason: str) -> dict[str, Any]:
    """The ids of an action's log lines (``extra=``: fields of a JSON log line)."""
    event = inv.firing.triggering_event or {}
    return {"automation": inv.automation.name, "automation_id": str(inv.automation.id),
            "firing_id": str(inv.firing.id), "event_id": event.get("id"),
            "action": inv.action_type, "action_index": inv.index, "attempt": attempt,
            "idempotency_key": inv.key, "reason": reason}
