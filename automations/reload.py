"""Hot reload: keep an engine's automations in step with the store's change log.

``follow`` loads the current automations and the log position they reflect in one atomic
read, then tails the log with XREAD BLOCK and hands each change to the engine, so a create,
update, pause or delete reaches every engine process within about ``block_ms`` (well under
1 s) without a restart. Paused (disabled) automations are taken out of evaluation; their
window state stays in Redis and is used again on resume. Deleted ones lose their state. The
engine applies a change between two awaits of its own loop, so events it is processing are
not dropped.

If Redis goes away, ``follow`` retries with backoff and resynchronises from a fresh snapshot
when it is back (the log may have been lost or trimmed meanwhile); it never raises out of the
engine service for a bad entry or a failed engine call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

import anyio

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS
from automations.models import Automation
from automations.store import DELETE, AutomationChange, AutomationStore

log = logging.getLogger(__name__)

BLOCK_MS = 500


class ReloadTarget(Protocol):
    """What ``follow`` needs of an engine (``automations.engine.Engine`` has it)."""

    async def load(self, automations: Sequence[Automation]) -> None: ...

    async def upsert(self, automation: Automation, *, trigger_changed: bool) -> None:
        """Add or replace; a disabled automation is taken out of evaluation."""

    async def remove(self, automation_id: UUID) -> None: ...


async def follow(
    store: AutomationStore,
    engine: ReloadTarget,
    stopping: anyio.Event,
    *,
    after: str | None = None,
    block_ms: int = BLOCK_MS,
) -> None:
    """Apply store changes to ``engine`` until ``stopping`` is set.

    With a log id (the engine service passes the one its start-up load reflects) it tails
    from there; with ``after=None`` it first loads every enabled automation into the engine
    (``engine.load``) from an atomic snapshot.
    """
    position = after
    redis_backoff = Backoff("automations reload", logger=log)
    while not stopping.is_set():
        try:
            if position is None:
                position = await resync(store, engine)
            changes, last = await store.read_log(position, block_ms=block_ms)
            if last != position and await store.log_starts_after(position):
                log.warning("automations log was trimmed past %s; reloading everything", position)
                position = None
                continue
            for change in changes:
                await apply_change(engine, change)
            position = last
            redis_backoff.recovered()
        except CONNECTION_ERRORS as exc:
            await redis_backoff.wait(exc, stopping)
            position = None  # Redis may have restarted without its data: reload it all


async def resync(store: AutomationStore, engine: ReloadTarget) -> str:
    """Load every enabled automation into ``engine``; return the log id it reflects."""
    automations, position = await store.snapshot()
    await engine.load([a for a in automations if a.enabled])
    log.info("automations reload: %d loaded (log at %s)", len(automations), position)
    return position


async def apply_change(engine: ReloadTarget, change: AutomationChange) -> None:
    """One change: upsert (a paused automation arrives disabled, so the engine stops
    evaluating it but keeps its window state), or remove a deleted one (state dropped). An
    engine failure is logged, never raised (a bad automation must not stop the service)."""
    automation = change.automation
    try:
        if change.kind == DELETE or automation is None:
            await engine.remove(change.automation_id)
        else:  # a paused automation is upserted disabled: evaluation stops, state is kept
            await engine.upsert(automation, trigger_changed=change.trigger_changed)
    except CONNECTION_ERRORS:
        raise  # ``follow`` retries and resynchronises
    except Exception:  # the engine service must outlive one bad change; it is logged in full
        log.exception("automations reload: applying %s %s failed", change.kind,
                      change.automation_id)
