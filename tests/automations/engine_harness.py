"""Shared helpers for the engine, proactive, ordering and property tests: a settable clock,
event and automation builders, and a harness that publishes events, drains engines, ticks
the timer and reads back the firings written to the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import redis.asyncio as aioredis

from automations.engine.engine import Engine
from automations.engine.outbox import firings_of
from automations.engine.timer import ProactiveTimer
from automations.events import Event
from automations.keys import Keys
from automations.layout import ensure_layout
from automations.models import Automation
from automations.settings import Settings
from automations.streams.publish import Publisher
from triggers.firing import Firing

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """Wall clock the tests move by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(
    name: str, when: float, resource: str = "r1", *, labels: dict[str, str] | None = None,
    related: list[dict[str, str]] | None = None, follows: UUID | None = None,
    id: UUID | None = None,
) -> Event:
    fields: dict[str, Any] = {
        "event": name, "occurred": at(when),
        "resource": {"prefect.resource.id": resource, **(labels or {})},
        "related": related or [], "follows": follows,
    }
    if id is not None:
        fields["id"] = id
    return Event(**fields)


def automation(trigger: dict[str, Any], name: str = "auto", **fields: Any) -> Automation:
    return Automation.model_validate(
        {"name": name, "trigger": trigger, "actions": [{"type": "do-nothing"}], **fields}
    )


class Harness:
    """Engines and a timer over one prefix, driven by a shared ``Clock``."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, clock: Clock, engines: int = 1
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.clock = clock
        self.engines = [
            Engine(redis, settings, clock=clock, consumer=f"engine-{i}") for i in range(engines)
        ]
        self.timer = ProactiveTimer(redis, settings, clock=clock)
        self.publisher = Publisher(redis, settings)
        self._last = dict.fromkeys(self.keys.outboxes, "0-0")

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    async def load(self, *automations: Automation) -> None:
        """Load into every engine, on an installation recorded as the services record it
        (``ensure_layout``: a new one, with no one-key dedupe markers to look at)."""
        await ensure_layout(self.redis, self.keys)
        for engine in self.engines:
            await engine.load(automations)

    async def send(self, *events: Event, engine: int = 0) -> list[Firing]:
        """Publish, drain one engine, return the new firings."""
        await self.publisher.publish(list(events))
        await self.engines[engine].run_until_idle()
        return await self.firings()

    async def tick(self) -> list[Firing]:
        await self.timer.tick()
        return await self.firings()

    async def firings(self) -> list[Firing]:
        """Firings written since the last call (partition by partition)."""
        found: list[Firing] = []
        for outbox, last in self._last.items():
            entries: Any = await self.redis.xrange(outbox, min=f"({last}")
            if entries:
                self._last[outbox] = entries[-1][0].decode()
            found += [f for _, fields in entries for f in firings_of(fields)]
        return found

    async def automation_events(self) -> list[Event]:
        """The prefect.automation.* events so far (announced first, as a running engine does)."""
        await self.engine.announcer.run_until_idle()
        entries: Any = await self.redis.xrange(self.keys.events)
        found = [Event.from_json(f[b"data"]) for _, f in entries]
        return [e for e in found if e.event.startswith("prefect.automation.")]


def event_ids(firings: Sequence[Firing]) -> list[str | None]:
    return [
        None if f.triggering_event is None else str(f.triggering_event["id"]) for f in firings
    ]
