"""``automations runs ls|inspect``: flow runs with state, deployment, parameters, creator and
state timeline (``automations.insight.runs``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Annotated, TypeVar

import orjson
import typer
from rich.markup import escape
from rich.table import Column, Table

from automations.cli.common import console, fail, load_settings, run
from automations.connection import connect
from automations.insight.runs import check_state, created_by, find_run, list_runs, run_json
from automations.keys import Keys
from automations.runtime.deployments import DeploymentStore
from automations.runtime.flow_runs import FlowRun, FlowRunStore

T = TypeVar("T")

runs_app = typer.Typer(help="Flow runs: list them, inspect one with its state timeline.",
                       no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output for scripts.")]
COLOURS = {"COMPLETED": "green", "FAILED": "red", "CRASHED": "red", "RUNNING": "cyan",
           "CANCELLED": "yellow", "CANCELLING": "yellow", "PAUSED": "yellow"}


def _with_store(fn: Callable[[FlowRunStore], Awaitable[T]]) -> T:
    settings = load_settings()

    async def main() -> T:
        client = connect(settings)
        try:
            return await fn(FlowRunStore(client, settings, Keys.from_settings(settings)))
        finally:
            await client.aclose()

    return run(main)


@runs_app.command("ls")
def ls_cmd(
    deployment: Annotated[str | None, typer.Option(
        "--deployment", "-d", metavar="D", help="Only runs of this deployment (name or id).")
    ] = None,
    state: Annotated[str | None, typer.Option(
        "--state", "-s", metavar="S", help="Only runs in this state (failed, running, ...).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N",
                                       help="At most N runs (the newest).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Flow runs, newest first, with state, deployment and who created them."""
    if state is not None:
        try:
            check_state(state)
        except ValueError as exc:
            fail(str(exc))

    async def main(store: FlowRunStore) -> list[FlowRun]:
        runs = await list_runs(store, deployment=deployment, state=state, limit=limit)
        if deployment is not None and not runs:
            await DeploymentStore(store.redis, store.keys).resolve(deployment)  # NotFound: 3
        return runs

    runs = _with_store(main)
    if as_json:
        for flow_run in runs:
            typer.echo(orjson.dumps(run_json(flow_run)).decode())
        return
    if not runs:
        console.print("no flow runs", highlight=False)
        return
    # No id column (--json has it; inspect takes the name too): it would squeeze the rest.
    table = Table(Column("created (UTC)", no_wrap=True), Column("name", no_wrap=True),
                  Column("deployment", overflow="fold"), Column("state", no_wrap=True),
                  Column("created by", overflow="fold"))
    for flow_run in runs:
        table.add_row(flow_run.created.astimezone(UTC).strftime("%m-%d %H:%M:%S"),
                      escape(flow_run.name), escape(flow_run.deployment_name or "-"),
                      _state(flow_run), escape(created_by(flow_run)))
    console.print(table)


@runs_app.command("inspect")
def inspect_cmd(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="Flow run id (or name).")],
    as_json: JsonOpt = False,
) -> None:
    """One flow run: state, deployment, parameters, creator and its state timeline."""

    async def main(store: FlowRunStore) -> FlowRun:
        return await find_run(store, run_id)

    flow_run = _with_store(main)
    if as_json:
        typer.echo(orjson.dumps(run_json(flow_run, full=True)).decode())
        return
    info = Table.grid(padding=(0, 2))
    for name, value in (
        ("name", flow_run.name), ("id", str(flow_run.id)), ("flow", flow_run.flow_name),
        ("deployment", flow_run.deployment_name or "-"), ("entrypoint", flow_run.entrypoint),
        ("created by", created_by(flow_run)), ("created", flow_run.created.isoformat()),
        ("worker", flow_run.worker or "-"), ("run count", str(flow_run.run_count)),
        ("parameters", orjson.dumps(flow_run.parameters).decode()),
    ):
        info.add_row(name, escape(value))
    info.add_row("state", _state(flow_run))
    console.print(info)
    timeline = Table(Column("at (UTC)", no_wrap=True), "state", Column("message",
                                                                      overflow="fold"),
                     title="timeline")
    for past in flow_run.timeline():
        timeline.add_row(past.timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                         escape(past.name), escape(past.message))
    console.print(timeline)


def _state(flow_run: FlowRun) -> str:
    colour = COLOURS.get(flow_run.state.type.value, "dim")
    return f"[{colour}]{escape(flow_run.state.name)}[/]"



def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(runs_app, name="runs")
