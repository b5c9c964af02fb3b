"""Every service shell, and ``serve``: the chosen services of one process in one task group,
drained on SIGTERM/SIGINT.

A service is ``async def run_x(ctx) -> None``: it builds its worker from ``ctx`` and runs it
until ``ctx.stopping`` is set, then the worker finishes what it has in hand and returns. The
path from ``serve`` to a consume loop is three calls: ``serve`` -> ``run_engine`` ->
``Engine.run`` -> ``StreamConsumer.run``.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from automations.backoff import Backoff, outage_scope, retry
from automations.blocks import BlockStore
from automations.connection import (
    CONNECTION_ERRORS,
    connect,
    display_url,
    redis_url,
    unreachable_hint,
)
from automations.console.app import console_server
from automations.console.security import InsecureBind
from automations.dispatch.dispatcher import Dispatcher
from automations.dispatch.ledger import DEAD_ACTIONS
from automations.dispatch.ports import Ports
from automations.engine.engine import Engine
from automations.engine.timer import ProactiveTimer
from automations.errors import AutomationsError, BusUnavailable
from automations.health import observability
from automations.keys import Keys
from automations.layout import ensure_layout
from automations.prefect.backend import PrefectDeployments, PrefectFlowRuns
from automations.prefect.bridge import run_bridge
from automations.prefect.client import client_for
from automations.reload import follow, resync
from automations.runtime.ports import DeploymentsAdapter, FlowRunsAdapter
from automations.runtime.scheduler import Scheduler
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.upkeep import require_redis_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceContext:
    """What a service gets: settings, a shared client, the key names and the stop signal."""

    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    stopping: anyio.Event


ServiceFn = Callable[[ServiceContext], Coroutine[object, object, None]]


async def run_engine(ctx: ServiceContext) -> None:
    """Load the stored automations, then evaluate the events stream while following the
    store's change log (hot reload) until ``ctx.stopping``."""
    engine = Engine(ctx.redis, ctx.settings, keys=ctx.keys)
    store = AutomationStore(ctx.redis, ctx.keys)
    backoff = Backoff("engine: loading automations", cap_s=ctx.settings.reconnect_max_s,
                      logger=log)
    position: str | None = None
    async with anyio.create_task_group() as loading:  # a stop request ends the wait for Redis
        loading.start_soon(_cancel_when_set, ctx.stopping, loading.cancel_scope)
        position = await retry(partial(resync, store, engine), backoff)
        loading.cancel_scope.cancel()
    if position is None:
        return
    settle_loaded_objects()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(follow, store, engine, ctx.stopping, after=position))
        await engine.run(ctx.stopping)
        tg.cancel_scope.cancel()


def settle_loaded_objects() -> None:
    """Move what exists now (the loaded automations, their compiled triggers and plans) out of
    the garbage collector's sight: its full collections walked them all, 15-20% of the
    engine's time at 1,000 automations (``gc.freeze``; nothing frozen is ever freed)."""
    gc.collect()
    gc.freeze()


async def run_timer(ctx: ServiceContext) -> None:
    """Fire Proactive windows as they end, until ``ctx.stopping``."""
    await ProactiveTimer(ctx.redis, ctx.settings, keys=ctx.keys).run(ctx.stopping)


def build_ports(redis: aioredis.Redis, settings: Settings, keys: Keys) -> Ports:
    """Every port an executor may use: with ``prefect_api_url`` set, deployments and flow
    runs are that Prefect server's."""
    if settings.prefect_api_url:
        client = client_for(settings)
        return Ports(automations=AutomationStore(redis, keys), blocks=BlockStore(redis, keys),
                     deployments=PrefectDeployments(client), flow_runs=PrefectFlowRuns(client))
    return Ports(automations=AutomationStore(redis, keys), blocks=BlockStore(redis, keys),
                 deployments=DeploymentsAdapter(redis, settings, keys),
                 flow_runs=FlowRunsAdapter(redis, settings, keys))


async def run_dispatcher(ctx: ServiceContext) -> None:
    """Dispatch firings until ``ctx.stopping``; then finish the actions in hand."""
    ports = build_ports(ctx.redis, ctx.settings, ctx.keys)
    async with Dispatcher(ctx.redis, ctx.settings, ports=ports, keys=ctx.keys) as dispatcher:
        await dispatcher.run(ctx.stopping)


async def run_scheduler(ctx: ServiceContext) -> None:
    """Create the flow runs of deployment schedules until ``ctx.stopping``."""
    await Scheduler(ctx.redis, ctx.settings, ctx.keys).run(ctx.stopping)


