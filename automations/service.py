"""``serve``: every service of one process in one task group, drained on SIGTERM/SIGINT.

A service is ``async def run_x_service(ctx) -> None``: it works until ``ctx.stopping`` is set,
then finishes what it has in hand and returns. Each owner edits only its own ``SERVICES`` line.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from automations.bus import CONNECTION_ERRORS
from automations.connection import connect, display_url, redis_url
from automations.dispatch_service import run_dispatcher_service
from automations.engine import run_engine_service
from automations.errors import AutomationsError
from automations.keys import Keys
from automations.proactive import run_timer_service
from automations.runtime.scheduler import run_scheduler_service
from automations.settings import Settings
from automations.streams import require_redis_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceContext:
    """What a service gets: settings, a shared client, the key names and the stop signal."""

    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    stopping: anyio.Event


ServiceFn = Callable[[ServiceContext], Awaitable[None]]


SERVICES: dict[str, ServiceFn] = {
    "engine": run_engine_service,
    "timer": run_timer_service,
    "dispatcher": run_dispatcher_service,
    "scheduler": run_scheduler_service,
}


def select(only: Sequence[str] | None, services: Mapping[str, ServiceFn]) -> dict[str, ServiceFn]:
    """The services to run; an unknown name is a clear error listing the known ones."""
    if not only:
        return dict(services)
    unknown = [name for name in only if name not in services]
    if unknown:
        raise AutomationsError(
            f"unknown service {', '.join(unknown)}; choose from {', '.join(services)}"
        )
    return {name: services[name] for name in only}


async def _watch_signals(
    stopping: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received: finishing in-flight work", signal.Signals(signum).name)
            stopping.set()
            return


async def wait_for_redis(
    client: aioredis.Redis, url: str, settings: Settings, stopping: anyio.Event
) -> bool:
    """Ping with capped backoff until Redis answers (logged once), then check its version.
    False when asked to stop first."""
    delay = 0.1
    warned = False
    while not stopping.is_set():
        try:
            await require_redis_version(client)
            if warned:
                log.warning("Redis at %s answers now", url)
            return True
        except CONNECTION_ERRORS as exc:
            if not warned:
                log.warning("waiting for Redis at %s (%s)", url, exc)
                warned = True
        with anyio.move_on_after(delay):
            await stopping.wait()
        delay = min(delay * 2, settings.reconnect_max_s)
    return False


async def _run_one(name: str, fn: ServiceFn, ctx: ServiceContext) -> None:
    await fn(ctx)
    log.info("%s stopped", name)


async def serve(
    settings: Settings, only: Sequence[str] | None = None, *,
    services: Mapping[str, ServiceFn] | None = None, stopping: anyio.Event | None = None,
) -> None:
    """Wait for Redis, run the chosen services until SIGTERM/SIGINT (or ``stopping``), then
    drain them.

    In-flight work gets ``shutdown_timeout_s`` to finish; after that the services are cancelled
    (their unacked entries are redelivered to another consumer).
    """
    chosen = select(only, services if services is not None else SERVICES)
    stopping = stopping or anyio.Event()
    client = connect(settings)
    ctx = ServiceContext(settings, client, Keys(settings.prefix), stopping)
    url = display_url(redis_url(settings))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(_watch_signals, stopping)
            if not await wait_for_redis(client, url, settings, stopping):
                tg.cancel_scope.cancel()
                return
            log.info("serving %s on %s (prefix %r)", ", ".join(chosen), url, settings.prefix)

            async def deadline() -> None:
                await stopping.wait()
                await anyio.sleep(settings.shutdown_timeout_s)
                log.warning("services still busy after %.0f s: cancelling them",
                            settings.shutdown_timeout_s)
                tg.cancel_scope.cancel()

            tg.start_soon(deadline)
            async with anyio.create_task_group() as services_tg:
                for name, fn in chosen.items():
                    services_tg.start_soon(_run_one, name, fn, ctx, name=name)
            tg.cancel_scope.cancel()  # every service returned: stop the watchers
    finally:
        await client.aclose()
    log.info("stopped")
