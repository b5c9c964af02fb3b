"""The outbox: a firing's wire format on the firings stream, its triggered event, and the
announcer that publishes that event.

A firings-stream entry is either

- **the engine's form**: ``firings`` = a JSON list of firings without their
  ``triggering_event``, ``event`` = that event's JSON and ``event_id`` its id (both absent
  when the firings have no event). Firings caused by one event share one entry, so the ~1 KB
  event is stored once, not once per automation it fires. A composite firing's direct
  ``triggering_firings`` caused by that same event leave out their ``triggering_event`` too
  (those from earlier events carry theirs). The window script writes these entries
  (``lua/common.lua``: ``firing_json``, ``publish``) in the shape ``ready_firing_json`` below
  builds for the firings the engine writes itself; or
- **one firing**: ``data`` = ``Firing.to_json()`` (what tools and tests write by hand).

``firings_of`` reads both. Each engine firing names the id of its
``prefect.automation.triggered``/``resolved`` event (``triggered_event_json``); engines read
every partition's outbox with their own consumer group (``announce``; one consumer per outbox)
and append those events to the events stream, so the per-firing copy of the triggering event
stays out of the script every engine waits on.

Once: script calls (one per ``CHUNK_BYTES`` or so of a batch's events, never splitting an
entry's) append its events and record ``last_fired`` (global keys, one slot), then XACK
acknowledges the batch on its outbox (the partition's slot: one script cannot touch both on
Redis Cluster). A crash before a call announces nothing of its entries (the batch is
redelivered). A crash after one, or an entry taken over from a live but stalled announcer
(idle past ``claim_idle_ms``), runs the script again for the same entries: each outbox entry
announced is remembered (``keys.announced``: a set per time slice of ``dedupe_ttl_s / 2``, the
current and the previous one looked at), and an entry found there appends nothing, so each
event is on the stream once (past that the engine's dedupe would still skip a repeat).
Firings written by hand as ``data`` entries are dispatched but not announced: they did not
come from an engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from itertools import repeat
from typing import Any
from uuid import UUID

import anyio
import orjson
import redis.asyncio as aioredis

from automations.events import MAX_EVENT_BYTES, MAX_EVENT_DEPTH, RESOURCE_ID, RESOURCE_NAME, nesting
from automations.keys import ANNOUNCE_GROUP, Keys
from automations.metrics import current_metrics
from automations.settings import Settings
from automations.streams.consumer import Entry, Reject, StreamConsumer, run_restarting
from triggers.firing import Firing
from triggers.models import EventTrigger, Trigger

log = logging.getLogger(__name__)


def automation_resource(
    automation_id: UUID, name: str, trigger: Trigger, *, trigger_type: bool = False
) -> dict[str, str]:
    """The resource of an automation's events: id, name and, for event triggers, posture
    (reference 3.13); action events add ``prefect.trigger-type`` (reference 5.4)."""
    resource = {RESOURCE_ID: f"prefect.automation.{automation_id}", RESOURCE_NAME: name}
    if trigger_type:
        resource["prefect.trigger-type"] = trigger.type
    if isinstance(trigger, EventTrigger):
        resource["prefect.posture"] = trigger.posture.value
    return resource


def ready_firing_json(
    firing_id: str, ids_json: str, triggered: str, labels_json: str, event_id: str
) -> str:
    """A Triggered top-level firing in the engine's form (no ``triggering_event``: the
    entry's). ``ids_json`` holds its ``automation_id`` and ``trigger_id`` fields."""
    return (
        f'{{"id":"{firing_id}",{ids_json},"trigger_states":["Triggered"],'
        f'"triggered":"{triggered}","triggering_labels":{labels_json},'
        f'"triggering_firings":[],"automation_triggered_event_id":"{event_id}"}}'
    )


class OutboxEntryError(ValueError):
    """A firings-stream entry that is not a firing (the dispatcher dead-letters it)."""


def outbox_parts(fields: Mapping[bytes, bytes]) -> tuple[list[dict[str, Any]], bytes | None]:
    """The raw firings of an entry (dicts, as written) and the JSON of their shared triggering
    event (``None`` for a ``data`` entry, whose firing carries its own)."""
    raw = fields.get(b"firings")
    if raw is not None:
        items = _json(raw, "firings")
        if not isinstance(items, list) or not all(map(isinstance, items, repeat(dict))):
            raise OutboxEntryError("invalid firing: 'firings' is not a JSON list of objects")
        return items, fields.get(b"event")
    data = fields.get(b"data")
    if data is None:
        raise OutboxEntryError("firing entry has no 'firings' or 'data' field")
    item = _json(data, "data")
    if not isinstance(item, dict):
        raise OutboxEntryError("invalid firing: 'data' is not a JSON object")
    return [item], None


