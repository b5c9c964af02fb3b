"""Loop guard: refuse an automation whose own events would re-trigger it forever.

Every firing of an automation publishes events of its own: the engine emits
``prefect.automation.triggered`` (resource ``prefect.automation.<id>``), the dispatcher emits
``prefect.automation.action.triggered`` and ``.executed``/``.failed`` for every action, a
``run-deployment`` creates a flow run that emits ``prefect.flow-run.Scheduled``, ``Pending``
and ``Running`` (related: the deployment, and the automation as ``creator``), and the flow-run
actions put the run they act on into a new state (``cancel-flow-run``: ``Cancelling``;
``change-flow-run-state``: the state's name). We call these the automation's *echoes*.

The rule: an enabled automation is refused when its trigger, fed with the echoes of one of its
own firings and nothing else, would fire again. A Reactive event trigger fires on echoes when
at least ``threshold`` of them pass its ``expect`` and ``match``/``match_related`` (and, when
it has ``after``, one of them opens its window); Proactive triggers fire on the absence of
events, so echoes never make them fire. A compound trigger loops when at least ``require`` of
its children loop, a sequence when all of them do. ``within`` is ignored on purpose: a
cooldown only slows a loop down, and delayed echoes (retried actions, scheduled runs) land
after it. This generalises Prefect's ``prevent_run_deployment_loops`` (reference 4.1) and its
issue #11470 (an empty trigger re-firing on its own events).

What an echo's labels are is known only partly. A label we know is matched exactly; a label we
do not know makes the spec fail (it could be anything, so we do not refuse), except on the
resource a flow-run action acts on and the related resources an *inferred* run-deployment
inherits from the triggering event, which are the very resources the trigger matched, so any
spec on them passes. Loops through other automations (A fires B fires A) are not detected.
Escape hatch for "every event" triggers:
``match: {"prefect.resource.id": "!prefect.automation.*"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from actions.models import Action, CancelFlowRun, ChangeFlowRunState, RunDeployment
from automations.events import RESOURCE_ROLE
from triggers.matching import NameMatcher, ValueMatcher
from triggers.models import EventTrigger, Posture, ResourceSpec, Trigger

RESOURCE_ID = "prefect.resource.id"
RESOURCE_NAME = "prefect.resource.name"
CREATOR = "creator"
RUN_STATES = (("Scheduled", "SCHEDULED"), ("Pending", "PENDING"), ("Running", "RUNNING"))
ACTION_OUTCOMES = ("prefect.automation.action.executed", "prefect.automation.action.failed")
ESCAPE_HINT = (
    'narrow `expect` or `match` so they exclude these events (for example match '
    '{"prefect.resource.id": "!prefect.automation.*"}), or give the trigger an `after`'
)


@dataclass(frozen=True, slots=True)
class Resource:
    """Labels of an echo's resource; ``open`` means unknown labels may hold any value."""

    labels: Mapping[str, str]
    open: bool = False


@dataclass(frozen=True, slots=True)
class Echo:
    """One event that a firing of the automation itself causes (``names``: its possible names)."""

    names: tuple[str, ...]
    resource: Resource
    related: tuple[Resource, ...] = ()
    open_related: bool = False
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Loop:
    """A trigger (by field path) that its own echoes would fire, and which echoes."""

    path: str
    causes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def message(self) -> str:
        return (
            f"loop guard: this automation would re-trigger itself forever: {self.path} also "
            f"matches {', '.join(self.causes)}, which its own firing produces; {ESCAPE_HINT}"
        )


def find_loop(
    automation_id: UUID, name: str, trigger: Trigger, actions: Sequence[Action]
) -> Loop | None:
    """The loop this automation would run into, or ``None`` (see the module docstring)."""
    echoes = automation_echoes(automation_id, name, trigger, actions)
    return _loop(trigger, echoes, "trigger")


def automation_echoes(
    automation_id: UUID, name: str, trigger: Trigger, actions: Sequence[Action]
) -> list[Echo]:
    """The events one firing publishes: the triggered event, then each action's events."""
    me = {RESOURCE_ID: f"prefect.automation.{automation_id}", RESOURCE_NAME: name}
    if isinstance(trigger, EventTrigger):
        me["prefect.posture"] = str(trigger.posture)
    event_roles = (
        Resource({RESOURCE_ID: "prefect.event.<id>", RESOURCE_ROLE: "triggering-event"}),
    )
    echoes = [
        Echo(("prefect.automation.triggered",), Resource(me), event_roles,
             cause="its own prefect.automation.triggered event")
    ]
    outcome = {**me, "prefect.trigger-type": trigger.type}
    for index, action in enumerate(actions):
        label = f"action {index} ({action.type})"
        echoes.append(Echo(("prefect.automation.action.triggered",), Resource(outcome),
                           event_roles, cause=f"the action.triggered event of {label}"))
        echoes.append(Echo(ACTION_OUTCOMES, Resource(outcome), event_roles,
                           cause=f"the action.executed/failed event of {label}"))
        echoes.extend(_action_echoes(action, me, label))
    return echoes


