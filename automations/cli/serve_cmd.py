"""``automations serve``: run the services (all, or ``--only`` some) with logs on stderr."""

from __future__ import annotations

import logging
import sys

import anyio
import typer

from automations.cli.common import console, fail, load_settings, user_errors
from automations.connection import display_url
from automations.embedded import redis_for_serve
from automations.errors import AutomationsError
from automations.service import SERVICES, select, serve
from automations.settings import Settings

# How computed defaults read in the docs.
COMPUTED_DEFAULTS = {
    "data_dir": "`$XDG_DATA_HOME/automations` (else `~/.local/share/automations`)",
    "consumer_name": "`<hostname>-<pid>`",
}


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def serve_command(
    only: str = typer.Option(
        "", "--only", help=f"Comma-separated services to run (default all: {', '.join(SERVICES)})."
    ),
) -> None:
    """Run the engine services until SIGTERM/Ctrl-C, then finish in-flight work and exit."""
    settings = load_settings()
    if settings.log_level.upper() not in logging.getLevelNamesMapping():
        fail(f"invalid AUTOMATIONS_LOG_LEVEL {settings.log_level!r}")
    _configure_logging(settings.log_level)
    names = [n.strip() for n in only.split(",") if n.strip()] or None
    with user_errors():
        select(names, SERVICES)  # a typo fails before anything starts
        with redis_for_serve(settings) as resolved:
            try:
                anyio.run(serve, resolved, names)
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


def settings_command(
    markdown: bool = typer.Option(False, "--markdown", help="Print the documentation table."),
) -> None:
    """Show the effective settings (from AUTOMATIONS_* variables), or their documentation."""
    if markdown:
        typer.echo(settings_markdown())
        return
    settings = load_settings()
    for name, value in settings.model_dump().items():
        shown = display_url(value) if name == "redis_url" and value else value
        console.print(f"AUTOMATIONS_{name.upper()}={shown}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``settings`` to the root app."""
    app.command("serve")(serve_command)
    app.command("settings")(settings_command)