def _json(raw: bytes, name: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OutboxEntryError(f"invalid firing: {name!r} is not JSON: {exc}") from None


def firings_of(fields: Mapping[bytes, bytes]) -> list[Firing]:
    """Every firing of one firings-stream entry, with its triggering event filled in.

    Raises ``OutboxEntryError`` for an entry that is not one, pydantic's ``ValidationError``
    for a firing that does not validate."""
    return [Firing.model_validate(item) for item in firing_dicts(fields)]


def firing_dicts(fields: Mapping[bytes, bytes]) -> list[dict[str, Any]]:
    """``firings_of`` without the validation: the firings as JSON dicts."""
    items, event_raw = outbox_parts(fields)
    if event_raw is not None:
        event = _json(event_raw, "event")
        for item in items:
            _with_event(item, event)
    return items


def firing_count(fields: Mapping[bytes, bytes]) -> int:
    """How many firings an entry holds (decoding only the list, not the event)."""
    return len(outbox_parts(fields)[0])


def _with_event(firing: dict[str, Any], event: Any) -> None:
    """Fill in the entry's event where the engine's short form leaves it out: the firing's own
    and that of its direct child firings without one."""
    firing["triggering_event"] = event
    for child in firing.get("triggering_firings") or ():
        if isinstance(child, dict) and "triggering_event" not in child:
            child["triggering_event"] = event


EVENT_NAMES = {"Triggered": b"prefect.automation.triggered",
               "Resolved": b"prefect.automation.resolved"}
TRIGGERED = EVENT_NAMES["Triggered"]


def related_of(event_id: bytes | None) -> bytes:
    """The ``related`` list of an announcement: the triggering event, when there is one."""
    if not event_id:
        return b"[]"
    return orjson.dumps([{"prefect.resource.id": f"prefect.event.{event_id.decode()}",
                          "prefect.resource.role": "triggering-event"}])


EMBEDDED_DEPTH = MAX_EVENT_DEPTH - 2
"""An announcement holds its triggering event at level 3 (announcement, payload, event)."""
SUMMARY_KEYS = ("id", "occurred", "event", "resource", "related")


def embeddable(event_raw: bytes | None) -> tuple[bytes | None, bool]:
    """The triggering event as an announcement can hold it within the event limits, and
    whether it had to be cut down: an accepted event just under the size or depth limit would
    otherwise make an announcement the engine refuses. A cut event keeps its identity and
    labels (``SUMMARY_KEYS``) without its payload. Counting brackets bounds the depth, so the
    usual event is never parsed here."""
    if event_raw is None:
        return None, False
    size_ok = len(event_raw) <= MAX_EVENT_BYTES - 64 * 1024
    if size_ok and event_raw.count(b"{") + event_raw.count(b"[") <= EMBEDDED_DEPTH:
        return event_raw, False
    try:
        event = orjson.loads(event_raw)
    except orjson.JSONDecodeError:
        return None, True
    if not isinstance(event, dict):
        return None, True
    if size_ok and nesting(event, EMBEDDED_DEPTH) <= EMBEDDED_DEPTH:
        return event_raw, False
    summary = {key: event[key] for key in SUMMARY_KEYS if key in event}
    summary["payload"] = {}
    raw = orjson.dumps(summary)
    if len(raw) > MAX_EVENT_BYTES // 2:
        raw = orjson.dumps({key: event.get(key) for key in ("id", "occurred", "event")})
    return raw, True


def triggered_event_json(
    firing: dict[str, Any], event_raw: bytes | None, related: bytes, resource: bytes | None,
    *, cut: bool = False,
) -> tuple[bytes, bytes] | None:
    """``(event id, event JSON)`` of the ``prefect.automation.triggered``/``resolved`` event
    (reference 3.13) of one firing (``None`` if it names no event id).
    ``resource``: the automation's (id, name, posture); only its id when it is unknown here
    (deleted since it fired). ``event_raw`` comes through ``embeddable``; ``cut`` says it was
    cut down, which the payload's ``triggering_event_truncated`` tells readers."""
    event_id = firing.get("automation_triggered_event_id")
    if not isinstance(event_id, str):
        return None
    states = firing.get("trigger_states")
    name = EVENT_NAMES.get(states[0], TRIGGERED) if states else TRIGGERED
    if resource is None:
        resource = orjson.dumps(
            {"prefect.resource.id": f"prefect.automation.{firing.get('automation_id')}"})
    labels = firing.get("triggering_labels")
    data = b"".join((
        b'{"id":', orjson.dumps(event_id), b',"occurred":', orjson.dumps(firing.get("triggered")),
        b',"event":"', name, b'","resource":', resource,
        b',"related":', related,
        b',"payload":{"triggering_labels":', orjson.dumps(labels) if labels else b"{}",
        b',"triggering_event":', event_raw if event_raw is not None else b"null",
        b',"triggering_event_truncated":true},"follows":null}' if cut else b'},"follows":null}',
    ))
    return event_id.encode(), data


# KEYS: events stream, last_fired hash, the announced-entries sets of this slice and the one
# before. ARGV: seconds a set lives, #entries, then per entry: its key, #events, (event id,
# JSON) pairs; then (automation id, ISO) pairs. An entry already in either set (announced
# before its ack was lost) appends nothing. Returns how many events it appended.
ANNOUNCE_LUA = """
local ne = tonumber(ARGV[2])
local at, added = 3, 0
for _ = 1, ne do
  local key, n = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local fresh = redis.call('SISMEMBER', KEYS[4], key) == 0
    and redis.call('SADD', KEYS[3], key) == 1
  if fresh then
    for k = at, at + 2 * n - 1, 2 do
      redis.call('XADD', KEYS[1], '*', 'data', ARGV[k + 1], 'id', ARGV[k])
    end
    added = added + n
  end
  at = at + 2 * n
end
if ne > 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
for j = at, #ARGV, 1000 do  -- (unpack has a limit: 500 pairs a call)
  redis.call('HSET', KEYS[2], unpack(ARGV, j, math.min(j + 999, #ARGV)))
end
return added
"""
ACK_CHUNK = 10_000
CHUNK_BYTES = 1 << 20
"""About this many bytes of events a script call. A batch's in one call (10 MB and more for
1,000 entries that each fire several automations) cost 3-4x as much to pack per event (a fresh
10 MB buffer, its pages faulted in), and no less in Redis."""
SLICES = 2  # an announced-entries set lives two slices of dedupe_ttl_s / 2


class Announcer:
    """Consumes every partition's outbox (group ``announce``, one consumer each) and
    publishes every engine firing's event."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *, keys: Keys,
                 resource_of: Callable[[str], bytes | None], consumer: str | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.resource_of = resource_of
        self._slice_s = max(1, settings.dedupe_ttl_s // 2)
        self._script = redis.register_script(ANNOUNCE_LUA)
        self.announced = 0
        self.metrics = current_metrics()
        self._names: dict[str, tuple[bytes | None, str]] = {}  # id -> (resource, name)
        self._stopping = anyio.Event()
        self.consumers = [
            StreamConsumer(
                redis, settings, stream=outbox, group=ANNOUNCE_GROUP,
                handler=partial(self.handle_batch, outbox=outbox),
                dead_stream=keys.dead(outbox), consumer=consumer,
                maxlen=settings.firings_maxlen, handler_acks=True,
            )
            for outbox in keys.outboxes
        ]

    def __repr__(self) -> str:
        return f"Announcer(announced={self.announced}, {self.consumers!r})"

    async def run(self) -> None:
        """Every outbox's consumer until ``stop()``; one that fails is restarted alone."""
        async with anyio.create_task_group() as tg:
            for consumer in self.consumers:
                tg.start_soon(run_restarting, consumer, self._stopping)

    def stop(self) -> None:
        self._stopping.set()
        for consumer in self.consumers:
            consumer.stop()

    async def run_until_idle(self) -> int:
        """Drain every outbox; returns the entries handled."""
        handled = 0
        for consumer in self.consumers:
            handled += await consumer.run_until_idle()
        return handled

    async def handle_batch(self, entries: Sequence[Entry], *, outbox: str | None = None
                           ) -> list[Reject]:
        """Script calls for the batch's events, the entries cut into calls of about
        ``CHUNK_BYTES`` (an entry's events are never split: each call stays once-only on its
        own), the last also setting ``last_fired`` (for ``ls``) per automation; then the ack
        of every entry on ``outbox`` (the partition's outbox they were read from; the
        consumer does not ack them again)."""
        outbox = self._outbox(outbox)
        fired: dict[str, int] = {}
        last_fired: dict[str, str] = {}
        call: list[bytes | str | int] = []
        in_call = size = 0
        try:
            for entry in entries:
                made = self._entry_events(entry, fired, last_fired)
                if not made:
                    continue
                call += (f"{outbox}:{entry.id}", len(made) // 2, *made)
                in_call += 1
                size += sum(map(len, made))
                if size >= CHUNK_BYTES:
                    await self._announce(in_call, call, [])
                    call, in_call, size = [], 0, 0
            pairs = [part for item in last_fired.items() for part in item]
            if call or pairs:
                await self._announce(in_call, call, pairs)
        finally:  # what was logged is counted, even when a call failed
            for name, count in fired.items():
                self.metrics.fired(name, count)
        await self._ack(outbox, [entry.id for entry in entries])
        return []

    def _entry_events(self, entry: Entry, fired: dict[str, int], last_fired: dict[str, str]
                      ) -> list[bytes]:
        """The (event id, event JSON) pairs of an entry's firings, flat; each firing counted
        in ``fired`` (per automation name), logged and noted in ``last_fired``."""
        if b"firings" not in entry.fields:
            return []  # a hand-written `data` firing: nothing to announce
        try:
            items, event_raw = outbox_parts(entry.fields)
        except OutboxEntryError as exc:  # the dispatcher dead-letters it
            log.warning("outbox entry %s not announced: %s", entry.id, exc)
            return []
        event_id = entry.fields.get(b"event_id")
        related = related_of(event_id)
        self._observe_latency(entry, items, event_raw)
        event_raw, cut = embeddable(event_raw)
        logged = log.isEnabledFor(logging.INFO)  # else the lines are not even built
        triggering = (event_id or b"").decode(errors="replace") or None
        made: list[bytes] = []
        for item in items:
            automation_id = str(item.get("automation_id"))
            resource, name = self._automation(automation_id)
            fired[name] = fired.get(name, 0) + 1
            if logged:
                _log_fired(item, name, automation_id, triggering)
            last_fired[automation_id] = str(item.get("triggered"))
            event = triggered_event_json(item, event_raw, related, resource, cut=cut)
            if event is not None:
                made += event
        return made

    async def _announce(self, entries: int, events: list[bytes | str | int], pairs: list[str]
                        ) -> None:
        """One script call: ``events`` holds (key, #events, event pairs) per entry."""
        added = await self._script(
            keys=[self.keys.events, self.keys.last_fired, *self._slices()],
            args=[SLICES * self._slice_s, entries, *events, *pairs])
        self.announced += int(added)

    def _slices(self) -> tuple[str, str]:
        """The announced-entries sets of the current time slice and the one before."""
        current = int(time.time()) // self._slice_s
        return self.keys.announced(current), self.keys.announced(current - 1)

    def _outbox(self, outbox: str | None) -> str:
        if outbox is None:
            if len(self.consumers) != 1:
                raise ValueError("handle_batch needs the outbox its entries came from")
            outbox = self.consumers[0].stream
        return outbox

    async def _ack(self, outbox: str, ids: list[str]) -> None:
        """Acknowledge the batch on its outbox (chunked: a batch can be large)."""
        for first in range(0, len(ids), ACK_CHUNK):
            await self.redis.xack(outbox, ANNOUNCE_GROUP, *ids[first:first + ACK_CHUNK])

    def _observe_latency(self, entry: Entry, items: list[dict[str, Any]],
                         event_raw: bytes | None) -> None:
        """From the event's ``occurred`` to the entry's time in the outbox, once per entry."""
        if event_raw is not None and items:
            occurred = occurred_s(event_raw)
            if occurred is not None:
                self.metrics.event_fired(int(entry.id.partition("-")[0]) / 1000 - occurred)

    def _automation(self, automation_id: str) -> tuple[bytes | None, str]:
        """The automation's resource (``None`` when it is unknown here) and name (its id
        then), the name parsed once per version of its resource; bounded by the number of
        automations."""
        resource = self.resource_of(automation_id)
        cached = self._names.get(automation_id)
        if cached is not None and cached[0] is resource:
            return cached
        name = automation_id
        if resource is not None:
            found = orjson.loads(resource).get(RESOURCE_NAME)
            name = found if isinstance(found, str) and found else automation_id
        made = self._names[automation_id] = (resource, name)
        return made


def _log_fired(item: dict[str, Any], name: str, automation_id: str, event_id: str | None
               ) -> None:
    """A firing's INFO line, with its ids as ``extra`` fields."""
    state = (item.get("trigger_states") or ["Triggered"])[0]
    log.info("automation %r (%s) fired: firing %s, %s, event %s", name, automation_id,
             item.get("id"), state, event_id,
             extra={"automation": name, "automation_id": automation_id,
                    "firing_id": item.get("id"), "event_id": event_id, "state": state})


OCCURRED = b'"occurred":"'


def occurred_s(event_raw: bytes) -> float | None:
    """An event's ``occurred`` as a POSIX time, without decoding the whole event (None when
    it cannot be read)."""
    at = event_raw.find(OCCURRED)
    try:
        if at >= 0:
            start = at + len(OCCURRED)
            text = event_raw[start:event_raw.index(b'"', start)].decode()
        else:
            found = orjson.loads(event_raw).get("occurred")
            if not isinstance(found, str):
                return None
            text = found
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, AttributeError):
        return None
