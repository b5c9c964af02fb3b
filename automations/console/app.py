"""The console's Starlette app, and serving it: alone (``automations ui``) or as a service of
``serve``, under uvicorn in the caller's anyio task group (the pattern of ``health``).

Errors become answers, never tracebacks: not found 404, bad input 400, refused definitions
422 with every field-path error, Redis away 503; the API answers JSON, pages an error page.
Every response says its server time (``Server-Timing: app;dur=<ms>``), which the console
benchmark reads.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from urllib.parse import quote

import jinja2
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from automations.connection import CONNECTION_ERRORS
from automations.console import api, pages, security
from automations.console.commands import errors_json
from automations.console.context import Console
from automations.errors import AutomationsError, InvalidAutomation, NotFound
from automations.events import utcnow
from automations.http_serving import bind, serving, shown
from automations.insight.dead_letters import CannotRedrive
from automations.runtime.deployment_files import InvalidDeployment
from automations.settings import Settings
from automations.store import InvalidStoredAutomation

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


class Timing:
    """``Server-Timing: app;dur=<ms>`` on every response: the time to its first byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - started) * 1000
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={ms:.2f}".encode())]}
            await send(message)

        await self.app(scope, receive, timed)


def templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["q"] = lambda value: quote(str(value), safe="")
    return Jinja2Templates(env=env)


def classify(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, NotFound):
        return 404, str(exc)
    if isinstance(exc, tuple(CONNECTION_ERRORS)):
        return 503, f"Redis is unreachable: {exc}"
    if isinstance(exc, InvalidAutomation | InvalidDeployment):
        return 422, str(exc)
    if isinstance(exc, CannotRedrive | InvalidStoredAutomation):
        return 409, str(exc)
    return 400, str(exc)


def build_app(console: Console) -> Starlette:
    tpl = templates()

    async def failed(request: Request, exc: Exception) -> Response:
        status, message = classify(exc)
        if request.url.path.startswith("/api/"):
            body: dict[str, object] = {"error": message}
            if isinstance(exc, InvalidAutomation):
                body = {"error": "invalid automation", "errors": errors_json(exc)}
            return JSONResponse(body, status_code=status)
        errors = errors_json(exc) if isinstance(exc, InvalidAutomation) else []
        return tpl.TemplateResponse(
            request, "error.html", {"status": status, "message": message, "errors": errors,
                                    "nav": "", "csrf": getattr(request.state, "csrf", ""),
                                    "done": None, "token_set": bool(console.settings.ui_token)},
            status_code=status)

    handled: list[type[Exception]] = [AutomationsError, ValueError, LookupError,
                                      *(e for e in CONNECTION_ERRORS if issubclass(e, Exception))]
    return Starlette(
        routes=[*api.routes(console), *pages.routes(console, tpl),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        middleware=[Middleware(Timing),
                    Middleware(security.Guard, token=console.settings.ui_token)],
        exception_handlers={e: failed for e in handled},
    )


@asynccontextmanager
async def console_server(settings: Settings, redis: aioredis.Redis, *, host: str | None = None,
                         port: int | None = None) -> AsyncIterator[int]:
    """Serve the console while the block runs; yields the bound port. ``InsecureBind`` for a
    non-loopback address without a token, ``AutomationsError`` when the port cannot be had."""
    host = settings.ui_host if host is None else host
    port = settings.ui_port if port is None else port
    security.check_bind(host, settings.ui_token)
    sock = bind(host, port, "the web console")
    bound: int = sock.getsockname()[1]
    console = Console(settings, redis)
    log.info("web console on http://%s:%d/%s", shown(host), bound,
             " (token required)" if settings.ui_token else "")
    async with serving(build_app(console), sock, grace_s=1, beside=[partial(warm, console)]):
        yield bound


async def warm(console: Console) -> None:
    """Read the automations and the last day's firings once, before the first page needs
    them (a failure here only leaves the work to that page)."""
    try:
        await console.automations.refresh()
        await console.counts.refresh(utcnow())
    except (*CONNECTION_ERRORS, AutomationsError) as exc:  # type: ignore[misc]
        log.warning("web console: warming its caches failed (%s); pages will retry", exc)
        return
    # The caches are long-lived: keep the collector from walking them on every full
    # collection (a pause of 100+ ms with 10,000 automations in memory).
    gc.freeze()
