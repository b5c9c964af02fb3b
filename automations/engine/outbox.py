"""The outbox: a firing's wire format on the firings stream, and the
``prefect.automation.triggered``/``resolved`` event each engine firing announces.

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
``prefect.automation.triggered``/``resolved`` event, made by ``triggered_event_json``; the
announcer (``engine/announcer.py``) appends those events to the events stream, so the
per-firing copy of the triggering event stays out of the script every engine waits on.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat
from typing import Any
from uuid import UUID

import orjson

from automations.events import MAX_EVENT_BYTES, MAX_EVENT_DEPTH, RESOURCE_ID, RESOURCE_NAME, nesting
from triggers.firing import Firing
from triggers.models import EventTrigger, Trigger


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
