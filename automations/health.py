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
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from automations.connection import connect
from automations.http_serving import bind, serving, shown
from automations.metrics import Metrics, metrics_scope
from automations.settings import Settings

log = logging.getLogger(__name__)

BEAT_S = 0.5  # heartbeat of the event loop
STALL_S = 10.0  # /healthz fails when the loop has not turned for this long
PING_EVERY_S = 5.0  # Redis round trip sampled this often
PROBE_TIMEOUT_S = 1.0
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
    sock = bind(host, port, "metrics")
    bound: int = sock.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", shown(host), bound)

    def stopped() -> None:
        health.started = False

    async with serving(build_app(health), sock, grace_s=2,
                       beside=[partial(_heartbeat, health), partial(_sample_rtt, health)],
                       on_stop=stopped):
        yield bound


async def _heartbeat(health: Health) -> None:
    while True:
        health.beat = time.monotonic()
        await anyio.sleep(BEAT_S)


async def _sample_rtt(health: Health) -> None:
    while True:
        await health.metrics.ping(health.redis, PROBE_TIMEOUT_S)
        await anyio.sleep(PING_EVERY_S)
