"""send-notification through Apprise, to inline URLs or a stored block.

Each target is delivered on its own (concurrently) through the dispatcher's ``NotifierPool``
and remembered as delivered (``done:<key>:t<i>``), so a retry after a partial failure only
re-sends the targets that failed. With ``cooldown_seconds``, at most one notification per
automation and target goes out per cooldown: the others are dropped and counted, and the next
one sent says how many were suppressed (state in Redis, shared by every dispatcher).
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio

from actions.models import SendNotification
from actions.outcome import ActionError, PermanentError, TransientError
from actions.secrets import resolve_block
from automations.dispatch.notifiers import classify
from automations.dispatch.ports import ActionContext, ActionResult

SUPPRESSED_NOTE = "\n\n({n} similar notification{s} suppressed by the cooldown)"


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
    dropped since the last one sent."""
    if not action.cooldown_seconds:
        return 0
    automation, target = str(ctx.automation.id), _target_hash(url)
    marker = ctx.keys.cooldown(automation, target)
    counter = ctx.keys.cooldown_dropped(automation, target)
    ttl_ms = max(1, int(action.cooldown_seconds * 1000))
    if await ctx.redis.set(marker, ctx.idempotency_key, px=ttl_ms, nx=True):
        dropped = await ctx.redis.getdel(counter)
        return int(dropped or 0)
    owner = await ctx.redis.get(marker)
    if owner is not None and owner in (ctx.idempotency_key, ctx.idempotency_key.encode()):
        return 0  # our own claim, from an earlier attempt of this action
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.incr(counter)
    pipe.expire(counter, max(86_400, int(action.cooldown_seconds * 10)))
    await pipe.execute()
    return None


async def _deliver(
    action: SendNotification, ctx: ActionContext, index: int, url: str, shown: str
) -> dict[str, Any]:
    """Deliver to one target; returns its report (``error`` set to the classified failure)."""
    done_key = ctx.keys.done(f"{ctx.idempotency_key}:t{index}")
    if await ctx.redis.exists(done_key):
        return {"target": shown, "status": "already-delivered"}
    suppressed = await _claim_cooldown(action, ctx, url)
    if suppressed is None:
        return {"target": shown, "status": "throttled"}
    body = action.body
    if suppressed:
        body += SUPPRESSED_NOTE.format(n=suppressed, s="" if suppressed == 1 else "s")
    report: dict[str, Any] = {"target": shown}
    if suppressed:
        report["suppressed_before"] = suppressed
    try:
        delivery = await ctx.clients.notifiers.send(
            url, title=action.subject, body=body, timeout=ctx.settings.action_timeout_s
        )
        error: ActionError | None = classify(delivery)
    except ActionError as exc:
        error, delivery = exc, None
    if error is None:
        await ctx.redis.set(done_key, b"1", ex=ctx.settings.action_done_ttl_s)
        return {**report, "status": "delivered"}
    if action.cooldown_seconds:
        # The claim must not block the retry of a failed delivery.
        await ctx.redis.delete(ctx.keys.cooldown(str(ctx.automation.id), _target_hash(url)))
    log = delivery.log if delivery is not None else []
    return {**report, "status": "failed", "reason": error.reason.value,
            "message": error.message, "log": log, "error": error}


async def execute(action: SendNotification, ctx: ActionContext) -> ActionResult:
    targets = await resolve_targets(action, ctx)
    reports: list[dict[str, Any]] = [{} for _ in targets]

    async def one(i: int, url: str, shown: str) -> None:
        reports[i] = await _deliver(action, ctx, i, url, shown)

    async with anyio.create_task_group() as tg:
        for i, (url, shown) in enumerate(targets):
            tg.start_soon(one, i, url, shown)
    errors: list[ActionError] = [r.pop("error") for r in reports if "error" in r]
    details: dict[str, Any] = {
        "subject": action.subject,
        "targets": reports,
        "delivered": sum(r["status"] == "delivered" for r in reports),
        "throttled": sum(r["status"] == "throttled" for r in reports),
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
