"""send-notification through Apprise, to inline URLs or a stored block.

Each target is delivered on its own (concurrently) through the dispatcher's ``NotifierPool``
and remembered as delivered (``<key>:t<i>`` in ``ctx.ledger``), so a retry after a partial
failure only re-sends the targets that failed. With ``cooldown_seconds``, at most one
notification per automation and target goes out per cooldown: the others are dropped and
counted, and the next one sent says how many were suppressed (the ledger's state is shared by
every dispatcher).

At most once per target: Apprise sends no idempotency key, so the receiver cannot drop a
repeat. A "sending" mark is set just before a target is sent to (in the sending thread, as
the request is about to leave: ``NotifierPool.send``) and removed only after a definite
failure (an error status, a refused connection); a send that timed out or was cut off (the
dispatcher's timeout, a crash, a stall) leaves it, and no later attempt or redelivery sends to
that target again: it is reported failed as "timed out; may have been delivered". The marks go
with the action's final outcome, so a re-drive of its dead letter does send again.
``retry_on_timeout`` makes it at least once instead (a timed-out send is retried).
"""

from __future__ import annotations

import hashlib
import uuid
from functools import partial
from typing import Any

import anyio

from actions.models import SendNotification
from actions.outcome import ActionError, PermanentError, Reason, TransientError
from actions.secrets import resolve_block
from automations.dispatch.notifiers import Delivery, classify
from automations.dispatch.ports import ActionContext, ActionResult

SUPPRESSED_NOTE = "\n\n({n} similar notification{s} suppressed by the cooldown)"
SEND_BUDGET = 0.9
"""Share of the action timeout a send may take: a slow receiver times out here, classified
per target, before the dispatcher's own timeout cuts the whole action off."""
MAYBE_DELIVERED = "timed out; may have been delivered"


async def resolve_targets(action: SendNotification, ctx: ActionContext) -> list[tuple[str, str]]:
    """(URL, how to show it) per target; block values may hold several whitespace-separated
    URLs. Shown forms never contain a secret."""
    name = action.block or (str(action.block_document_id) if action.block_document_id else None)
    if name is not None:
        value = await resolve_block(ctx.ports.blocks, name, ctx.redactor)
        urls = value.split()
        return [(u, f"block:{name}" + (f"#{i}" if len(urls) > 1 else "")) for i, u in
                enumerate(urls)]
    targets = []
    for url in action.urls or []:
        ctx.redactor.add_inline_url(url)
        try:
            notifier = await ctx.clients.notifiers.aget(url)
            shown = str(notifier[0].url(privacy=True))  # type: ignore[no-untyped-call]
        except (ActionError, IndexError):
            shown = url.partition("://")[0] + "://***"
        targets.append((url, shown))
    return targets


def _target_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


async def _claim_cooldown(action: SendNotification, ctx: ActionContext, url: str) -> int | None:
    """None when the cooldown drops this notification (and counts it); else how many were
    dropped since the last one sent. The claim is owned by the idempotency key, so a retry
    finds its own earlier claim granted."""
    if not action.cooldown_seconds:
        return 0
    return await ctx.ledger.claim_cooldown(ctx.automation.id, _target_hash(url),
                                           ctx.idempotency_key, action.cooldown_seconds)


def _target_key(ctx: ActionContext, index: int) -> str:
    return f"{ctx.idempotency_key}:t{index}"