async def run_prefect_bridge(ctx: ServiceContext) -> None:
    """Bridge the events of ``prefect_api_url`` in (and ours back out) until ``ctx.stopping``."""
    await run_bridge(ctx.redis, ctx.settings, ctx.keys, ctx.stopping)


async def _run_service(name: str, fn: ServiceFn, ctx: ServiceContext) -> None:
    """One service of ``serve``: its loops' Redis outages are logged as one (``Outage``)."""
    with outage_scope(name, log):
        await fn(ctx)


def watched_streams(keys: Keys) -> tuple[list[str], list[str]]:
    """The streams whose consumer groups, and the dead-letter streams whose lengths,
    ``/metrics`` reports."""
    streams = [keys.events, *keys.outboxes, keys.runs]
    return streams, [keys.dead(s) for s in streams] + [keys.dead(DEAD_ACTIONS)]


async def run_observed(settings: Settings, component: str,
                       main: Callable[[], Coroutine[object, object, None]]) -> None:
    """``main`` (the worker) with metrics in scope, served on ``metrics_port`` when set, and
    its Redis outages logged as one."""
    async with observability(settings, *watched_streams(Keys.from_settings(settings))) as health:
        with outage_scope(component, log):
            if health is not None:
                health.started = True
            await main()


async def _cancel_when_set(stopping: anyio.Event, scope: anyio.CancelScope) -> None:
    await stopping.wait()
    scope.cancel()


async def run_console(ctx: ServiceContext) -> None:
    """The web console on ``ui_host:ui_port`` until ``ctx.stopping``. A port in use is one
    WARNING and the other services go on (several ``serve`` processes share a host); a
    non-loopback address without a token stops ``serve`` (exit code 2)."""
    try:
        async with console_server(ctx.settings, ctx.redis):
            await ctx.stopping.wait()
    except InsecureBind:
        raise
    except AutomationsError as exc:
        log.warning("web console not started: %s; the other services keep running (set "
                    "AUTOMATIONS_UI_PORT for another port)", exc)


SERVICES: dict[str, ServiceFn] = {
    "engine": run_engine,
    "timer": run_timer,
    "dispatcher": run_dispatcher,
    "scheduler": run_scheduler,
    "bridge": run_prefect_bridge,
    "console": run_console,
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
    # SIGHUP (the terminal closed) too: the embedded Redis, in its own session, is stopped.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received: finishing in-flight work", signal.Signals(signum).name)
            stopping.set()
            return


async def wait_for_redis(
    client: aioredis.Redis, url: str, settings: Settings, stopping: anyio.Event
) -> bool:
    """Ping with capped backoff until Redis answers (logged once), then check its version and
    the key layout (``automations.layout``: ``LayoutMismatch``, exit 2). False when asked to
    stop first; ``BusUnavailable`` after ``startup_timeout_s`` (exit 4)."""
    backoff = Backoff(f"waiting for Redis at {url}", first_s=0.1, cap_s=settings.reconnect_max_s,
                      logger=log)
    last: BaseException | None = None
    with anyio.move_on_after(settings.startup_timeout_s):
        while not stopping.is_set():
            try:
                await require_redis_version(client)
                await ensure_layout(client, Keys.from_settings(settings))
                backoff.recovered()
                return True
            except CONNECTION_ERRORS as exc:
                last = exc
                await backoff.wait(exc, stopping)
        return False
    raise BusUnavailable(f"cannot reach Redis at {url} within {settings.startup_timeout_s:g} s "
                         f"({last or 'no answer'}){unreachable_hint(settings)}")


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
    ctx = ServiceContext(settings, client, Keys.from_settings(settings), stopping)
    url = display_url(redis_url(settings))
    try:
        async with observability(settings, *watched_streams(ctx.keys), stopping) as health, \
                anyio.create_task_group() as tg:
            await tg.start(_watch_signals, stopping)
            if not await wait_for_redis(client, url, settings, stopping):
                tg.cancel_scope.cancel()
                return
            log.info("serving %s on %s (prefix %r)", ", ".join(chosen), url, settings.prefix)
            if health is not None:
                health.started = True

            async def deadline() -> None:
                await stopping.wait()
                await anyio.sleep(settings.shutdown_timeout_s)
                log.warning("services still busy after %.0f s: cancelling them",
                            settings.shutdown_timeout_s)
                tg.cancel_scope.cancel()

            tg.start_soon(deadline)
            async with anyio.create_task_group() as services_tg:
                for name, fn in chosen.items():
                    services_tg.start_soon(_run_service, name, fn, ctx, name=name)
            tg.cancel_scope.cancel()  # every service returned: stop the watchers
    finally:
        await client.aclose()
    log.info("stopped")
