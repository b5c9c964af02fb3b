"""From a firing to the actions to run (reference sections 3.13, 5.2 and 5.4): the plan, each
action's triggering event, templates' context, target inference, and the action events
``prefect.automation.action.triggered`` / ``.executed`` / ``.failed``.

Pure functions of the firing and the automation (plus ports for lazily loaded template
objects); the dispatcher owns the I/O. Ids are derived from the idempotency key (and
attempt), so a redelivered action produces the same event ids and the engine's dedupe counts
them once. Every string that goes into an event passes through the action's ``Redactor``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from actions.models import Action
from actions.secrets import Redactor
from actions.templating import LAZY_NAMES, EventView, Loader, ResourceView
from automations.dispatch.ports import AutomationView, Ports
from automations.engine.outbox import (
    automation_resource,
    embeddable,
    related_of,
    triggered_event_json,
)
from automations.events import RESOURCE_ID, RESOURCE_ROLE, Event
from triggers.firing import Firing, TriggerState

NAMESPACE = UUID("5b0c5f43-4a5e-4d52-9d58-7e5f2b1a0c11")
"""Namespace of the deterministic ids below: a redelivered action reuses its invocation and
``action.triggered`` ids, so the engine's event dedupe drops the copy."""


@dataclass(frozen=True, slots=True)
class Planned:
    """One action of a firing: its running index over the concatenated lists and the state
    (``Triggered``/``Resolved``) whose state event it sees as ``event`` when it comes from
    ``actions_on_trigger``/``actions_on_resolve`` (None for ``actions``)."""

    index: int
    action: Action
    state: TriggerState | None


def plan_actions(automation: AutomationView, firing: Firing) -> list[Planned]:
    """``actions`` for every firing, then ``actions_on_trigger`` if Triggered, then
    ``actions_on_resolve`` if Resolved; one running index over the concatenation."""
    lists: list[tuple[list[Action], TriggerState | None]] = [(list(automation.actions), None)]
    if TriggerState.Triggered in firing.trigger_states:
        lists.append((list(automation.actions_on_trigger), TriggerState.Triggered))
    if TriggerState.Resolved in firing.trigger_states:
        lists.append((list(automation.actions_on_resolve), TriggerState.Resolved))
    planned: list[Planned] = []
    for actions, state in lists:
        start = len(planned)  # read once: extend() grows the list while the generator runs
        planned.extend(Planned(start + i, a, state) for i, a in enumerate(actions))
    return planned


def idempotency_key(firing_id: UUID, index: int) -> str:
    return f"{firing_id}:{index}"


def derived_id(key: str, purpose: str) -> UUID:
    return uuid.uuid5(NAMESPACE, f"{key}:{purpose}")


def _resource(automation: AutomationView) -> dict[str, str]:
    return automation_resource(automation.id, automation.name, automation.trigger,
                               trigger_type=True)


def state_event(automation: AutomationView, firing: Firing, state: TriggerState) -> Event:
    """The ``prefect.automation.triggered``/``.resolved`` event of the firing, exactly as the
    announcer publishes it (one builder: ``outbox.triggered_event_json``), for
    ``actions_on_trigger``/``actions_on_resolve``."""
    triggering = firing.triggering_event
    event_id = firing.automation_triggered_event_id or derived_id(str(firing.id), state.value)
    shape = {"automation_triggered_event_id": str(event_id), "trigger_states": [state.value],
             "triggered": firing.model_dump(mode="json")["triggered"],
             "triggering_labels": firing.triggering_labels}
    leader = triggering.get("id") if triggering else None
    raw, cut = embeddable(orjson.dumps(triggering) if triggering is not None else None)
    made = triggered_event_json(
        shape, raw, related_of(str(leader).encode() if leader else None),
        orjson.dumps(automation_resource(automation.id, automation.name, automation.trigger)),
        cut=cut)
    assert made is not None  # the shape names its event id
    return Event.model_validate_json(made[1])


def triggering_event(automation: AutomationView, firing: Firing, planned: Planned) -> Event | None:
    if planned.state is not None:
        return state_event(automation, firing, planned.state)
    if firing.triggering_event is None:
        return None
    return Event.model_validate(firing.triggering_event)


def event_view(event: Event | None) -> EventView | None:
    if event is None:
        return None
    return EventView(
        id=event.id, occurred=event.occurred, event=event.event,
        resource=ResourceView(event.resource), related=[ResourceView(r) for r in event.related],
        payload=event.payload, follows=event.follows,
    )


