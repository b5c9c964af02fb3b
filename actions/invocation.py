"""From a firing to the actions to run: the plan, each action's triggering event, templates'
context and target inference (reference sections 3.13 and 5.2).

Pure functions of the firing and the automation (plus ports for lazily loaded template
objects); the dispatcher owns the I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from actions.context import AutomationView, Ports
from actions.models import Action
from actions.templating import LAZY_NAMES, EventView, Loader, ResourceView
from automations.events import RESOURCE_ID, RESOURCE_NAME, RESOURCE_ROLE, Event
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


def automation_resource(automation: AutomationView) -> dict[str, str]:
    """``prefect.automation.<id>`` with name, trigger type and (event triggers) posture."""
    trigger = automation.trigger
    resource = {
        RESOURCE_ID: f"prefect.automation.{automation.id}",
        RESOURCE_NAME: automation.name,
        "prefect.trigger-type": trigger.type,
    }
    posture = getattr(trigger, "posture", None)
    if posture is not None:
        resource["prefect.posture"] = str(posture)
    return resource


def state_event(automation: AutomationView, firing: Firing, state: TriggerState) -> Event:
    """The ``prefect.automation.triggered``/``.resolved`` event of the firing, rebuilt as the
    engine published it, for ``actions_on_trigger``/``actions_on_resolve``."""
    resource = automation_resource(automation)
    resource.pop("prefect.trigger-type")
    related = []
    triggering = firing.triggering_event
    if triggering and triggering.get("id"):
        related.append({RESOURCE_ID: f"prefect.event.{triggering['id']}",
                        RESOURCE_ROLE: "triggering-event"})
    return Event(
        id=firing.automation_triggered_event_id or derived_id(str(firing.id), state.value),
        occurred=firing.triggered,
        event=f"prefect.automation.{state.value.lower()}",
        resource=resource,
        related=related,
        payload={"triggering_labels": firing.triggering_labels, "triggering_event": triggering},
    )


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
