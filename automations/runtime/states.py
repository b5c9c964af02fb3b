"""Flow-run and task-run states, and the Prefect-shaped events that announce them (reference 1.4).

Pure: builds ``Event`` objects from a run description and a state; publishing is elsewhere.
A state's id is the id of the event announcing it, and each state event ``follows`` the previous
one, as Prefect does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from automations.events import Event, utcnow, uuid7

MAX_STATE_MESSAGE = 100_000
FOLLOWS_WINDOW = timedelta(minutes=5)


class StateType(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"


TERMINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED,
                      StateType.CRASHED})
"""States a run never leaves without ``force``."""

ACTIVE = frozenset({StateType.PENDING, StateType.RUNNING, StateType.CANCELLING})
"""States in which a worker owns the run (it holds a lease)."""

AWAITING_RETRY = "AwaitingRetry"


def holds_worker(state: State) -> bool:
    """True while a worker owns the run (and must keep its lease alive)."""
    return state.type in ACTIVE or state.name == AWAITING_RETRY


DEFAULT_NAMES: dict[StateType, str] = {t: t.value.title() for t in StateType}


@dataclass(frozen=True, slots=True)
class State:
    type: StateType
    name: str
    message: str = ""
    id: UUID = field(default_factory=uuid7)
    timestamp: datetime = field(default_factory=utcnow)

    @classmethod
    def of(cls, type_: StateType | str, name: str | None = None, message: str = "",
           *, now: datetime | None = None) -> State:
        kind = StateType(type_)
        return cls(kind, name or DEFAULT_NAMES[kind], message[:MAX_STATE_MESSAGE],
                   timestamp=now or utcnow())

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type.value, "name": self.name, "message": self.message,
                "id": str(self.id), "timestamp": self.timestamp.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        return cls(StateType(data["type"]), str(data["name"]), str(data.get("message") or ""),
                   UUID(str(data["id"])), datetime.fromisoformat(str(data["timestamp"])))

    @property
    def is_final(self) -> bool:
        return self.type in TERMINAL


def flow_id(flow_name: str) -> UUID:
    """A stable id for a flow, derived from its name (there is no flow registry)."""
    return uuid5(NAMESPACE_URL, f"automations:flow:{flow_name}")


@dataclass(slots=True)
class RunResources:
    """Who a run is and what it relates to: everything but the state in a state event."""

    kind: str
    """``flow-run`` or ``task-run``."""
    id: UUID
    name: str
    flow_name: str
    run_count: int = 1
    tags: Iterable[str] = ()
    deployment: Mapping[str, str] | None = None
    """``{"id", "name"}`` of the deployment, if any."""
    flow_run: Mapping[str, str] | None = None
    """For a task run: ``{"id", "name"}`` of its flow run."""
    parent_task_run: UUID | None = None
    """For a subflow: the task run standing for it in the parent flow."""
    creator: Mapping[str, str] | None = None
    """``{"kind": "deployment"|"automation", "id", "name"}``: who created the run."""

    def related(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if self.flow_run is not None:
            out.append(_ref("flow-run", self.flow_run["id"], "flow-run", self.flow_run["name"]))
        out.append(_ref("flow", str(flow_id(self.flow_name)), "flow", self.flow_name))
        if self.deployment is not None:
            out.append(_ref("deployment", self.deployment["id"], "deployment",
                            self.deployment.get("name")))
        if self.parent_task_run is not None:
            out.append(_ref("task-run", str(self.parent_task_run), "task-run"))
        out.extend(_ref("tag", tag, "tag") for tag in sorted(set(self.tags)))
        if self.creator is not None:
            out.append(_ref(self.creator["kind"], self.creator["id"], "creator",
                            self.creator.get("name")))
        return out


def _ref(kind: str, ident: str, role: str, name: str | None = None) -> dict[str, str]:
    ref = {"prefect.resource.id": f"prefect.{kind}.{ident}", "prefect.resource.role": role}
    if name:
        ref["prefect.resource.name"] = name
    return ref


def state_event(run: RunResources, state: State, previous: State | None) -> Event:
    """The ``prefect.<kind>.<state name>`` event announcing ``state``."""
    resource = {
        "prefect.resource.id": f"prefect.{run.kind}.{run.id}",
        "prefect.resource.name": run.name,
        "prefect.run-count": str(run.run_count),
        "prefect.state-message": state.message,
        "prefect.state-name": state.name,
        "prefect.state-timestamp": state.timestamp.isoformat(),
        "prefect.state-type": state.type.value,
    }
    if run.kind == "task-run":
        resource["prefect.orchestration"] = "client"
    validated = {"type": state.type.value, "name": state.name, "message": state.message}
    payload = {
        "intended": {"from": previous.type.value if previous else None, "to": state.type.value},
        "initial_state": (
            {"type": previous.type.value, "name": previous.name, "message": previous.message}
            if previous else None
        ),
        "validated_state": validated,
    }
    return Event(
        id=state.id,
        occurred=state.timestamp,
        event=f"prefect.{run.kind}.{state.name}",
        resource=resource,
        related=run.related(),
        payload=payload,
        follows=_follows(state, previous),
    )


def _follows(state: State, previous: State | None) -> UUID | None:
    """Prefect's rule: only a leader within 5 minutes is worth waiting for."""
    if previous is None or abs(state.timestamp - previous.timestamp) >= FOLLOWS_WINDOW:
        return None
    return previous.id
