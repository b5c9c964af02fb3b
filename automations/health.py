"""``/metrics``, ``/healthz`` and ``/readyz`` of ``serve`` and ``worker``: a small Starlette app
served by uvicorn inside the service's task group.

- ``/metrics``: the process's ``Metrics`` in the Prometheus text format; the consumer-group
  gauges are read from Redis first, bounded in time, and a Redis away never fails a scrape.
- ``/healthz``: 200 while the process is alive and its event loop turns (a heartbeat task
  ticked within ``STALL_S``), else 503.
- ``/readyz``: 200 when Redis answers a PING and the services have started, else 503 (also
  while they drain after SIGTERM, so a balancer stops sending work first).

The socket is bound before the services start, so a port in use is a clear error at once;
uvicorn's own signal handlers are left out (the service watches SIGTERM and stops us).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from automations.connection import connect
from automations.errors import AutomationsError
from automations.metrics import Metrics, metrics_scope
from automations.settings import Settings

log = logging.getLogger(__name__)

BEAT_S = 0.5  # heartbeat of the event loop
STALL_S = 10.0  # /healthz fails when the loop has not turned for this long
PING_EVERY_S = 5.0  # Redis round trip sampled this often
PROBE_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0  # requests in hand get this long after the services stopped
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Health:
    """What the endpoints report on: set by the service that owns it."""

    metrics: Metrics
    redis: aioredis.Redis  # a client of its own: a probe cut short never touches the services'
    streams: Sequence[str] = ()  # whose consumer groups /metrics reports
    dead_streams: Sequence[str] = ()  # whose lengths /metrics reports
    stopping: anyio.Event | None = None  # set: draining, not ready
    started: bool = False  # the services run
    beat: float = field(default_factory=time.monotonic)

    @property
    def ready_to_work(self) -> bool:
        return self.started and not (self.stopping is not None and self.stopping.is_set())


def build_app(health: Health) -> Starlette:
    async def metrics(request: Request) -> Response:
        await health.metrics.read_groups(health.redis, health.streams, health.dead_streams)
        return Response(health.metrics.exposition(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        stalled = time.monotonic() - health.beat
        ok = stalled < STALL_S
        return JSONResponse({"ok": ok, "loop_stalled_s": round(stalled, 3)},
                            status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        redis_ok = await health.metrics.ping(health.redis, PROBE_TIMEOUT_S)
        started = health.ready_to_work
        ok = redis_ok and started
        return JSONResponse({"ok": ok, "redis": redis_ok, "started": started},
                            status_code=200 if ok else 503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz),
                             Route("/readyz", readyz)])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to the service."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one); a clear error when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AutomationsError(f"cannot listen on {host}:{port} for metrics: {exc}") from None
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def observability(
    settings: Settings, streams: Sequence[str], dead_streams: Sequence[str] = (),
    stopping: anyio.Event | None = None,
) -> AsyncIterator[Health | None]:
    """A ``Metrics`` in scope for the block (what is built in it counts there) and, when
    ``metrics_port`` is set, the endpoints served meanwhile (the ``Health`` to mark started;
    None when the port is unset)."""
    metrics = Metrics()
    with metrics_scope(metrics):
        if settings.metrics_port is None:
            yield None
            return
        client = connect(settings)
        health = Health(metrics, client, streams, dead_streams, stopping)
        try:
            async with health_server(health, settings.metrics_host, settings.metrics_port):
                yield health
        finally:
            await client.aclose()


@asynccontextmanager
async def health_server(health: Health, host: str, port: int) -> AsyncIterator[int]:
    """Serve the endpoints on ``host:port`` while the block runs; yields the bound port.
    On exit the server stops taking connections and finishes the requests in hand."""
    sock = bind(host, port)
    bound: int = sock.getsockname()[1]
    config = uvicorn.Config(build_app(health), log_config=None, log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    server = _Server(config)
    served = anyio.Event()

    async def run_server() -> None:
        try:
            await server.serve([sock])
        finally:
            served.set()

    shown = f"[{host}]" if ":" in host else host
    log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", shown, bound)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat, health)
            tg.start_soon(_sample_rtt, health)
            tg.start_soon(run_server)
            try:
                yield bound
            finally:
                health.started = False
                server.should_exit = True  # uvicorn looks every 0.1 s
                with anyio.move_on_after(STOP_TIMEOUT_S, shield=True):
                    await served.wait()
                tg.cancel_scope.cancel()
    finally:
        sock.close()


async def _heartbeat(health: Health) -> None:
    while True:
        health.beat = time.monotonic()
        await anyio.sleep(BEAT_S)


async def _sample_rtt(health: Health) -> None:
    while True:
        await health.metrics.ping(health.redis, PROBE_TIMEOUT_S)
        await anyio.sleep(PING_EVERY_S)