async def _deliver(
    action: SendNotification, ctx: ActionContext, index: int, url: str, shown: str,
    deadline: float,
) -> dict[str, Any]:
    """Deliver to one target not yet delivered; returns its report (``error`` set to the
    classified failure)."""
    suppressed = await _claim_cooldown(action, ctx, url)
    if suppressed is None:
        return {"target": shown, "status": "throttled"}
    body = action.body
    if suppressed:
        body += SUPPRESSED_NOTE.format(n=suppressed, s="" if suppressed == 1 else "s")
    report: dict[str, Any] = {"target": shown}
    if suppressed:
        report["suppressed_before"] = suppressed
    key, owner = _target_key(ctx, index), uuid.uuid4().hex
    delivery = None
    try:
        budget = max(0.0, deadline - anyio.current_time())
        with anyio.fail_after(budget):
            delivery = await ctx.clients.notifiers.send(
                url, title=action.subject, body=body,
                before=partial(ctx.ledger.claim_send, ctx.idempotency_key, f"t{index}", owner,
                               action.retry_on_timeout))
        if delivery is None:
            return _failed(report, PermanentError(
                Reason.TIMEOUT, f"{MAYBE_DELIVERED}: an earlier attempt's send did not "
                "conclude (it timed out or was interrupted), so it is not sent again"), None,
                "unconfirmed")
        error: ActionError | None = classify(delivery)
    except TimeoutError:
        error = TransientError(Reason.TIMEOUT, f"notification timed out after {budget:.3g}s")
    except ActionError as exc:
        error = exc
    if error is None:
        await ctx.ledger.mark_delivered(key)
        return {**report, "status": "delivered"}
    if error.reason is Reason.TIMEOUT and not action.retry_on_timeout:
        # The receiver may have it: keep the mark (and the cooldown), never send it again.
        return _failed(report, PermanentError(Reason.TIMEOUT, f"{MAYBE_DELIVERED} ("
                                              f"{error.message}); not sent again"),
                       delivery, "unconfirmed")
    await ctx.ledger.release_send(ctx.idempotency_key, f"t{index}", owner)
    if action.cooldown_seconds:
        # A failed delivery does not use up the cooldown: the next notification may go.
        await ctx.ledger.release_cooldown(ctx.automation.id, _target_hash(url),
                                          ctx.idempotency_key)
    return _failed(report, error, delivery, "failed")


def _failed(report: dict[str, Any], error: ActionError, delivery: Delivery | None,
            status: str) -> dict[str, Any]:
    log = delivery.log if delivery is not None else []
    return {**report, "status": status, "reason": error.reason.value,
            "message": error.message, "log": log, "error": error}


async def execute(action: SendNotification, ctx: ActionContext) -> ActionResult:
    deadline = anyio.current_time() + ctx.action_timeout_s * SEND_BUDGET
    targets = await resolve_targets(action, ctx)
    delivered = await ctx.ledger.delivered([_target_key(ctx, i) for i in range(len(targets))])
    reports: list[dict[str, Any]] = [
        {"target": shown, "status": "already-delivered"} if done else {}
        for (_, shown), done in zip(targets, delivered, strict=True)]

    async def one(i: int, url: str, shown: str) -> None:
        reports[i] = await _deliver(action, ctx, i, url, shown, deadline)

    async with anyio.create_task_group() as tg:
        for i, ((url, shown), done) in enumerate(zip(targets, delivered, strict=True)):
            if not done:
                tg.start_soon(one, i, url, shown)
    errors: list[ActionError] = [r.pop("error") for r in reports if "error" in r]
    details: dict[str, Any] = {
        "subject": action.subject,
        "targets": reports,
        "delivered": sum(r["status"] == "delivered" for r in reports),
        "throttled": sum(r["status"] == "throttled" for r in reports),
        "unconfirmed": sum(r["status"] == "unconfirmed" for r in reports),
    }
    failed_logs = [line for r in reports for line in r.get("log", [])]
    if failed_logs:
        details["notification_log"] = "\n".join(failed_logs)
    if not errors:
        return ActionResult(details=details)
    failed = ", ".join(f"{r['target']}: {r['message']}" for r in reports if r.get("message"))
    message = f"{len(errors)} of {len(targets)} notification target(s) failed: {failed}"
    transient = [e for e in errors if isinstance(e, TransientError)]
    if transient:
        retry_after = max((e.retry_after or 0.0 for e in transient), default=0.0) or None
        raise TransientError(transient[0].reason, message, retry_after, details=details)
    raise PermanentError(errors[0].reason, message, details=details)