def all_firings(firing: Firing) -> list[Firing]:
    """The firing and every nested child firing, depth first."""
    found = [firing]
    for child in firing.triggering_firings:
        found.extend(all_firings(child))
    return found


def infer_id(
    event: Event | None, kind: str, labels: Mapping[str, str] | None = None
) -> UUID | None:
    """The first ``<kind>.<uuid>`` resource: ``labels['prefect.resource.id']`` first (proactive
    firings without an event), then the event's resource, then its related resources."""
    candidates = []
    if labels and labels.get(RESOURCE_ID):
        candidates.append(labels[RESOURCE_ID])
    if event is not None:
        candidates.append(event.resource.get(RESOURCE_ID, ""))
        candidates.extend(r.get(RESOURCE_ID, "") for r in event.related)
    for resource_id in candidates:
        prefix, _, last = resource_id.rpartition(".")
        if prefix == kind:
            try:
                return UUID(last)
            except ValueError:
                continue
    return None


def template_context(
    automation: AutomationView, firing: Firing, event: Event | None, ports: Ports
) -> tuple[dict[str, Any], dict[str, Loader]]:
    """The context (``automation``, ``event``, ``labels``, ``firing``, ``firings``) and lazy
    loaders for ``flow_run``/``deployment``/``flow`` when the runtime's ports can find them."""
    firings = all_firings(firing)
    context: dict[str, Any] = {
        "automation": automation,
        "event": event_view(event),
        "labels": dict(firing.triggering_labels),
        "firing": firing,
        "firings": firings,
        "events": [f.triggering_event for f in firings if f.triggering_event],
    }
    for name in LAZY_NAMES:
        context[name] = None
    return context, _loaders(event, firing, ports)


def _loaders(event: Event | None, firing: Firing, ports: Ports) -> dict[str, Loader]:
    loaders: dict[str, Loader] = {}
    flow_run_id = infer_id(event, "prefect.flow-run", firing.triggering_labels)
    deployment_id = infer_id(event, "prefect.deployment")
    flow_runs, deployments = ports.flow_runs, ports.deployments
    if flow_runs is not None and flow_run_id is not None:
        async def load_flow_run() -> Any:
            return await flow_runs.get(flow_run_id)
        loaders["flow_run"] = load_flow_run
    if deployments is not None and deployment_id is not None:
        async def load_deployment() -> Any:
            return await deployments.get(deployment_id)
        loaders["deployment"] = load_deployment
    flow = _related_of_kind(event, "prefect.flow")
    if flow is not None:
        async def load_flow() -> Any:
            return {"id": flow.id.rpartition(".")[2], "name": flow.name}
        loaders["flow"] = load_flow
    return loaders


def _related_of_kind(event: Event | None, kind: str) -> ResourceView | None:
    if event is None:
        return None
    for labels in (event.resource, *event.related):
        if labels.get(RESOURCE_ID, "").rpartition(".")[0] == kind:
            return ResourceView(labels)
    return None


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
    firing_json: bytes
    """The firing as it came (retry jobs and dead letters carry it): encoded once, so a firing
    that cannot be encoded again fails alone, before any action runs."""

    @property
    def action_type(self) -> str:
        return self.planned.action.type

    @property
    def index(self) -> int:
        return self.planned.index


def new_invocation(automation: AutomationView, firing: Firing, planned: Planned,
                   firing_json: bytes | None = None) -> Invocation:
    key = idempotency_key(firing.id, planned.index)
    return Invocation(automation, firing, planned, key,
                      triggering_event(automation, firing, planned),
                      derived_id(key, "invocation"), derived_id(key, "triggered"),
                      firing.to_json() if firing_json is None else firing_json)


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


def action_triggered(inv: Invocation) -> Event:
    follows = None
    event = inv.triggering_event
    if event is not None and abs(event.occurred - inv.firing.triggered) <= FOLLOWS_WINDOW:
        follows = event.id
    return Event(
        id=inv.triggered_event_id, occurred=inv.firing.triggered, event=TRIGGERED,
        resource=_resource(inv.automation), related=_links(inv),
        payload=_payload(inv), follows=follows,
    )


def action_outcome(
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
        resource=_resource(inv.automation),
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
