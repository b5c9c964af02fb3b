"""One attempt of one action: the per-action pipeline the dispatcher runs for a batch's first
attempts and for retry jobs.

``ActionRunner.run_action`` is the whole pipeline in one function: idempotency check ->
action.triggered (one script for a whole batch: ``ledger``) -> render -> execute (timeout,
classified outcome) -> record done + action.executed | schedule retry + action.failed | dead
letter + action.failed. Every record is fenced by the action's lease (``dispatch/lease.py``): a
stale executor's outcome is refused and counted as ``fenced``. An action whose pipeline raises
instead of returning an outcome is given up alone (``crashed``), with its own dead letter naming
the real cause, unless Redis is away, when nothing is written and its firing or retry job runs
again.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import anyio
from pydantic import ValidationError

from actions.outcome import ActionError, PermanentError, Reason, TransientError
from actions.secrets import Redactor
from actions.templating import TemplateEngine, Templates, render_action
from automations.dispatch.automation_cache import AutomationCache
from automations.dispatch.executors import Executor
from automations.dispatch.invocation import (
    Invocation,
    action_outcome,
    action_triggered,
    new_invocation,
    plan_actions,
    template_context,
)
from automations.dispatch.isolation import describe, redis_unavailable
from automations.dispatch.lease import LeaseKeeper
from automations.dispatch.ledger import DONE, GAVE_UP, Begun, Ledger, Recorded, Start
from automations.dispatch.ports import ActionContext, ActionResult, Clients, Ports
from automations.dispatch.retries import RetryJob, backoff
from automations.events import Event
from automations.insight.history import (
    DEAD,
    EXECUTED,
    FAILED,
    RETRYING,
    outcome_entry,
    summarize,
)
from automations.metrics import Metrics
from automations.settings import Settings
from automations.store import InvalidStoredAutomation
from triggers.firing import Firing

# Action outcomes keep the dispatcher's logger name, the one log filters select
# (docs/observability.md).
log = logging.getLogger("automations.dispatch.dispatcher")


class ActionRunner:
    """Runs and records action attempts for one dispatcher; ``counts`` tallies their outcomes
    (the dispatcher's ``counts``)."""

    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        *,
        automations: AutomationCache,
        ports: Ports,
        executors: dict[str, Executor],
        clock: Callable[[], datetime],
        clients: Callable[[], Clients],
        metrics: Metrics,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.automations = automations
        self.ports = ports
        self.executors = executors
        self.clock = clock
        self.metrics = metrics
        self.templates = TemplateEngine()
        self.counts = {"executed": 0, "failed": 0, "retried": 0, "gave_up": 0, "skipped": 0,
                       "busy": 0, "fenced": 0}
        self._clients = clients
        self._rng = random.Random()

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
                return await self.wait_for_lease(inv, attempt=attempt, job=job)
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

    async def run_retry_job(self, job: RetryJob, lease: LeaseKeeper) -> str:
        """The next attempt of a retry job, with the automation's current action; a job whose
        automation, firing or action is gone or changed is given up."""
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
            if await self.crashed(inv, lease, exc, attempt=job.attempt, job=job):
                return "gave-up"
            raise

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
            ledger=self.ledger, clients=self._clients(), redactor=Redactor(),
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

    async def wait_for_lease(self, inv: Invocation, *, attempt: int, job: RetryJob | None
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

    async def crashed(self, inv: Invocation, lease: LeaseKeeper | None, exc: Exception, *,
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


def _ids(inv: Invocation, attempt: int, reason: str) -> dict[str, Any]:
    """The ids of an action's log lines (``extra=``: fields of a JSON log line)."""
    event = inv.firing.triggering_event or {}
    return {"automation": inv.automation.name, "automation_id": str(inv.automation.id),
            "firing_id": str(inv.firing.id), "event_id": event.get("id"),
            "action": inv.action_type, "action_index": inv.index, "attempt": attempt,
            "idempotency_key": inv.key, "reason": reason}
