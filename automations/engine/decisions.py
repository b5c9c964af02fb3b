"""The decision log: per event some trigger's name matched, which automations it counted for
and which were near misses. The one module for its wire format (writer and reader).

What ``automations explain`` reads to say why an event did or did not count, and which
events counted lately for an automation. The engine notes a decision while it builds an
event's operations (``note``, from ``Engine._ops``: the name-matched steps and those left after
``resources_covered``), and sends a batch's decisions in ONE script call started beside the
window script (``write``): no extra round trip per event, and events no trigger watches by
name cost nothing. The stream ``keys.decisions`` is capped (``XADD MAXLEN ~``) at
``decision_log_maxlen`` entries; ``decision_log=false`` turns it off for maximum throughput.

One entry per event, fields:

- ``event_id``, ``event`` (name), ``occurred`` (ISO 8601), ``entry`` (its events-stream entry
  id; "" for a follower released after its batch)
- ``counted``: comma-joined ids of the automations with a trigger that took the event (name
  and resources matched: it counted, or opened a window)
- ``missed``: ids of the automations whose triggers matched the name only (near misses), at
  most ``MISSED_LISTED`` of them (with thousands of automations watching a name, listing all
  would cost Redis more than evaluating the event)
- ``missed_count``: how many near misses there were; when more than ``missed`` lists, readers
  take the others from the automations watching the event's name (``Decision.near_miss``).
  Entries written before it existed list every near miss.
- ``immediate``: ids of those among ``counted`` with a stateless trigger (Reactive, within 0,
  threshold 1), which fires on every new event it takes

The log is best effort, not part of the engine's atomic step: a failed write is logged (once
per outage) and the batch goes on. An event evaluated twice (redelivered, or held for the
event it follows) is logged twice; readers keep the newest entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from automations.connection import CONNECTION_ERRORS
from automations.engine.plan import Step
from automations.events import Event, from_micros
from automations.keys import Keys
from automations.settings import Settings
from automations.streams.entries import Entry

log = logging.getLogger(__name__)

WRITE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.exceptions.RedisError)
FIELDS = ("event_id", "event", "occurred", "entry", "counted", "missed", "missed_count",
          "immediate")
MISSED_LISTED = 10  # near-miss ids an entry lists at most
WATCHERS_CACHE = 1_000  # distinct name plans whose automation ids are remembered
Watchers = tuple[tuple[str, ...], frozenset[str]]  # a plan's automation ids: ordered, a set

# ARGV: stream, maxlen, then per entry the values of FIELDS in order.
WRITE_LUA = """
local n = #ARGV
for j = 3, n, 8 do
  redis.call('XADD', ARGV[1], 'MAXLEN', '~', ARGV[2], '*',
    'event_id', ARGV[j], 'event', ARGV[j + 1], 'occurred', ARGV[j + 2], 'entry', ARGV[j + 3],
    'counted', ARGV[j + 4], 'missed', ARGV[j + 5], 'missed_count', ARGV[j + 6],
    'immediate', ARGV[j + 7])
end
return (n - 2) / 8
"""


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision-log entry, read back."""

    log_id: str  # the entry's id in the decision log (when it was written)
    event_id: str
    event: str
    occurred: str
    entry: str  # events-stream entry id ("" when unknown)
    counted: tuple[str, ...]
    missed: tuple[str, ...]
    immediate: tuple[str, ...]
    missed_count: int = 0  # near misses, listed in ``missed`` or not

    @property
    def logged_at(self) -> datetime:
        return from_micros(int(self.log_id.partition("-")[0]) * 1000)

    @property
    def missed_all(self) -> bool:
        """Does ``missed`` list every near miss?"""
        return self.missed_count <= len(self.missed)

    def near_miss(self, automation_id: str, watches_name: bool) -> bool:
        """Did the event match this automation's trigger names but not its resources?
        ``watches_name``: the automation watches the event's name NOW, the answer for the
        near misses an entry does not list."""
        if automation_id in self.counted:
            return False
        return automation_id in self.missed or (not self.missed_all and watches_name)

    @classmethod
    def parse(cls, log_id: bytes | str, fields: Mapping[bytes, bytes]) -> Decision:
        def text(name: str) -> str:
            return fields.get(name.encode(), b"").decode()

        def ids(name: str) -> tuple[str, ...]:
            return tuple(i for i in text(name).split(",") if i)

        missed = ids("missed")
        return cls(
            log_id=log_id.decode() if isinstance(log_id, bytes) else log_id,
            event_id=text("event_id"), event=text("event"), occurred=text("occurred"),
            entry=text("entry"), counted=ids("counted"), missed=missed,
            immediate=ids("immediate"), missed_count=int(text("missed_count") or len(missed)),
        )


@dataclass(slots=True)
class _Batch:
    """The decisions noted for one batch, and its stream entries (for their ids)."""

    key: object  # held, so that its id() (the key of DecisionLog._open) stays its own
    entries: Sequence[Entry]
    values: list[str]
    entry_of: dict[bytes, str] | None = None

    def entry_id(self, event_id: str) -> str:
        if self.entry_of is None:
            self.entry_of = {e.fields.get(b"id", b""): e.id for e in self.entries}
        return self.entry_of.get(event_id.encode(), "")


