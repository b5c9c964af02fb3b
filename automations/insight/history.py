"""What fired and what its actions did: the history stream's record format and its reader.

The dispatcher appends to ``<p>:history`` (approximate MAXLEN ``history_maxlen``; 0: off), in
the same script call or MULTI as its own writes, so a record is never written for something
that did not happen and never lost when it did:

- a ``fired`` entry when it takes a firing (with the ``action.triggered`` events of its first
  action): firing id, automation id and name, fired_at, triggering event id, planned action
  types;
- an ``action`` entry per outcome (with the done record / retry job / dead letter):
  ``executed``, ``failed`` (permanent failure, not retried), ``retrying`` (transient failure,
  a retry is scheduled; ``attempt`` is the attempt that failed) or ``dead`` (given up to the
  dead-letter stream after its attempts, or because the automation changed).

Each entry is one ``data`` field of JSON. Stream ids are the dispatcher's millisecond clock, so
``since``/``until`` are XREVRANGE bounds on when a firing was taken (within the dispatch
latency of when it fired).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import redis.asyncio as aioredis

from automations.keys import Keys

FIRED, ACTION = "fired", "action"
EXECUTED, FAILED, RETRYING, DEAD = "executed", "failed", "retrying", "dead"
PENDING = "pending"
"""A planned action with no outcome recorded yet (running, or taken before a crash)."""
DETAIL_MAX = 300
PAGE = 1000
_SKIP_KEYS = frozenset({"action_index", "action_type", "invocation", "attempt", "method",
                        "response_body", "notification_log"})


@dataclass(frozen=True)
class ActionRecord:
    """One planned action of a firing and its latest outcome."""

    index: int
    type: str
    outcome: str
    """``executed`` | ``failed`` | ``retrying`` | ``dead``, or ``pending`` (no outcome yet)."""
    at: datetime
    """When the outcome was recorded (for ``pending``: when the firing was taken)."""
    detail: str | None
    attempts: int = 0
    """Attempts made so far (0 while pending)."""


@dataclass(frozen=True)
class FiringRecord:
    firing_id: str
    automation_id: str
    automation: str
    fired_at: datetime
    event_id: str | None
    actions: list[ActionRecord]


# -- writer side (the dispatcher) ---------------------------------------------------------
def fired_entry(*, firing_id: UUID | str, automation_id: UUID | str, automation: str,
                fired_at: datetime, event_id: object | None, actions: Sequence[str]) -> bytes:
    """The record of a firing taken by the dispatcher."""
    return orjson.dumps({
        "kind": FIRED, "firing_id": str(firing_id), "automation_id": str(automation_id),
        "automation": automation, "fired_at": fired_at.isoformat(),
        "event_id": None if event_id is None else str(event_id),
        "actions": list(actions),
    })


def outcome_entry(*, firing_id: UUID | str, automation_id: UUID | str, index: int,
                  action_type: str, outcome: str, attempt: int, detail: str | None) -> bytes:
    """The record of one attempt's outcome (``detail`` is cut to ``DETAIL_MAX``)."""
    if detail is not None and len(detail) > DETAIL_MAX:
        detail = detail[:DETAIL_MAX - 1] + "…"
    return orjson.dumps({
        "kind": ACTION, "firing_id": str(firing_id), "automation_id": str(automation_id),
        "index": index, "type": action_type, "outcome": outcome, "attempt": attempt,
        "detail": detail,
    })


def summarize(details: dict[str, Any]) -> str | None:
    """A short ``k=v`` line of an executor's scalar result details (status code, flow run id,
    ...) for an ``executed`` record; the full details are in the ``.executed`` event."""
    parts = [f"{k}={v}" for k, v in details.items()
             if k not in _SKIP_KEYS and isinstance(v, str | int | float | bool)]
    return ", ".join(parts) or None


# -- reader side ------------------------------------------------------------------------------
def stream_id_at(moment: datetime) -> int:
    """The millisecond part of stream ids written at ``moment``."""
    return int(moment.timestamp() * 1000)


