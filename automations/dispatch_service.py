"""The dispatcher service: wires the action ports (store, blocks, runtime) into a Dispatcher.

Lives in ``automations`` because it needs the automation store; ``actions`` only sees the
ports' Protocols (``actions/context.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from actions.context import Ports
from actions.dispatcher import Dispatcher
from actions.secrets import BlockStore
from automations.keys import Keys
from automations.lifecycle import run_until
from automations.runtime.ports import DeploymentsAdapter, FlowRunsAdapter
from automations.settings import Settings
from automations.store import AutomationStore

if TYPE_CHECKING:  # service.py imports this module for its SERVICES map
    from automations.service import ServiceContext


def build_ports(redis: aioredis.Redis, settings: Settings, keys: Keys) -> Ports:
    """Every port an executor may use. The runtime adds ``deployments``/``flow_runs`` here."""
    return Ports(automations=AutomationStore(redis, keys), blocks=BlockStore(redis, keys),
                 deployments=DeploymentsAdapter(redis, settings, keys),
                 flow_runs=FlowRunsAdapter(redis, settings, keys))


async def run_dispatcher_service(ctx: ServiceContext) -> None:
    """Dispatch firings until ``ctx.stopping``; then finish the actions in hand and return."""
    ports = build_ports(ctx.redis, ctx.settings, ctx.keys)
    dispatcher = Dispatcher(ctx.redis, ctx.settings, ports=ports, keys=ctx.keys)
    async with dispatcher:
        await run_until(ctx.stopping, dispatcher)
