"""The ``Firing``: the only thing that crosses from triggers to actions.

The engine writes firings inside the same Lua script that changes the window (the outbox);
the dispatcher reads them. A firings-stream entry is either

- **the engine's form**: ``firings`` = a JSON list of firings without their
  ``triggering_event``, ``event`` = that event's JSON and ``event_id`` its id (both absent
  when the firings have no event). Firings caused by one event share one entry, so the ~1 KB
  event is stored once, not once per automation it fires. A composite firing's direct
  ``triggering_firings`` caused by that same event leave out their ``triggering_event`` too
  (those from earlier events carry theirs); or
- **one firing**: ``data`` = ``Firing.to_json()`` (what tools and tests write by hand).

``firings_of`` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field

from automations.events import uuid7


class TriggerState(StrEnum):
    Triggered = "Triggered"
    Resolved = "Resolved"


class Firing(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: UUID = Field(default_factory=uuid7)
    automation_id: UUID
    trigger_id: UUID
    trigger_states: list[TriggerState] = Field(default_factory=lambda: [TriggerState.Triggered])
    triggered: datetime
    triggering_labels: dict[str, str] = Field(default_factory=dict)
    triggering_event: dict[str, Any] | None = Field(
        None, description="The event JSON (reactive: the one that crossed the threshold; "
        "proactive: the bucket's last event, may be null)."
    )
    triggering_firings: list[Firing] = Field(default_factory=list)
    automation_triggered_event_id: UUID | None = Field(
        None, description="Id of the prefect.automation.triggered/resolved event of this firing."
    )

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Firing:
        return cls.model_validate_json(raw)

    def __repr__(self) -> str:
        return (
            f"Firing(id={self.id}, automation={self.automation_id}, "
            f"states={[s.value for s in self.trigger_states]}, labels={self.triggering_labels})"
        )


class OutboxEntryError(ValueError):
    """A firings-stream entry that is not a firing (the dispatcher dead-letters it)."""


def outbox_parts(fields: Mapping[bytes, bytes]) -> tuple[list[dict[str, Any]], bytes | None]:
    """The raw firings of an entry (dicts, as written) and the JSON of their shared triggering
    event (``None`` for a ``data`` entry, whose firing carries its own)."""
    raw = fields.get(b"firings")
    if raw is not None:
        items = _json(raw, "firings")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
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