def _action_echoes(action: Action, me: Mapping[str, str], label: str) -> list[Echo]:
    if isinstance(action, RunDeployment):
        return _run_echoes(action, me, label)
    if isinstance(action, CancelFlowRun):
        return [_state_echo("Cancelling", "CANCELLING", label)]
    if isinstance(action, ChangeFlowRunState):
        return [_state_echo(action.name or action.state.title(), action.state, label)]
    return []


def _run_echoes(action: RunDeployment, me: Mapping[str, str], label: str) -> list[Echo]:
    creator = Resource({**me, RESOURCE_ROLE: CREATOR})
    related: tuple[Resource, ...] = (creator,)
    if action.deployment_id is not None:
        deployment = {RESOURCE_ID: f"prefect.deployment.{action.deployment_id}"}
        related += (Resource({**deployment, RESOURCE_ROLE: "deployment"}),)
    elif action.deployment is not None:
        deployment = {RESOURCE_ID: "prefect.deployment.<id>", RESOURCE_NAME: action.deployment}
        related += (Resource({**deployment, RESOURCE_ROLE: "deployment"}),)
    inferred = action.source == "inferred"
    return [
        Echo(
            (f"prefect.flow-run.{state}",),
            Resource({RESOURCE_ID: "prefect.flow-run.<new>", "prefect.state-name": state,
                      "prefect.state-type": state_type}),
            related,
            open_related=inferred,
            cause=f"the prefect.flow-run.{state} event of the run {label} creates",
        )
        for state, state_type in RUN_STATES
    ]


def _state_echo(state: str, state_type: str, label: str) -> Echo:
    resource = Resource({"prefect.state-name": state, "prefect.state-type": state_type}, True)
    return Echo((f"prefect.flow-run.{state}",), resource, open_related=True,
                cause=f"the prefect.flow-run.{state} event of the run {label} acts on")


def _loop(trigger: Trigger, echoes: Sequence[Echo], path: str) -> Loop | None:
    if isinstance(trigger, EventTrigger):
        return _event_loop(trigger, echoes, path)
    children = [
        loop
        for i, child in enumerate(trigger.triggers)
        if (loop := _loop(child, echoes, f"{path}.triggers[{i}]")) is not None
    ]
    if not children or len(children) < trigger.needed:
        return None
    causes = tuple(dict.fromkeys(c for loop in children for c in loop.causes))
    if len(children) == 1:
        return Loop(children[0].path, causes)
    return Loop(f"{path} (through {', '.join(c.path for c in children)})", causes)


def _event_loop(trigger: EventTrigger, echoes: Sequence[Echo], path: str) -> Loop | None:
    if trigger.posture is not Posture.Reactive:
        return None
    expect, after = NameMatcher(trigger.expect), NameMatcher(trigger.after)
    match = _compile(trigger.match)
    related = [(spec, _compile(spec)) for spec in trigger.match_related_specs if spec]
    covered = [e for e in echoes if _resources_covered(match, related, e)]
    counted = [e for e in covered if not expect or any(expect(n) for n in e.names)]
    if after:
        openers = [e for e in covered if any(after(n) for n in e.names)]
        if not openers:
            return None
        if any(e in counted for e in openers):
            counted = counted[1:]  # the event that opens a window does not count in it
    if not counted or len(counted) < max(trigger.threshold, 1):
        return None
    return Loop(path, tuple(e.cause for e in counted))


SpecTest = tuple[tuple[str, ValueMatcher, bool], ...]  # (label, matcher, has patterns)


def _compile(spec: ResourceSpec) -> SpecTest:
    return tuple((label, ValueMatcher(p), bool(p)) for label, p in spec.items())


def _resources_covered(
    match: SpecTest, related: Sequence[tuple[ResourceSpec, SpecTest]], echo: Echo
) -> bool:
    if not _spec_may_match(match, echo.resource):
        return False
    return all(_related_may_match(spec, test, echo) for spec, test in related)


def _related_may_match(spec: ResourceSpec, test: SpecTest, echo: Echo) -> bool:
    if echo.open_related and not _targets_creator(spec):
        return True
    return any(_spec_may_match(test, resource) for resource in echo.related)


def _targets_creator(spec: ResourceSpec) -> bool:
    """A spec on the ``creator`` role is about our own echo, never about the triggering event."""
    return RESOURCE_ROLE in spec and ValueMatcher(spec[RESOURCE_ROLE])(CREATOR)


def _spec_may_match(test: SpecTest, resource: Resource) -> bool:
    for label, matcher, has_patterns in test:
        value = resource.labels.get(label)
        if value is None:
            if resource.open and has_patterns:
                continue
            return False
        if not matcher(value):
            return False
    return True
