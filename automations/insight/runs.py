"""Flow runs for operators: filtered lists, who created a run and its state timeline, all read
from the runtime's own records (``runtime.flow_runs.FlowRunStore``; the timeline is
``FlowRun.state_history``, appended by every transition)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from automations.errors import NotFound
from automations.runtime.flow_runs import FlowRun, FlowRunStore
from automations.runtime.states import State, StateType


def created_by(run: FlowRun) -> str:
    """``automation <name>``, ``schedule`` (of its deployment) or ``cli`` (no creator: made by
    hand with ``deployments run`` or the library)."""
    creator = run.creator
    if creator is None:
        return "cli"
    if creator.get("kind") == "deployment":
        return "schedule"
    name = creator.get("name") or creator.get("id") or "?"
    return f"{creator.get('kind', '?')} {name}"


def matches_state(run: FlowRun, state: str) -> bool:
    """``failed``, ``FAILED`` or a state name such as ``AwaitingRetry`` (any case)."""
    wanted = state.casefold()
    return wanted in (run.state.type.value.casefold(), run.state.name.casefold())


def matches_deployment(run: FlowRun, deployment: str) -> bool:
    return deployment in (run.deployment_name, str(run.deployment_id))


def check_state(state: str) -> None:
    """A state filter must name a state type or be a plausible state name (one word)."""
    if state.upper() not in StateType.__members__ and not state.isidentifier():
        raise ValueError(f"{state!r} is not a state (one of "
                         f"{', '.join(t.value.lower() for t in StateType)}, or a state name)")


async def list_runs(store: FlowRunStore, *, deployment: str | None = None,
                    state: str | None = None, limit: int | None = None) -> list[FlowRun]:
    """Runs newest first (by creation), filtered."""
    runs = [r for r in reversed(await store.all())
            if (deployment is None or matches_deployment(r, deployment))
            and (state is None or matches_state(r, state))]
    return runs if limit is None else runs[:limit]


async def find_run(store: FlowRunStore, run_id_or_name: str) -> FlowRun:
    """By id, else by run name (``NotFound`` if neither)."""
    try:
        found = await store.get(UUID(run_id_or_name))
    except ValueError:
        found = None
    if found is None:
        found = next((r for r in await store.all() if r.name == run_id_or_name), None)
    if found is None:
        raise NotFound(f"no flow run with id or name {run_id_or_name!r}")
    return found


def state_json(state: State) -> dict[str, Any]:
    return {"type": state.type.value, "name": state.name, "message": state.message,
            "timestamp": state.timestamp.isoformat()}


def run_json(run: FlowRun, *, full: bool = False) -> dict[str, Any]:
    """The ``--json`` object of a run (``full``: with parameters, creator and timeline)."""
    out: dict[str, Any] = {
        "id": str(run.id), "name": run.name, "flow": run.flow_name,
        "deployment": run.deployment_name,
        "deployment_id": None if run.deployment_id is None else str(run.deployment_id),
        "state": run.state.type.value, "state_name": run.state.name,
        "state_timestamp": run.state.timestamp.isoformat(),
        "created": run.created.isoformat(), "created_by": created_by(run),
    }
    if full:
        out.update({
            "expected_start": run.expected_start.isoformat(), "parameters": run.parameters,
            "tags": run.tags, "run_count": run.run_count, "worker": run.worker,
            "creator": run.creator, "idempotency_key": run.idempotency_key,
            "entrypoint": run.entrypoint,
            "timeline": [state_json(s) for s in run.timeline()],
        })
    return out
