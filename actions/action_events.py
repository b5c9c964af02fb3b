"""``prefect.automation.action.triggered`` / ``.executed`` / ``.failed`` (reference 5.4).

Ids are derived from the idempotency key (and attempt), so a redelivered action produces
the same event ids and the engine's dedupe counts them once. Every string that goes into an
event passes through the action's ``Redactor`` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from actions.context import AutomationView
from actions.invocation import (
    Planned,
    automation_resource,
    derived_id,
    idempotency_key,
    triggering_event,
)
from actions.secrets import Redactor
from automations.events import RESOURCE_ID, RESOURCE_ROLE, Event
from triggers.firing import Firing

FOLLOWS_WINDOW = timedelta(minutes=5)

TRIGGERED = "prefect.automation.action.triggered"
EXECUTED = "prefect.automation.action.executed"
FAILED = "prefect.automation.action.failed"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One action of one firing, with ids stable across attempts and crashes."""

    automation: AutomationView
    firing: Firing
    planned: Planned
    key: str
    triggering_event: Event | None
    id: UUID
    triggered_event_id: UUID

    @property
    def action_type(self) -> str:
        return self.planned.action.type

    @property
    def index(self) -> int:
        return self.planned.index


def new_invocation(automation: AutomationView, firing: Firing, planned: Planned) -> Invocation:
    key = idempotency_key(firing.id, planned.index)
    return Invocation(automation, firing, planned, key,
                      triggering_event(automation, firing, planned),
                      derived_id(key, "invocation"), derived_id(key, "triggered"))


def _links(inv: Invocation) -> list[dict[str, str]]:
    related = []
    if inv.firing.automation_triggered_event_id:
        related.append({RESOURCE_ID: f"prefect.event.{inv.firing.automation_triggered_event_id}",
                        RESOURCE_ROLE: "automation-triggered-event"})
    if inv.triggering_event is not None:
        related.append({RESOURCE_ID: f"prefect.event.{inv.triggering_event.id}",
                        RESOURCE_ROLE: "triggering-event"})
    return related


def _payload(inv: Invocation) -> dict[str, Any]:
    return {"action_index": inv.index, "action_type": inv.action_type,
            "invocation": str(inv.id)}


def triggered(inv: Invocation) -> Event:
    follows = None
    event = inv.triggering_event
    if event is not None and abs(event.occurred - inv.firing.triggered) <= FOLLOWS_WINDOW:
        follows = event.id
    return Event(
        id=inv.triggered_event_id, occurred=inv.firing.triggered, event=TRIGGERED,
        resource=automation_resource(inv.automation), related=_links(inv),
        payload=_payload(inv), follows=follows,
    )


def outcome(
    inv: Invocation,
    *,
    now: datetime,
    attempt: int,
    details: dict[str, Any],
    related: Sequence[dict[str, str]] = (),
    reason: str | None = None,
    message: str | None = None,
    will_retry: bool = False,
    redactor: Redactor,
) -> Event:
    """``.executed`` (no ``reason``) or ``.failed``; ``payload.reason`` is the ``Reason``
    value, ``payload.message`` the readable cause, ``will_retry`` whether another attempt
    follows."""
    payload: dict[str, Any] = {**_payload(inv), **details, "attempt": attempt}
    if reason is not None:
        payload.update(reason=reason, message=message or reason, will_retry=will_retry)
    return Event(
        id=derived_id(inv.key, f"outcome:{attempt}"), occurred=now,
        event=FAILED if reason is not None else EXECUTED,
        resource=automation_resource(inv.automation),
        related=[*related, *_links(inv)],
        payload=scrub(payload, redactor),
        follows=inv.triggered_event_id,
    )


def scrub(value: Any, redactor: Redactor) -> Any:
    """``value`` as plain JSON with every secret masked (one JSON round trip: cheap and
    exhaustive; anything an executor put in its details that is not JSON becomes a string, so
    building the event after an effect can never fail)."""
    text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return orjson.loads(redactor.redact(text) if redactor else text)
