"""The scheduler service: creates flow runs for the active schedules of unpaused deployments.

Each (deployment, schedule) has a cursor (the time it was scheduled up to). A tick creates a
run for every occurrence in ``(cursor, now]`` (at most ``scheduler_max_catchup`` of the most
recent ones) and moves the cursor to now. The run id is derived from (deployment, schedule,
time), and creation is a set-if-absent, so several schedulers create each run once. A paused
deployment or an inactive schedule has its cursor kept at now: resuming continues from then,
without a burst of missed runs. A tick also queues runs whose start time has come and marks
runs of dead workers Crashed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import NAMESPACE_URL, uuid5

import anyio
import redis.asyncio as aioredis

from automations.backoff import Backoff
from automations.connection import CONNECTION_ERRORS
from automations.events import utcnow
from automations.keys import Keys
from automations.runtime.deployments import Deployment, DeploymentStore, Schedule, text
from automations.runtime.flow_runs import FlowRun, FlowRunStore, build_flow_run
from automations.settings import Settings

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, redis: aioredis.Redis, settings: Settings, keys: Keys | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys or Keys.from_settings(settings)
        self.deployments = DeploymentStore(redis, self.keys)
        self.runs = FlowRunStore(redis, settings, self.keys)
        self.created = 0

    def __repr__(self) -> str:
        return f"Scheduler(prefix={self.keys.prefix!r}, created={self.created})"

    async def run(self, stopping: anyio.Event) -> None:
        """Tick every ``scheduler_interval_s`` until ``stopping``; outages only pause it."""
        backoff = Backoff("scheduler", cap_s=self.settings.reconnect_max_s, logger=log)
        while not stopping.is_set():
            try:
                await self.tick(utcnow())
                backoff.recovered()
            except CONNECTION_ERRORS as exc:
                await backoff.wait(exc, stopping)
                continue
            with anyio.move_on_after(self.settings.scheduler_interval_s):
                await stopping.wait()

    async def tick(self, now: datetime) -> list[FlowRun]:
        """One pass: schedule due occurrences, queue due runs, sweep crashed runs."""
        created = await self.schedule(now)
        await self.runs.promote_due(now)
        for run in await self.runs.sweep_crashed():
            log.warning("flow run %s (%s) is %s", run.name, run.id, run.state.name)
        return created

    async def schedule(self, now: datetime) -> list[FlowRun]:
        deployments = await self.deployments.all()
        raw = await self.redis.hgetall(self.keys.schedule_cursors)
        cursors = {text(k): float(v) for k, v in raw.items()}
        moved: dict[str, str] = {}
        created: list[FlowRun] = []
        for dep in deployments:
            for schedule in dep.schedules:
                field = f"{dep.id}:{schedule.id}"
                cursor = cursors.get(field)
                moved[field] = repr(now.timestamp())
                if dep.paused or not schedule.active or cursor is None:
                    continue
                start = datetime.fromtimestamp(cursor, UTC)
                for when in schedule.times_between(start, now,
                                                   limit=self.settings.scheduler_max_catchup):
                    run, fresh = await self.runs.create(self._run_for(dep, schedule, when, now))
                    if fresh:
                        created.append(run)
        if moved:
            await self.redis.hset(self.keys.schedule_cursors, mapping=moved)  # type: ignore[arg-type]
        self.created += len(created)
        return created

    @staticmethod
    def _run_for(dep: Deployment, schedule: Schedule, when: datetime, now: datetime) -> FlowRun:
        run_id = uuid5(NAMESPACE_URL, f"automations:schedule:{dep.id}:{schedule.id}:"
                                      f"{when.timestamp()}")
        return build_flow_run(
            dep, start=when, run_id=run_id, now=now,
            creator={"kind": "deployment", "id": str(dep.id), "name": dep.name},
            message=f"Scheduled by {schedule.describe()}",
        )
