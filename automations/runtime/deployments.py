"""Deployments: a named, parameterised entrypoint with schedules, and its Redis store.

A deployment is addressed by its unique ``name`` or its ``id``. Schedules are cron (with a time
zone) or interval; each has ``active`` and a stable ``id`` derived from its definition, so
re-applying a file keeps the scheduler's place.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import redis.asyncio as aioredis
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from automations.errors import NotFound
from automations.events import utcnow
from automations.keys import Keys

ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str
    timezone: str = "UTC"
    active: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def id(self) -> str:
        return str(uuid5(NAMESPACE_URL, f"cron:{self.cron}:{self.timezone}"))

    def times_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """The latest ``limit`` occurrences in ``(start, end]``, oldest first."""
        zone = ZoneInfo(self.timezone)
        start = max(start, end - timedelta(days=1))  # long outages: look one day back at most
        it = croniter(self.cron, start.astimezone(zone))
        out: deque[datetime] = deque(maxlen=limit)
        while (when := it.get_next(datetime)) <= end:
            out.append(when.astimezone(UTC))
        return list(out)

    def describe(self) -> str:
        return f"cron {self.cron!r} {self.timezone}"


class IntervalSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval: timedelta = Field(description="Seconds (or an ISO 8601 duration) between runs.")
    anchor_date: datetime = ANCHOR
    timezone: str = "UTC"
    active: bool = True

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1:
            raise ValueError("interval must be at least 1 second")
        return value

    @field_validator("anchor_date")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def id(self) -> str:
        anchor = self.anchor_date.isoformat()
        return str(uuid5(NAMESPACE_URL, f"interval:{self.interval.total_seconds()}:{anchor}"))

    def times_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """The latest ``limit`` occurrences in ``(start, end]``, oldest first."""
        step = self.interval.total_seconds()
        first = int((start - self.anchor_date).total_seconds() // step) + 1
        last = int((end - self.anchor_date).total_seconds() // step)
        first = max(first, last - limit + 1)
        return [self.anchor_date + timedelta(seconds=k * step) for k in range(first, last + 1)]

    def describe(self) -> str:
        return f"every {self.interval.total_seconds():g}s"


def _schedule_kind(value: Any) -> str | None:
    """Pick the model by its key, so errors are about the schedule the user meant (not both)."""
    if isinstance(value, dict):
        return "CronSchedule" if "cron" in value else "IntervalSchedule"
    return type(value).__name__ if isinstance(value, CronSchedule | IntervalSchedule) else None


# Error paths carry the tag (``schedules[0].CronSchedule.cron``); deployment_files drops it.
Schedule = Annotated[
    Annotated[CronSchedule, Tag("CronSchedule")]
    | Annotated[IntervalSchedule, Tag("IntervalSchedule")],
    Discriminator(_schedule_kind, custom_error_type="schedule",
                  custom_error_message="a schedule is a mapping with 'cron' or 'interval'"),
]


class Deployment(BaseModel):
    """What ``deployments apply`` stores. ``flow_name`` defaults to the entrypoint's flow name."""

    model_config = ConfigDict(extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    name: str = Field(min_length=1, max_length=200)
    flow_name: str = ""
    entrypoint: str = Field(description="`path/file.py:function` or `module:function`.")
    working_dir: str | None = Field(
        None, description="Directory the worker runs the flow in (relative paths resolve here)."
    )
    parameters: dict[str, Any] = Field(default_factory=dict)
    parameter_openapi_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema of the flow's parameters, computed from its signature by "
        "`deployments apply` (Prefect's name); runs are checked against it. None: not known.")
    tags: list[str] = Field(default_factory=list)
    description: str = ""
    schedules: list[Schedule] = Field(default_factory=list)
    paused: bool = False
    created: datetime = Field(default_factory=utcnow)
    updated: datetime = Field(default_factory=utcnow)

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_shape(cls, value: str) -> str:
        target, sep, fn = value.rpartition(":")
        if not sep or not target or not fn.isidentifier():
            raise ValueError("entrypoint must be 'path/file.py:function' or 'module:function'")
        return value

    def ref(self) -> dict[str, str]:
        return {"id": str(self.id), "name": self.name}

    def record(self) -> dict[str, Any]:
        """The plain mapping the actions ports hand out."""
        return self.model_dump(mode="json")


