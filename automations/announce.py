"""The announcer: one ``prefect.automation.triggered``/``resolved`` event per firing.

The engine's script writes each firing to the outbox (the firings stream) atomically with the
window change, with the id of its event already chosen; engines then read the outbox with
their own consumer group (``announce``) and append those events to the events stream
(reference 3.13 shape). Doing it here rather than inside the evaluation script keeps the
per-firing copy of the ~1 KB triggering event out of the script every engine waits on: the
outbox stores the event once per entry, and the announcer runs beside evaluation.

Once: one script per batch appends its events, records ``last_fired`` and acks the batch, so a
crash announces a batch wholly or not at all (it is then redelivered). Only an entry taken
over from a live but stalled announcer (idle past ``claim_idle_ms``) can be announced twice,
with the same event ids, which the engine's dedupe skips. A script rather than a pipeline of
XADDs: redis-py's per-command packing cost the engine process more than the evaluation
itself. Firings written by hand as ``data`` entries (tests, tools) are dispatched but not
announced: they did not come from an engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from automations.bus import Entry, Reject, StreamConsumer
from automations.keys import ANNOUNCE_GROUP, Keys
from automations.settings import Settings
from triggers.firing import OutboxEntryError, outbox_parts

log = logging.getLogger(__name__)

# ARGV: events stream, last_fired hash, firings stream, group, #events, #last_fired pairs,
# then (event id, JSON) pairs, (automation id, ISO) pairs, and the entry ids to ack.
ANNOUNCE_LUA = """
local ne, nl = tonumber(ARGV[5]), tonumber(ARGV[6])
local at = 7
for _ = 1, ne do
  redis.call('XADD', ARGV[1], '*', 'data', ARGV[at + 1], 'id', ARGV[at])
  at = at + 2
end
local last = at + 2 * nl - 1
for j = at, last, 1000 do  -- (unpack has a limit: 500 pairs, 1,000 ids a call)
  redis.call('HSET', ARGV[2], unpack(ARGV, j, math.min(j + 999, last)))
end
for j = last + 1, #ARGV, 1000 do
  redis.call('XACK', ARGV[3], ARGV[4], unpack(ARGV, j, math.min(j + 999, #ARGV)))
end
return ne
"""

_NAMES = {"Triggered": b"prefect.automation.triggered",
          "Resolved": b"prefect.automation.resolved"}


def related_of(event_id: bytes | None) -> bytes:
    """The ``related`` list of an announcement: the triggering event, when there is one."""
    if not event_id:
        return b"[]"
    return orjson.dumps([{"prefect.resource.id": f"prefect.event.{event_id.decode()}",
                          "prefect.resource.role": "triggering-event"}])


def announcement(
    firing: dict[str, Any], event_raw: bytes | None, related: bytes, resource: bytes | None
) -> tuple[bytes, bytes] | None:
    """``(event id, event JSON)`` of one engine firing (``None`` if it names no event id).
    ``resource``: the automation's (id, name, posture); only its id when it is unknown here
    (deleted since it fired)."""
    event_id = firing.get("automation_triggered_event_id")
    if not isinstance(event_id, str):
        return None
    states = firing.get("trigger_states") or ["Triggered"]
    name = _NAMES.get(states[0], _NAMES["Triggered"])
    if resource is None:
        resource = orjson.dumps(
            {"prefect.resource.id": f"prefect.automation.{firing.get('automation_id')}"})
    data = b"".join((
        b'{"id":', orjson.dumps(event_id), b',"occurred":', orjson.dumps(firing.get("triggered")),
        b',"event":"', name, b'","resource":', resource,
        b',"related":', related,
        b',"payload":{"triggering_labels":', orjson.dumps(firing.get("triggering_labels") or {}),
        b',"triggering_event":', event_raw if event_raw is not None else b"null",
        b'},"follows":null}',
    ))
    return event_id.encode(), data


class Announcer:
    """Consumes the outbox (group ``announce``) and publishes every engine firing's event."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *, keys: Keys,
                 resource_of: Callable[[str], bytes | None], consumer: str | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.resource_of = resource_of
        self._script = redis.register_script(ANNOUNCE_LUA)
        self.announced = 0
        self.consumer = StreamConsumer(
            redis, settings, stream=keys.firings, group=ANNOUNCE_GROUP,
            handler=self.handle_batch, dead_stream=keys.dead(keys.firings), consumer=consumer,
        )

    def __repr__(self) -> str:
        return f"Announcer(announced={self.announced}, {self.consumer!r})"

    async def run(self) -> None:
        await self.consumer.run()

    def stop(self) -> None:
        self.consumer.stop()

    async def run_until_idle(self) -> int:
        return await self.consumer.run_until_idle()

    async def handle_batch(self, entries: Sequence[Entry]) -> list[Reject]:
        """One script call for the batch: its events, ``last_fired`` (for ``ls``) per
        automation, and the ack (the consumer's own ack after it finds nothing left)."""
        events: list[bytes] = []
        last_fired: dict[str, str] = {}
        for entry in entries:
            if b"firings" not in entry.fields:
                continue  # a hand-written `data` firing: nothing to announce
            try:
                items, event_raw = outbox_parts(entry.fields)
            except OutboxEntryError as exc:  # the dispatcher dead-letters it
                log.warning("outbox entry %s not announced: %s", entry.id, exc)
                continue
            related = related_of(entry.fields.get(b"event_id"))
            for item in items:
                last_fired[str(item.get("automation_id"))] = str(item.get("triggered"))
                made = announcement(item, event_raw, related,
                                    self.resource_of(str(item.get("automation_id"))))
                if made is not None:
                    events += made
        if events or last_fired:
            pairs = [part for item in last_fired.items() for part in item]
            await self._script(args=[
                self.keys.events, self.keys.last_fired, self.keys.firings, ANNOUNCE_GROUP,
                len(events) // 2, len(last_fired), *events, *pairs,
                *[entry.id for entry in entries],
            ])
            self.announced += len(events) // 2
        return []
