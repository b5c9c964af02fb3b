"""Fixtures for the dispatcher tests: a store, fast-retry settings, a running dispatcher."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from automations.dispatch.dispatcher import Dispatcher
from automations.keys import Keys
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings with quick retries and short timeouts."""
    return settings.model_copy(update={
        "action_retry_base_s": 0.05, "action_retry_max_s": 0.2, "action_timeout_s": 3.0,
        "action_max_attempts": 3, "action_retry_poll_s": 0.05,
    })


@pytest.fixture
def store(redis: aioredis.Redis, keys: Keys) -> AutomationStore:
    return AutomationStore(redis, keys)


@pytest.fixture
async def dispatcher(
    redis: aioredis.Redis, fast: Settings, keys: Keys
) -> AsyncIterator[Dispatcher]:
    async with Dispatcher(redis, fast, ports=build_ports(redis, fast, keys), keys=keys) as d:
        yield d
