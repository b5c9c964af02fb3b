"""Intake: stream entries to ``Incoming`` events, with the limits and checks every entry
passes before evaluation.

The pydantic ``Event`` is built only for events some trigger may care about (their name is
in the index); others get a light check of the fields ordering and dedupe need (id,
occurred, event, resource id, follows). Anything invalid becomes a ``Reject`` (dead-lettered
with the reason). A batch's repeats of an id are dropped here; the authoritative dedupe is
in Redis, in the engine's scripts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import orjson

from automations.errors import EventTooLarge, InvalidEvent
from automations.events import (
    EPOCH,
    MAX_EVENT_BYTES,
    MAX_EVENT_DEPTH,
    RESOURCE_ID,
    TOO_DEEP,
    Event,
    micros,
    nesting,
    to_us,
)
from automations.settings import Settings
from automations.streams.entries import Entry, Reject

SKIPPED_EVENTS = frozenset({"prefect.log.write"})

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_canonical = CANONICAL_UUID.fullmatch
ONE_US = timedelta(microseconds=1)
_NONE: dict[str, Any] = {}  # defaults of the light check (never changed)
_NO_RELATED: list[Any] = []


class NameIndex(Protocol):
    """What decoding asks of an index: the triggers an event name may interest
    (``TriggerIndex`` or the engine's ``Planner``)."""

    def candidates(self, event_name: str, /) -> Sized: ...


@dataclass(slots=True)
class Incoming:
    """A decoded event on its way through one batch."""

    id: str
    name: str
    occurred_us: int
    follows: str | None
    raw: bytes
    event: Event | None  # built only when a trigger may be interested
    waits: bool = True  # may be held for its leader
    entry: str = ""  # its events-stream entry id, kept for a follower that may wait

    def __repr__(self) -> str:
        return f"Incoming({self.name} id={self.id} follows={self.follows})"


def _micros(value: Any) -> int:
    """``occurred`` in engine microseconds (``events.micros``, exact), a naive time read as
    UTC. One timedelta division instead of the model's datetime validation."""
    moment = datetime.fromisoformat(value)  # TypeError when not a string
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // ONE_US


def _uuid(value: Any) -> str:
    """The canonical text of a UUID (a regex check is cheaper than ``UUID()`` for the usual
    lowercase form)."""
    if isinstance(value, str) and _canonical(value):
        return value
    return str(UUID(value))


def _light(data: dict[str, Any], name: str, raw: bytes) -> Incoming:
    """The fields ordering and dedupe need, without building the model (``decode_event``
    falls back to the model on any error, for its precise message)."""
    resource = data["resource"]
    if not name or not isinstance(resource, dict):
        raise ValueError("bad event or resource")
    resource_id = resource.get(RESOURCE_ID)
    if not resource_id or not isinstance(resource_id, str):
        raise ValueError("bad resource id")
    if not isinstance(data.get("payload", _NONE), dict):
        raise ValueError("bad payload")
    if not isinstance(data.get("related", _NO_RELATED), list):
        raise ValueError("bad related")
    follows = data.get("follows")
    return Incoming(_uuid(data["id"]), name, _micros(data["occurred"]),
                    _uuid(follows) if follows else None, raw, None)


def _parse(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object within the size and depth limits (``InvalidEvent`` says why
    not). The depth limit holds for every event, watched or not: counting brackets bounds the
    depth, so the usual event is not walked."""
    if len(raw) > MAX_EVENT_BYTES:  # a raw XADD bypasses the publishers' size check
        raise EventTooLarge(f"event is {len(raw)} bytes; at most {MAX_EVENT_BYTES} are allowed")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise InvalidEvent(TOO_DEEP) from None
        raise InvalidEvent(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidEvent("an event must be a JSON object")
    if (raw.count(b"{") + raw.count(b"[") > MAX_EVENT_DEPTH
            and nesting(data, MAX_EVENT_DEPTH) > MAX_EVENT_DEPTH):
        raise InvalidEvent(TOO_DEEP)
    return data


def _model(data: dict[str, Any], raw: bytes) -> Incoming:
    for required in ("id", "occurred"):
        if required not in data:
            raise InvalidEvent(f"{required}: required on the stream (emit() sets it)")
    event = Event.parse(data, depth_checked=True)  # ``_parse`` bounded the depth
    return Incoming(
        id=_text(data["id"], event.id), name=event.event, occurred_us=micros(event.occurred),
        follows=_text(data.get("follows"), event.follows) if event.follows else None, raw=raw,
        event=event,
    )


def _text(value: Any, parsed: UUID) -> str:
    """A UUID's canonical text: the JSON's own when it is canonical already (the usual case,
    cheaper than ``UUID.__str__``), else the model's."""
    if isinstance(value, str) and _canonical(value):
        return value
    return str(parsed)


def decode_event(raw: bytes, index: NameIndex) -> Incoming:
    """Decode one payload; raise ``InvalidEvent`` with the precise reason."""
    data = _parse(raw)
    name = data.get("event")
    if isinstance(name, str) and name not in SKIPPED_EVENTS and not index.candidates(name):
        try:
            return _light(data, name, raw)
        except (KeyError, ValueError, TypeError, AttributeError):
            pass  # the model gives the precise message (or accepts an unusual valid form)
    return _model(data, raw)


class Intake:
    """One engine's decoding: ``decode_event``'s checks, the clock-skew bound
    (``max_future_s``) and whether each event may wait for its leader (``waits``)."""

    def __init__(
        self, index: NameIndex, settings: Settings, waits: Callable[[str, datetime], bool]
    ) -> None:
        self.index = index
        self.max_future_s = settings.max_future_s
        self._max_future_us = to_us(settings.max_future_s)
        self.waits = waits

    def __repr__(self) -> str:
        return f"Intake(max_future={self.max_future_s:g}s)"

    def decode(
        self, entries: Sequence[Entry], now: datetime
    ) -> tuple[list[Incoming], list[Reject]]:
        incoming: list[Incoming] = []
        rejects: list[Reject] = []
        waits, index = self.waits, self.index
        horizon = micros(now) + self._max_future_us
        for entry in entries:
            raw = entry.fields.get(b"data")
            if raw is None:
                rejects.append(Reject(entry, "stream entry has no 'data' field"))
                continue
            try:
                item = decode_event(raw, index)
            except InvalidEvent as exc:
                rejects.append(Reject(entry, f"invalid event: {exc}"))
                continue
            if item.occurred_us > horizon:
                rejects.append(Reject(entry, self._too_far_ahead(item, now)))
                continue
            # Only a follower may be held; the others need not ask (it costs ~0.5 us).
            item.waits = bool(item.follows) and waits(entry.id, now)
            if item.waits:
                item.entry = entry.id
            incoming.append(item)
        return incoming, rejects

    def _too_far_ahead(self, item: Incoming, now: datetime) -> str:
        ahead = (item.occurred_us - micros(now)) / 1_000_000
        return (
            f"invalid event: occurred is {ahead:,.0f} s ahead of the engine's clock "
            f"(more than AUTOMATIONS_MAX_FUTURE_S={self.max_future_s:g}); "
            "check the producer's clock"
        )


class BatchSource:
    """A batch's stream entries, decoded and deduplicated by id (the rejects kept apart)."""

    def __init__(self, intake: Intake, entries: Sequence[Entry], now: datetime) -> None:
        self._intake = intake
        self.entries = entries
        self.now = now
        self.rejects: list[Reject] = []

    def decode(self) -> list[Incoming]:
        """Every valid event of the batch, each id once, in stream order."""
        decoded, self.rejects = self._intake.decode(self.entries, self.now)
        return self._first_of_each(decoded)

    async def decode_yielding(self, every: int) -> list[Incoming]:
        """``decode``, giving the event loop a turn after every ``every`` entries (a batch
        decoded ahead must not hold up the one waiting for its Redis replies)."""
        decoded: list[Incoming] = []
        rejects: list[Reject] = []
        for start in range(0, len(self.entries), every):
            items, bad = self._intake.decode(self.entries[start:start + every], self.now)
            decoded += items
            rejects += bad
            await asyncio.sleep(0)
        self.rejects = rejects
        return self._first_of_each(decoded)

    @staticmethod
    def _first_of_each(decoded: list[Incoming]) -> list[Incoming]:
        seen: set[str] = set()
        items: list[Incoming] = []
        for item in decoded:
            if item.id not in seen:
                seen.add(item.id)
                items.append(item)
        return items
