"""An event's or an automation's firings, read back from the outboxes the engine writes
(``engine/outbox.py``), with each firing's action outcomes from the dispatcher's history
(``insight/history.py``) when it is there: what ``explain`` reports as fired.

Every scan is bounded (``SCAN_FIRINGS``, read ``CHUNK`` entries a call).
"""

from __future__ import annotations

import importlib
from typing import Any

import redis.asyncio as aioredis

from automations.engine.decisions import Decision
from automations.engine.outbox import OutboxEntryError, outbox_parts
from automations.events import Event, from_micros
from automations.insight.explain_models import ActionOutcome, FiringInfo
from automations.keys import Keys

SCAN_FIRINGS = 10_000  # outbox entries searched for an event's or automation's firings
CHUNK = 1_000  # entries read per call
FIRINGS_AROUND_MS = 10_000  # an event's firings are looked for this close to its decision
FIRINGS_LAG_MS = 60_000  # ... or this long after its XADD when it has no decision
RECENT = 10  # recent counted events, near misses and firings shown for an automation


def _firing_infos(entry_id: bytes, fields: Any) -> list[FiringInfo]:
    try:
        items, _ = outbox_parts(fields)
    except OutboxEntryError:
        return []
    event_id = fields.get(b"event_id")
    return [FiringInfo(
        firing_id=str(item.get("id")), outbox_entry=entry_id.decode(),
        automation_id=str(item.get("automation_id")),
        trigger_id=item.get("trigger_id"),
        state=(item.get("trigger_states") or ["Triggered"])[0],
        fired_at=item.get("triggered"), event_id=event_id.decode() if event_id else None,
    ) for item in items]


async def event_firings(
    redis: aioredis.Redis, keys: Keys, event: Event | None, decision: Decision | None,
    entry_id: str | None,
) -> list[FiringInfo]:
    """The firings whose triggering event is this one, from the entries of every partition's
    outbox written near the time it was processed (its decision), else in the minute after
    its XADD."""
    event_id = str(event.id) if event else decision.event_id if decision else None
    if event_id is None:
        return []
    if decision is not None:
        at = int(decision.log_id.partition("-")[0])
        start, end = at - FIRINGS_AROUND_MS, at + FIRINGS_AROUND_MS
    elif entry_id:
        start = int(entry_id.partition("-")[0]) - 1000
        end = start + FIRINGS_LAG_MS
    else:
        return []
    found: list[FiringInfo] = []
    for outbox in keys.outboxes:
        found += await _outbox_firings(redis, outbox, event_id, max(start, 0), end)
    await _with_actions(redis, keys, found, event_id=event_id)
    return found


async def _outbox_firings(redis: aioredis.Redis, outbox: str, event_id: str, start: int,
                          end: int) -> list[FiringInfo]:
    """One outbox's firings of ``event_id`` between ``start`` and ``end`` (ms; bounded)."""
    found: list[FiringInfo] = []
    cursor, left = str(start), SCAN_FIRINGS
    while left > 0:
        entries: Any = await redis.xrange(outbox, min=cursor, max=str(end),
                                          count=min(CHUNK, left))
        for outbox_id, fields in entries:
            if fields.get(b"event_id", b"").decode() == event_id:
                found += _firing_infos(outbox_id, fields)
        if len(entries) < min(CHUNK, left):
            break
        left -= len(entries)
        cursor = "(" + entries[-1][0].decode()
    return found


async def automation_firings(redis: aioredis.Redis, keys: Keys, aid: str) -> list[FiringInfo]:
    """The automation's last ``RECENT`` firings in its partition's outbox (newest first,
    bounded)."""
    found: list[FiringInfo] = []
    end, left = "+", SCAN_FIRINGS
    outbox = keys.of(aid).firings
    while left > 0 and len(found) < RECENT:
        entries: Any = await redis.xrevrange(outbox, max=end, count=min(CHUNK, left))
        for outbox_id, fields in entries:
            found += [f for f in _firing_infos(outbox_id, fields) if f.automation_id == aid]
        if len(entries) < min(CHUNK, left):
            break
        left -= len(entries)
        end = "(" + entries[-1][0].decode()
    found = found[:RECENT]
    await _with_actions(redis, keys, found, automation_id=aid)
    return found


async def _with_actions(
    redis: aioredis.Redis, keys: Keys, firings: list[FiringInfo], **query: Any
) -> None:
    """Fill in each firing's actions from the dispatcher's history (``insight.history``);
    left ``None`` when that module or its record is not there."""
    if not firings:
        return
    try:  # imported here: the history is optional for explain (and may come later)
        history = importlib.import_module("automations.insight.history")
    except ImportError:
        return
    # history ids are the dispatcher's clock, which takes a firing after the outbox got it
    oldest = min(int(f.outbox_entry.partition("-")[0]) for f in firings)
    since = from_micros((oldest - 1000) * 1000)
    records = await history.read_history(redis, keys, since=since, **query)
    actions = {str(r.firing_id): [_outcome(a) for a in r.actions] for r in records}
    for firing in firings:
        firing.actions = actions.get(firing.firing_id)


def _outcome(action: Any) -> ActionOutcome:
    outcome = getattr(action.outcome, "value", action.outcome)
    detail = action.detail
    return ActionOutcome(index=int(action.index), type=str(action.type), outcome=str(outcome),
                         at=action.at, detail=None if detail is None else str(detail))
