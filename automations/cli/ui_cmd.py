"""``automations ui [--host H] [--port P]``: the web console alone (``serve`` runs it too).

Binds ``AUTOMATIONS_UI_HOST:AUTOMATIONS_UI_PORT`` (127.0.0.1:4200) unless given; any
non-loopback address needs ``AUTOMATIONS_UI_TOKEN`` and is refused without it (exit code 2),
as is a port in use. Runs until SIGTERM/SIGINT. With ``--json`` the one line it prints once
listening is ``{"url": ..., "host": ..., "port": ..., "token_required": ...}`` (for scripts
that start it on port 0).
"""

from __future__ import annotations

import signal
from typing import Annotated

import anyio
import typer

from automations.cli.common import JsonFlag, fail, load_settings, print_json, user_errors
from automations.cli.serve_cmd import unwrapped
from automations.connection import connect
from automations.console.app import console_server
from automations.console.security import InsecureBind, check_bind
from automations.logging_setup import configure_logging
from automations.settings import Settings


async def run_ui(settings: Settings, host: str, port: int, as_json: bool) -> None:
    client = connect(settings)
    try:
        async with console_server(settings, client, host=host, port=port) as bound:
            shown = f"[{host}]" if ":" in host else host
            url = f"http://{shown}:{bound}/"
            if as_json:
                print_json({"url": url, "host": host, "port": bound,
                            "token_required": bool(settings.ui_token)})
            else:
                typer.echo(f"web console on {url} (Ctrl-C to stop)", err=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                            signal.SIGHUP) as signals:
                async for _ in signals:
                    break
    finally:
        await client.aclose()


def ui(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default "
                                             "AUTOMATIONS_UI_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535, help="Port (default "
                                             "AUTOMATIONS_UI_PORT, 4200; 0: a free one).")]
    = None,
    as_json: JsonFlag = False,
) -> None:
    """Serve the web console: automations, live events, firings, dead letters, runs."""
    settings = load_settings()
    host = settings.ui_host if host is None else host
    port = settings.ui_port if port is None else port
    try:
        check_bind(host, settings.ui_token)
    except InsecureBind as exc:
        fail(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    with user_errors():
        anyio.run(lambda: unwrapped(run_ui(settings, host, port, as_json)))


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