def id_time(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.partition("-")[0]) / 1000, UTC)


async def read_history(
    redis: aioredis.Redis, keys: Keys, *, automation_id: str | None = None,
    event_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
    limit: int | None = None,
) -> list[FiringRecord]:
    """Firings taken between ``since`` and ``until`` (both inclusive, None: unbounded),
    **newest first**, at most ``limit``, each with every planned action's latest outcome
    (outcomes recorded after ``until`` count: the answer is what became of those firings).
    Unreadable entries are skipped; a firing whose ``fired`` entry was trimmed is left out."""
    outcomes: dict[str, dict[int, ActionRecord]] = {}
    found: list[FiringRecord] = []
    emitted: set[str] = set()
    last = None if until is None else stream_id_at(until)
    async for entry_id, record in _newest_first(redis, keys.history, since):
        if automation_id is not None and record.get("automation_id") != automation_id:
            continue
        firing = str(record.get("firing_id"))
        try:
            if record.get("kind") == ACTION:
                _keep_latest(outcomes.setdefault(firing, {}), entry_id, record)
                continue
            if record.get("kind") != FIRED or firing in emitted:
                continue
            emitted.add(firing)
            actions = outcomes.pop(firing, {})
            if last is not None and int(entry_id.partition("-")[0]) > last:
                continue
            if event_id is not None and record.get("event_id") != event_id:
                continue
            found.append(_firing(entry_id, record, actions))
        except (KeyError, TypeError, ValueError):
            continue
        if limit is not None and len(found) >= limit:
            break
    return found


async def _newest_first(redis: aioredis.Redis, stream: str, since: datetime | None
                        ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Decoded entries from the newest down to ``since``, a page at a time."""
    low = "-" if since is None else f"{stream_id_at(since)}-0"
    high = "+"
    while True:
        page: Any = await redis.xrevrange(stream, max=high, min=low, count=PAGE)
        for raw_id, fields in page:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                record = orjson.loads(fields[b"data"])
            except (KeyError, orjson.JSONDecodeError):
                continue
            if isinstance(record, dict):
                yield entry_id, record
        if len(page) < PAGE:
            return
        last = page[-1][0]
        high = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _keep_latest(slot: dict[int, ActionRecord], entry_id: str, record: dict[str, Any]) -> None:
    """Newest first: the first outcome seen for an index is its latest."""
    index = int(record["index"])
    if index not in slot:
        slot[index] = ActionRecord(index, str(record["type"]), str(record["outcome"]),
                                   id_time(entry_id), record.get("detail"),
                                   int(record.get("attempt") or 1))


def _firing(entry_id: str, record: dict[str, Any], outcomes: dict[int, ActionRecord]
            ) -> FiringRecord:
    taken = id_time(entry_id)
    planned = [str(t) for t in record.get("actions") or []]
    actions = [outcomes.get(i) or ActionRecord(i, kind, PENDING, taken, None)
               for i, kind in enumerate(planned)]
    actions += [a for i, a in sorted(outcomes.items()) if i >= len(planned)]
    event = record.get("event_id")
    return FiringRecord(
        firing_id=str(record["firing_id"]), automation_id=str(record["automation_id"]),
        automation=str(record.get("automation") or ""),
        fired_at=datetime.fromisoformat(str(record["fired_at"])),
        event_id=None if event is None else str(event), actions=actions)


def firing_json(firing: FiringRecord) -> dict[str, Any]:
    """The ``history --json`` line of one firing."""
    return {
        "automation": firing.automation, "automation_id": firing.automation_id,
        "firing_id": firing.firing_id, "fired_at": firing.fired_at.isoformat(),
        "event_id": firing.event_id,
        "actions": [{"index": a.index, "type": a.type, "outcome": a.outcome,
                     "at": a.at.isoformat(), "attempts": a.attempts, "detail": a.detail}
                    for a in firing.actions],
    }
