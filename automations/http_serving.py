"""Serving a small ASGI app (the metrics endpoints, the web console) inside a service's task
group: uvicorn on a socket we bind ourselves, stopped with the service, never owning signals."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp

from automations.errors import AutomationsError

STOP_TIMEOUT_S = 5.0  # requests in hand get this long after the services stopped


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to the service."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, what: str) -> socket.socket:
    """The listening socket (port 0: a free one); a clear error naming ``what`` it is for
    when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AutomationsError(f"cannot listen on {host}:{port} for {what}: {exc}") from None
    sock.setblocking(False)
    return sock


def shown(host: str) -> str:
    """``host`` as it goes in a URL."""
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def serving(app: ASGIApp, sock: socket.socket, *, grace_s: int,
                  beside: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
                  on_stop: Callable[[], None] | None = None) -> AsyncIterator[None]:
    """Serve ``app`` on ``sock`` (and run ``beside`` tasks) while the block runs. On exit the
    server stops taking connections and finishes the requests in hand (``on_stop`` first);
    the socket is closed."""
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=grace_s)
    server = _Server(config)
    served = anyio.Event()

    async def run_server() -> None:
        try:
            await server.serve([sock])
        finally:
            served.set()

    try:
        async with anyio.create_task_group() as tg:
            for task in beside:
                tg.start_soon(task)
            tg.start_soon(run_server)
            try:
                yield
            finally:
                if on_stop is not None:
                    on_stop()
                server.should_exit = True  # uvicorn looks every 0.1 s
                with anyio.move_on_after(STOP_TIMEOUT_S, shield=True):
                    await served.wait()
                tg.cancel_scope.cancel()
    finally:
        sock.close()
