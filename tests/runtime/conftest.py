"""Runtime test helpers: environment pointing flows at the test Redis, event readers."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from automations.events import Event
from automations.keys import Keys
from automations.settings import Settings


@pytest.fixture
def runtime_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """``Settings()`` (as built inside flows and subprocesses) points at the test Redis."""
    monkeypatch.setenv("AUTOMATIONS_REDIS_URL", str(settings.redis_url))
    monkeypatch.setenv("AUTOMATIONS_PREFIX", settings.prefix)
    monkeypatch.setenv("AUTOMATIONS_FLOW_FLUSH_TIMEOUT_S", "5")
    return settings


async def read_events(redis: aioredis.Redis, keys: Keys) -> list[Event]:
    entries = await redis.xrange(keys.events)
    return [Event.from_json(fields[b"data"]) for _, fields in entries or [] if fields]


def names(events: list[Event], kind: str = "") -> list[str]:
    return [e.event for e in events if e.event.startswith(kind)]
