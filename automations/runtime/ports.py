"""The runtime's implementations of the dispatch ports (``automations.dispatch.ports``
``DeploymentsPort`` and ``FlowRunsPort``), wired into the dispatcher by
``automations.service.build_ports``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import redis.asyncio as aioredis

from actions.outcome import PermanentError, Reason
from automations.errors import NotFound
from automations.keys import Keys
from automations.runtime.deployments import DeploymentStore
from automations.runtime.flow_runs import FlowRunStore, Refused, build_flow_run, run_id_for_key
from automations.runtime.states import StateType
from automations.settings import Settings


class DeploymentsAdapter:
    def __init__(self, redis: aioredis.Redis, settings: Settings, keys: Keys | None = None) -> None:
        keys = keys or Keys.from_settings(settings)
        self.store = DeploymentStore(redis, keys)
        self.runs = FlowRunStore(redis, settings, keys)

    async def get(self, deployment_id: UUID, /) -> Mapping[str, Any] | None:
        found = await self.store.get(deployment_id)
        return None if found is None else found.record()

    async def by_name(self, name: str, /) -> Mapping[str, Any] | None:
        found = await self.store.by_name(name)
        return None if found is None else found.record()

    async def create_flow_run(
        self,
        deployment_id: UUID,
        parameters: Mapping[str, Any] | None,
        job_variables: Mapping[str, Any] | None,
        scheduled_start: datetime,
        idempotency_key: str,
        creator: Mapping[str, str] | None = None,
        /,
    ) -> Mapping[str, Any]:
        """One run per ``idempotency_key``: its id derives from the key and creation is
        set-if-absent, so a redelivered action returns the run it created the first time."""
        deployment = await self.store.get(deployment_id)
        if deployment is None:
            raise NotFound(f"deployment {deployment_id} does not exist")
        run = build_flow_run(
            deployment, parameters, start=scheduled_start,
            run_id=run_id_for_key(idempotency_key), idempotency_key=idempotency_key,
            creator=dict(creator) if creator else None, job_variables=job_variables,
        )
        created, _ = await self.runs.create(run)
        return created.record()

    async def set_paused(self, deployment_id: UUID, paused: bool, /) -> object:
        return (await self.store.set_paused(deployment_id, paused)).record()


class FlowRunsAdapter:
    def __init__(self, redis: aioredis.Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.store = FlowRunStore(redis, settings, keys)

    async def get(self, flow_run_id: UUID, /) -> Mapping[str, Any] | None:
        found = await self.store.get(flow_run_id)
        return None if found is None else found.record()

    async def set_state(
        self, flow_run_id: UUID, state: str, name: str | None, message: str | None,
        force: bool, /,
    ) -> Mapping[str, Any]:
        try:
            run = await self.store.propose(flow_run_id, StateType(state), name, message or "",
                                           force=force)
        except Refused as exc:
            raise PermanentError(Reason.VALIDATION, str(exc)) from None
        return run.record()