# KEYS: the hashes written. ARGV: per change 'S', key index, field, value (HSET) or 'D', key
# index, field, '' (HDEL). Every change together: a script, not MULTI, since redis-py's cluster
# transactions fail while their slot migrates, where a script is redirected and retried.
HASH_WRITES = """
for i = 1, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i + 1])]
  if ARGV[i] == 'S' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
  else
    redis.call('HDEL', key, ARGV[i + 2])
  end
end
return 1
"""


class DeploymentStore:
    """Hash ``deployments`` id -> JSON and ``deployment_names`` name -> id (with the schedule
    cursors, written together in one script)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._hashes = [keys.deployments, keys.deployment_names, keys.schedule_cursors]
        self._write = redis.register_script(HASH_WRITES)

    async def _hash_writes(self, changes: list[tuple[str, str, str, str]]) -> None:
        """``(op, hash key, field, value)`` changes, all or none: ``S`` sets, ``D`` deletes."""
        args: list[str] = []
        for op, key, name, value in changes:
            args += [op, str(self._hashes.index(key) + 1), name, value]
        if args:
            await self._write(keys=self._hashes, args=args)

    async def all(self) -> list[Deployment]:
        raw = await self.redis.hvals(self.keys.deployments)
        return sorted((Deployment.model_validate_json(r) for r in raw), key=lambda d: d.name)

    async def get(self, deployment_id: UUID | str) -> Deployment | None:
        raw = await self.redis.hget(self.keys.deployments, str(deployment_id))
        return None if raw is None else Deployment.model_validate_json(raw)

    async def by_name(self, name: str) -> Deployment | None:
        found = await self.redis.hget(self.keys.deployment_names, name)
        return None if found is None else await self.get(text(found))

    async def resolve(self, name_or_id: str) -> Deployment:
        """By name first, then by id; ``NotFound`` otherwise."""
        found = await self.by_name(name_or_id)
        if found is None:
            try:
                found = await self.get(UUID(name_or_id))
            except ValueError:
                found = None
        if found is None:
            raise NotFound(f"no deployment named or with id {name_or_id!r}")
        return found

    async def apply(self, deployments: list[Deployment]) -> list[tuple[str, Deployment]]:
        """Upsert by name: an existing deployment keeps its id, created time and paused flag."""
        out: list[tuple[str, Deployment]] = []
        changes: list[tuple[str, str, str, str]] = []
        for dep in deployments:
            old = await self.by_name(dep.name)
            if old is not None:
                dep = dep.model_copy(update={"id": old.id, "created": old.created,
                                             "paused": old.paused, "updated": utcnow()})
                kind = "unchanged" if _same(old, dep) else "updated"
            else:
                kind = "created"
            changes += [("S", self.keys.deployments, str(dep.id), dep.model_dump_json()),
                        ("S", self.keys.deployment_names, dep.name, str(dep.id))]
            out.append((kind, dep))
        await self._hash_writes(changes)
        return out

    async def set_paused(self, deployment_id: UUID | str, paused: bool) -> Deployment:
        """Pause or resume; resuming restarts every schedule from now (no backlog burst)."""
        dep = await self.get(deployment_id)
        if dep is None:
            raise NotFound(f"no deployment with id {deployment_id}")
        dep = dep.model_copy(update={"paused": paused, "updated": utcnow()})
        changes = [("S", self.keys.deployments, str(dep.id), dep.model_dump_json())]
        if not paused:
            now = utcnow().timestamp()
            changes += [("S", self.keys.schedule_cursors, f"{dep.id}:{schedule.id}", repr(now))
                        for schedule in dep.schedules]
        await self._hash_writes(changes)
        return dep

    async def delete(self, name_or_id: str) -> Deployment:
        dep = await self.resolve(name_or_id)
        await self._hash_writes([("D", self.keys.deployments, str(dep.id), ""),
                                 ("D", self.keys.deployment_names, dep.name, "")])
        return dep


def _same(a: Deployment, b: Deployment) -> bool:
    skip = {"updated"}
    return bool(orjson.dumps(a.model_dump(mode="json", exclude=skip))
                == orjson.dumps(b.model_dump(mode="json", exclude=skip)))


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
