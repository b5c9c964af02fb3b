"""Replay: automations over the events already in the events stream, read only.

Entries between two stream ids (ms timestamps: when each event was added) are read a page at
a time with XRANGE, decoded with the engine's own intake (``engine.intake.decode_event``:
the same JSON, size and grammar checks; an event further ahead of its entry's time than
``max_future_s`` is refused as the engine refuses it), and fed in stream order to
``automations.dry_run``, the reference evaluator the engine is property-tested against, with
event time as the clock. Undecodable entries are skipped and counted. Nothing is written:
no group, no marker, no firing; no action runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from automations.dry_run import DryRun, DryRunResult, Numbered
from automations.engine.intake import decode_event
from automations.errors import InvalidEvent
from automations.events import micros, to_us
from automations.keys import Keys
from automations.models import Automation

PAGE = 1000
"""Stream entries read per XRANGE."""

Progress = Callable[[int, int], None]
"""Called after each page with (ms of the last entry read, events read so far)."""


class _EveryName:
    """An index that says every event name may interest a trigger, so ``decode_event``
    always builds (and checks) the model: the dry run needs it."""

    def candidates(self, event_name: str, /) -> Sized:
        return (event_name,)


@dataclass(slots=True)
class Replay:
    """What the dry run found, and how each firing's event maps back to its stream entry."""

    result: DryRunResult
    stream_ids: list[str] = field(default_factory=list)  # line n (1-based) -> entry id
    undecodable: list[tuple[str, str]] = field(default_factory=list)  # (entry id, why)
    first_id: str | None = None
    last_id: str | None = None

    def stream_id(self, line: int | None) -> str | None:
        return None if line is None else self.stream_ids[line - 1]


def stream_bound(moment: datetime | None, default: str) -> str:
    """An XRANGE bound (ms) for ``moment``; ``default`` ("-"/"+") for none."""
    return default if moment is None else str(micros(moment) // 1000)


def entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


async def replay_stream(
    redis: aioredis.Redis,
    keys: Keys,
    automations: Sequence[Automation],
    *,
    since: datetime | None,
    until: datetime,
    follows_wait: timedelta,
    max_future: timedelta,
    progress: Progress | None = None,
) -> Replay:
    """Evaluate the stream's entries added in ``[since, until]``; close windows up to
    ``until``."""
    run = DryRun(automations, follows_wait=follows_wait)
    replay = Replay(DryRunResult([], 0, None, None, 0, 0))
    index = _EveryName()
    low, high = stream_bound(since, "-"), stream_bound(until, "+")
    max_future_us = to_us(max_future.total_seconds())
    while True:
        entries: Any = await redis.xrange(keys.events, min=low, max=high, count=PAGE)
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            replay.first_id = replay.first_id or entry_id
            replay.last_id = entry_id
            problem = _feed(run, replay, entry_id, fields.get(b"data"), index, max_future_us)
            if problem is not None:
                replay.undecodable.append((entry_id, problem))
        if entries and progress is not None and replay.last_id is not None:
            progress(entry_ms(replay.last_id), len(replay.stream_ids))
        if len(entries) < PAGE:
            break
        low = f"({replay.last_id}"
    replay.result = run.finish(until)
    return replay


def _feed(run: DryRun, replay: Replay, entry_id: str, raw: bytes | None, index: _EveryName,
          max_future_us: int) -> str | None:
    """Feed one entry; the reason it was skipped, or None."""
    if raw is None:
        return "stream entry has no 'data' field"
    try:
        item = decode_event(raw, index)
    except InvalidEvent as exc:
        return f"invalid event: {exc}"
    if item.event is None:  # cannot happen with _EveryName; kept for the type
        return "invalid event"
    if item.occurred_us > entry_ms(entry_id) * 1000 + max_future_us:
        return "invalid event: occurred too far ahead of the time it was added"
    replay.stream_ids.append(entry_id)
    run.feed(Numbered(len(replay.stream_ids), item.event))
    return None
