"""What every console route works with: settings, one Redis client, the stores and the
in-memory caches (``cache``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from automations.console.cache import AutomationsCache, FiringCounts
from automations.keys import Keys
from automations.runtime.deployments import DeploymentStore
from automations.runtime.flow_runs import FlowRunStore
from automations.settings import Settings
from automations.store import AutomationStore


@dataclass
class Console:
    settings: Settings
    redis: aioredis.Redis
    keys: Keys = field(init=False)
    store: AutomationStore = field(init=False)
    automations: AutomationsCache = field(init=False)
    counts: FiringCounts = field(init=False)
    deployments: DeploymentStore = field(init=False)
    runs: FlowRunStore = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys.from_settings(self.settings)
        self.store = AutomationStore(self.redis, self.keys)
        self.automations = AutomationsCache(self.store)
        self.counts = FiringCounts(self.redis, self.keys)
        self.deployments = DeploymentStore(self.redis, self.keys)
        self.runs = FlowRunStore(self.redis, self.settings, self.keys)
