"""The announcer: publishes the ``prefect.automation.triggered``/``resolved`` event of every
engine firing (``outbox.triggered_event_json``) on the events stream. Engines read every
partition's outbox with their own consumer group (``announce``; one consumer per outbox).

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
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis

from automations.engine.outbox import (
    OutboxEntryError,
    embeddable,
    outbox_parts,
    related_of,
    triggered_event_json,
)
from automations.events import RESOURCE_NAME
from automations.keys import ANNOUNCE_GROUP, Keys
from automations.metrics import current_metrics
from automations.settings import Settings
from automations.streams.consumer import StreamConsumer, run_restarting
from automations.streams.entries import Entry, Reject

log = logging.getLogger(__name__)


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
