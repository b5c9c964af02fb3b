"""Flow runs in Redis: one JSON record per run, changed only by an atomic compare-and-set
script that also publishes the state event (``lua/transition.lua``), so a state and its
announcement can never diverge.

Who moves a run: creation (Scheduled) by the scheduler, run-deployment or the CLI; a worker
claims it (Pending, with a lease), runs it (Running, final); actions propose states; the
sweeper marks a run whose lease expired Crashed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from importlib import resources
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from automations.errors import NotFound
from automations.events import utcnow, uuid7
from automations.keys import Keys
from automations.runtime.deployments import Deployment
from automations.runtime.states import (
    ACTIVE,
    TERMINAL,
    RunResources,
    State,
    StateType,
    holds_worker,
    state_event,
)
from automations.settings import Settings

_CAS_ATTEMPTS = 10
MAX_TIMELINE = 50
"""Past states a run record keeps (``FlowRun.state_history``), the latest ones."""


def _script(name: str) -> str:
    return resources.files("automations.runtime").joinpath(f"lua/{name}").read_text()


TRANSITION_LUA = _script("transition.lua")
PROMOTE_LUA = _script("promote.lua")


class Refused(Exception):
    """A proposed state change is not allowed from the run's current state."""


class FlowRun(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: UUID = Field(default_factory=uuid7)
    name: str
    flow_name: str
    deployment_id: UUID | None = None
    deployment_name: str | None = None
    entrypoint: str
    working_dir: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    job_variables: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    state: State
    run_count: int = 0
    expected_start: datetime = Field(default_factory=utcnow)
    created: datetime = Field(default_factory=utcnow)
    creator: dict[str, str] | None = None
    idempotency_key: str | None = None
    worker: str | None = None
    state_history: list[State] = Field(default_factory=list)
    """The states before ``state``, oldest first, each with its timestamp (``transition``
    appends; runs stored before it existed have none)."""

    def timeline(self) -> list[State]:
        """Every state the run was in, oldest first, ending with the current one."""
        return [*self.state_history, self.state]

    def resources(self) -> RunResources:
        deployment = None
        if self.deployment_id is not None:
            deployment = {"id": str(self.deployment_id), "name": self.deployment_name or ""}
        return RunResources("flow-run", self.id, self.name, self.flow_name,
                            run_count=max(self.run_count, 1), tags=self.tags,
                            deployment=deployment, creator=self.creator)

    def record(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["state_type"] = self.state.type.value
        data["state_name"] = self.state.name
        return data


def run_id_for_key(idempotency_key: str) -> UUID:
    """The flow run id an idempotency key maps to: a redelivered action finds its run."""
    return uuid5(NAMESPACE_URL, f"automations:flow-run:{idempotency_key}")


class FlowRunStore:
    def __init__(self, redis: aioredis.Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys.from_settings(settings)
        self._transition = redis.register_script(TRANSITION_LUA)
        self._promote = redis.register_script(PROMOTE_LUA)

    async def get(self, run_id: UUID | str) -> FlowRun | None:
        raw = await self.redis.hget(self.keys.flow_runs, str(run_id))
        return None if raw is None else FlowRun.model_validate_json(raw)

    async def require(self, run_id: UUID | str) -> FlowRun:
        run = await self.get(run_id)
        if run is None:
            raise NotFound(f"no flow run with id {run_id}")
        return run

    async def all(self) -> list[FlowRun]:
        raw = await self.redis.hvals(self.keys.flow_runs)
        return sorted((FlowRun.model_validate_json(r) for r in raw), key=lambda r: r.created)

    async def create(self, run: FlowRun) -> tuple[FlowRun, bool]:
        """Store a Scheduled run and queue it (now, or in the due set); at most once per id."""
        start = run.expected_start.timestamp()
        enqueue = "now" if start <= utcnow().timestamp() else repr(start)
        applied = await self._apply(run, None, previous=None, enqueue=enqueue)
        if applied:
            return run, True
        return await self.require(run.id), False

    async def transition(
        self,
        run_id: UUID | str,
        state: State | Callable[[FlowRun], State | None],
        *,
        update: Callable[[FlowRun], dict[str, Any]] | None = None,
        lease_ms: int = -1,
        enqueue: str = "",
    ) -> FlowRun | None:
        """Move the run to ``state`` (or to what the callable decides from the current run;
        None means "leave it"), retrying when another process changed it meanwhile."""
        for _ in range(_CAS_ATTEMPTS):
            current = await self.get(run_id)
            if current is None:
                raise NotFound(f"no flow run with id {run_id}")
            target = state(current) if callable(state) else state
            if target is None:
                return None
            changes = dict(update(current)) if update else {}
            new = current.model_copy(update={
                **changes, "state": target,
                "state_history": [*current.state_history, current.state][-MAX_TIMELINE:]})
            if await self._apply(new, current.state, previous=current.state,
                                 lease_ms=lease_ms, enqueue=enqueue):
                return new
        raise RuntimeError(f"flow run {run_id} kept changing; gave up after {_CAS_ATTEMPTS} tries")

    async def _apply(self, run: FlowRun, expected: State | None, *, previous: State | None,
                     lease_ms: int = -1, enqueue: str = "") -> bool:
        event = state_event(run.resources(), run.state, previous)
        active = holds_worker(run.state)
        if not active and lease_ms < 0:
            lease_ms = 0
        result = await self._transition(
            keys=[self.keys.flow_runs, self.keys.flow_runs_active,
                  self.keys.flow_run_lease(str(run.id)), self.keys.events,
                  self.keys.flow_runs_due, self.keys.runs],
            args=[str(run.id), "" if expected is None else str(expected.id),
                  run.model_dump_json(), str(run.state.id), "1" if active else "0",
                  lease_ms, run.worker or "", event.encoded(), self.settings.events_maxlen,
                  utcnow().timestamp(), enqueue],
        )
        if result == -1:
            raise NotFound(f"no flow run with id {run.id}")
        return bool(result == 1)

    # -- proposals from actions and the CLI ---------------------------------------------
    async def propose(self, run_id: UUID | str, kind: StateType, name: str | None = None,
                      message: str = "", *, force: bool = False) -> FlowRun:
        """An outside state change (change-flow-run-state, cancel-flow-run)."""

        def decide(run: FlowRun) -> State:
            current = run.state.type
            if current in TERMINAL and not force:
                raise Refused(f"flow run {run.name} is already {run.state.name}; "
                              "use force to change a finished run")
            if kind == StateType.CANCELLED and current in ACTIVE and not force:
                # a worker runs it: ask it to stop; it records Cancelled once the process is gone
                return State.of(StateType.CANCELLING, None, message)
            return State.of(kind, name, message)

        enqueue_now = kind == StateType.SCHEDULED
        result = await self.transition(run_id, decide, enqueue="now" if enqueue_now else "")
        assert result is not None
        return result

    async def cancel(self, run_id: UUID | str, message: str) -> FlowRun:
        return await self.propose(run_id, StateType.CANCELLED, None, message)

    # -- housekeeping ------------------------------------------------------------------
    async def promote_due(self, now: datetime, limit: int = 100) -> int:
        """Queue Scheduled runs whose start time has come (once, across processes)."""
        return int(await self._promote(keys=[self.keys.flow_runs_due, self.keys.runs],
                                       args=[now.timestamp(), limit]))

    async def sweep_crashed(self) -> list[FlowRun]:
        """Runs in an active state whose worker lease expired: Crashed (or Cancelled when a
        cancellation was already asked for)."""
        raw = await self.redis.zrange(self.keys.flow_runs_active, 0, -1)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.exists(self.keys.flow_run_lease(run_id))
        alive = await pipe.execute()
        swept = []
        for run_id, has_lease in zip(ids, alive, strict=True):
            if has_lease:
                continue
            try:
                run = await self.transition(run_id, _crash_state)
            except NotFound:
                await self.redis.zrem(self.keys.flow_runs_active, run_id)
                continue
            if run is not None:
                swept.append(run)
        return swept


def _crash_state(run: FlowRun) -> State | None:
    if run.state.type == StateType.CANCELLING:
        return State.of(StateType.CANCELLED, None, "The worker stopped; the run is cancelled")
    if holds_worker(run.state):
        return State.of(StateType.CRASHED, None,
                        f"Worker {run.worker or '?'} stopped heartbeating; the run crashed")
    return None


def build_flow_run(
    deployment: Deployment,
    parameters: Mapping[str, Any] | None = None,
    *,
    start: datetime | None = None,
    run_id: UUID | None = None,
    creator: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    job_variables: Mapping[str, Any] | None = None,
    message: str = "",
    now: datetime | None = None,
) -> FlowRun:
    """A new Scheduled run of ``deployment``; ``parameters`` override its defaults."""
    now = now or utcnow()
    run_id = run_id or uuid7()
    start = start or now
    return FlowRun(
        id=run_id,
        name=f"{deployment.name}-{run_id.hex[-8:]}",
        flow_name=deployment.flow_name or deployment.entrypoint.rpartition(":")[2],
        deployment_id=deployment.id,
        deployment_name=deployment.name,
        entrypoint=deployment.entrypoint,
        working_dir=deployment.working_dir,
        parameters={**deployment.parameters, **(parameters or {})},
        job_variables=dict(job_variables or {}),
        tags=list(deployment.tags),
        state=State.of(StateType.SCHEDULED, None, message, now=now),
        expected_start=start,
        created=now,
        creator=creator,
        idempotency_key=idempotency_key,
    )
