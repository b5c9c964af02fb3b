"""The thin typer root: parse arguments, build ``Settings``, call a library function.

Each command group lives in its own module and registers itself here.
"""

from __future__ import annotations

import orjson
import typer

from automations import __version__
from automations.cli import (
    automations_cmd,
    blocks_cmd,
    dead_cmd,
    deployments_cmd,
    events_cmd,
    explain_cmd,
    history_cmd,
    operator_cmd,
    prefect_cmd,
    replay_cmd,
    runs_cmd,
    serve_cmd,
    ui_cmd,
)

app = typer.Typer(
    name="automations",
    help="Event-driven automations on Redis Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                  help="Print the version and exit."),
) -> None:
    """Event-driven automations on Redis Streams."""


@app.command()
def version(
    as_json: bool = typer.Option(False, "--json", help='Print {"version": ...}.'),
) -> None:
    """Print the version."""
    typer.echo(orjson.dumps({"version": __version__}).decode() if as_json else __version__)


serve_cmd.register(app)
events_cmd.register(app)
automations_cmd.register(app)
blocks_cmd.register(app)
deployments_cmd.register(app)
operator_cmd.register(app)
replay_cmd.register(app)
explain_cmd.register(app)
history_cmd.register(app)
dead_cmd.register(app)
runs_cmd.register(app)
prefect_cmd.register(app)
ui_cmd.register(app)


def main() -> None:
    app()
