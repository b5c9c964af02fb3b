"""``automations serve``: run the services (all, or ``--only`` some) with logs on stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable
from typing import Annotated, TypeVar

import anyio
import typer

from automations.cli.common import console, fail, load_settings, user_errors
from automations.connection import (
    DEFAULT_URL,
    display_url,
    embedded_url,
    loopback_url,
    recorded_port,
    redis_url,
)
from automations.embedded import answers, read_state, redis_for_serve
from automations.errors import AutomationsError
from automations.logging_setup import configure_logging
from automations.service import SERVICES, select, serve
from automations.settings import Settings

T = TypeVar("T")

# How computed defaults read in the docs.
COMPUTED_DEFAULTS = {
    "data_dir": "`$XDG_DATA_HOME/automations` (else `~/.local/share/automations`)",
    "consumer_name": "`<hostname>-<pid>`",
}


def _configure_logging(level: str, fmt: str = "text") -> None:
    configure_logging(level, fmt, sys.stderr)


def serve_command(
    only: str = typer.Option(
        "", "--only", help=f"Comma-separated services to run (default all: {', '.join(SERVICES)})."
    ),
) -> None:
    """Run the engine services until SIGTERM/Ctrl-C, then finish in-flight work and exit."""
    settings = load_settings()
    if settings.log_level.upper() not in logging.getLevelNamesMapping():
        fail(f"invalid AUTOMATIONS_LOG_LEVEL {settings.log_level!r}")
    _configure_logging(settings.log_level, settings.log_format)
    names = [n.strip() for n in only.split(",") if n.strip()] or None
    with user_errors():
        select(names, SERVICES)  # a typo fails before anything starts
        with redis_for_serve(settings) as resolved:
            try:
                anyio.run(serve, resolved, names)
            except BaseExceptionGroup as group:
                raise unwrap(group) from None


async def unwrapped(main: Awaitable[T]) -> T:
    """``await main``, with an exception group of task groups turned into the first of our
    errors inside it (see ``unwrap``)."""
    try:
        return await main
    except BaseExceptionGroup as group:
        raise unwrap(group) from None


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first of our own errors in a task group's exception group (a readable line), else
    the group itself (a real bug: keep the traceback)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = unwrap(exc)
        if isinstance(exc, AutomationsError):
            return exc
    return group


def settings_markdown() -> str:
    """The README's settings table, generated from the ``Settings`` fields."""
    rows = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if name in COMPUTED_DEFAULTS:
            default = COMPUTED_DEFAULTS[name]
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `AUTOMATIONS_{name.upper()}` | {default} | {description} |")
    return "\n".join(rows)


def redis_in_use(settings: Settings) -> tuple[str | None, str, str]:
    """``(url, source, detail)`` of the Redis the commands use now: the configured one, the
    embedded one a running ``serve`` started, one answering on localhost, or none yet."""
    data_dir = settings.data_dir
    if settings.redis_sentinels:
        return (redis_url(settings), "configured",
                f"AUTOMATIONS_REDIS_SENTINELS, master {settings.redis_sentinel_master}")
    if settings.redis_url:
        return settings.redis_url, "configured", "AUTOMATIONS_REDIS_URL"
    running = embedded_url(data_dir)
    if running is not None:
        state = read_state(data_dir) or {}
        owner = f" (pid {state['owner']})" if isinstance(state.get("owner"), int) else ""
        return running, "embedded", f"started by `automations serve`{owner}, see {data_dir}"
    if settings.probe_localhost and answers(DEFAULT_URL):
        return DEFAULT_URL, "localhost", "answering on localhost"
    port = recorded_port(data_dir)
    where = f" at {loopback_url(port)}" if port is not None else ""
    return None, "none", f"`automations serve` would start an embedded Redis{where} in {data_dir}"


def settings_command(
    markdown: Annotated[bool, typer.Option("--markdown",
                                           help="Print the documentation table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: the settings and "
                                          "the Redis in use.")] = False,
) -> None:
    """Show the effective settings (from AUTOMATIONS_* variables) and the Redis URL in use, or
    the settings' documentation."""
    if markdown and as_json:
        fail("give --markdown or --json, not both")
    if markdown:
        typer.echo(settings_markdown())
        return
    settings = load_settings()
    values = settings.model_dump(mode="json")
    if values["redis_url"]:
        values["redis_url"] = display_url(values["redis_url"])
    url, source, detail = redis_in_use(settings)
    shown = display_url(url) if url else None
    if as_json:
        redis = {"url": shown, "source": source, "detail": detail}
        typer.echo(json.dumps({"settings": values, "redis": redis}))
        return
    for name, value in values.items():
        text = "None" if value is None else value
        console.print(f"AUTOMATIONS_{name.upper()}={text}", highlight=False, soft_wrap=True)
    console.print(f"Redis in use: {shown or 'none'} ({detail})", highlight=False,
                  soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``settings`` to the root app."""
    app.command("serve")(serve_command)
    app.command("settings")(settings_command)