class DecisionLog:
    """The engine's writer: ``begin`` a batch of stream entries, ``note`` per event,
    ``write`` once the batch is applied (beside its window script calls). Several batches
    may be open at once (one matched ahead while another is applied): each is its own key.
    Notes without a begun batch (followers released while a batch is applied, or by the
    lost-follower release) go out with the next batch written."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
        self.stream = keys.decisions
        self.maxlen = settings.decision_log_maxlen
        self._script = redis.register_script(WRITE_LUA)
        self._open: dict[int, _Batch] = {}  # id(batch key) -> its notes
        self._late: list[str] = []  # notes of no begun batch
        self._failing = False
        self._watchers: dict[int, tuple[Sequence[Step], Watchers]] = {}  # by id(plan steps)
        self.written = 0

    def __repr__(self) -> str:
        return f"DecisionLog(stream={self.stream!r}, maxlen={self.maxlen}, written={self.written})"

    def begin(self, batch: object, entries: Sequence[Entry]) -> None:
        """Open ``batch`` (any object, its key) with its stream entries (their ids are looked
        up lazily)."""
        self._open[id(batch)] = _Batch(batch, entries, [])

    def discard(self, batch: object) -> None:
        """Forget ``batch``'s notes: it will not be applied as matched (read again later)."""
        self._open.pop(id(batch), None)

    def note(self, batch: object | None, event: Event, watching: Sequence[Step],
             kept: Sequence[Step], event_id: str | None = None) -> None:
        """One event of ``batch`` (None: of no begun batch): ``watching`` matched its name,
        ``kept`` its resources too (``event_id``: its id's text, when the caller has it)."""
        if not watching:
            return
        counted: dict[str, None] = {}
        immediate: dict[str, None] = {}
        for step in kept:  # one plain loop: this runs for every watched event
            spec = step.spec
            counted[spec.automation_id] = None
            if spec.fires_at_once:
                immediate[spec.automation_id] = None
        missed, missed_count = self._missed(watching, counted)
        event_id = event_id or str(event.id)
        found = self._open.get(id(batch)) if batch is not None else None
        if found is None and batch is not None:
            found = self._open[id(batch)] = _Batch(batch, (), [])
        values = found.values if found is not None else self._late
        values.extend((event_id, event.event, event.occurred.isoformat(),
                       found.entry_id(event_id) if found is not None else "",
                       ",".join(counted), missed, str(missed_count), ",".join(immediate)))

    def _missed(self, watching: Sequence[Step], counted: Collection[str]) -> tuple[str, int]:
        """The near misses: the first ``MISSED_LISTED`` ids (comma-joined) and how many
        (the watching automations less the counted ones: no walk over all of them)."""
        watchers, distinct = self._automations(watching)
        missed_count = len(watchers) - sum(1 for aid in counted if aid in distinct)
        if not missed_count:
            return "", 0
        listed: list[str] = []
        for aid in watchers:  # stops after MISSED_LISTED + len(counted) ids at most
            if aid not in counted:
                listed.append(aid)
                if len(listed) == MISSED_LISTED:
                    break
        return ",".join(listed), missed_count

    def _automations(self, watching: Sequence[Step]) -> Watchers:
        """The distinct automation ids of a name plan's steps, in order and as a set
        (computed once per plan)."""
        found = self._watchers.get(id(watching))
        if found is not None and found[0] is watching:
            return found[1]
        if len(self._watchers) >= WATCHERS_CACHE:
            self._watchers.clear()
        ids = tuple(dict.fromkeys(s.spec.automation_id for s in watching))
        watchers = (ids, frozenset(ids))
        self._watchers[id(watching)] = (watching, watchers)
        return watchers

    def write(self, batch: object) -> asyncio.Task[None] | None:
        """Send ``batch``'s decisions, and the notes of no batch made since the last write
        (a task started now, beside its window script calls); ``None`` when there are none."""
        found = self._open.pop(id(batch), None)
        values = found.values if found is not None else []
        if self._late:
            values, self._late = values + self._late, []
        if not values:
            return None
        return asyncio.ensure_future(self._send(values))

    async def _send(self, values: list[str]) -> None:
        try:
            await self._script(keys=[self.stream], args=[self.stream, self.maxlen, *values])
        except WRITE_ERRORS as exc:
            if not self._failing:
                log.warning("decision log: entries not written (%s); explain will not show "
                            "them", exc)
            self._failing = True
            return
        if self._failing:
            log.info("decision log: writing again")
            self._failing = False
        self.written += len(values) // len(FIELDS)


async def read_back(
    redis: aioredis.Redis, keys: Keys, *, scan: int, chunk: int = 1000
) -> AsyncIterator[Decision]:
    """The decision log newest first, ``chunk`` entries a call, at most ``scan`` entries."""
    end = "+"
    left = scan
    while left > 0:
        entries: Any = await redis.xrevrange(keys.decisions, max=end, count=min(chunk, left))
        if not entries:
            return
        for log_id, fields in entries:
            yield Decision.parse(log_id, fields)
        left -= len(entries)
        end = "(" + entries[-1][0].decode()
