"""``automations deployments apply|ls|inspect|run|pause|resume|delete``; ``automations worker``."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import anyio
import orjson
import typer
from rich.table import Column, Table

from automations.cli.common import console, fail, load_settings, run
from automations.connection import connect
from automations.keys import Keys
from automations.runtime.deployment_files import load_file
from automations.runtime.deployments import DeploymentStore
from automations.runtime.flow_runs import FlowRunStore, build_flow_run
from automations.runtime.worker import Worker
from automations.settings import Settings

deployments_app = typer.Typer(help="Deployments: apply, list, run, pause and resume them.",
                              no_args_is_help=True)


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON keeps its type (``n=3`` is 3)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--param expects key=value, got {pair!r}")
        try:
            out[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[key] = value
    return out


@deployments_app.command("apply")
def apply_cmd(
    file: Annotated[Path, typer.Argument(help="YAML, JSON or Python file with deployments.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check only.")] = False,
) -> None:
    """Create or update deployments (by name) from FILE."""
    settings = load_settings()

    async def main() -> None:
        found = load_file(file)
        if dry_run:
            for dep in found:
                console.print(f"ok      {dep.name} ({dep.entrypoint})", highlight=False)
            return
        client = connect(settings)
        try:
            for kind, dep in await DeploymentStore(client, Keys(settings.prefix)).apply(found):
                console.print(f"{kind:<9} {dep.name}  {dep.id}", highlight=False)
        finally:
            await client.aclose()

    run(main)


@deployments_app.command("ls")
def ls_cmd() -> None:
    """List deployments with their schedules and state."""
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            deployments = await DeploymentStore(client, Keys(settings.prefix)).all()
        finally:
            await client.aclose()
        table = Table(Column("name", no_wrap=True), "flow", "entrypoint", "schedules", "status",
                      Column("id", overflow="fold"))  # folds on a narrow terminal
        for dep in deployments:
            schedules = ", ".join(s.describe() + ("" if s.active else " (inactive)")
                                  for s in dep.schedules) or "-"
            table.add_row(dep.name, dep.flow_name, dep.entrypoint, schedules,
                          "paused" if dep.paused else "active", str(dep.id))
        console.print(table)

    run(main)


@deployments_app.command("inspect")
def inspect_cmd(name: Annotated[str, typer.Argument(help="Deployment name or id.")]) -> None:
    """Print a deployment as JSON."""
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            dep = await DeploymentStore(client, Keys(settings.prefix)).resolve(name)
        finally:
            await client.aclose()
        typer.echo(orjson.dumps(dep.record(), option=orjson.OPT_INDENT_2).decode())

    run(main)


@deployments_app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Deployment name or id.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p",
                                                    help="key=value (repeatable).")] = None,
) -> None:
    """Create a flow run of a deployment now; a worker runs it."""
    settings = load_settings()
    params = _parse_params(param or [])

    async def main() -> None:
        client = connect(settings)
        try:
            keys = Keys(settings.prefix)
            dep = await DeploymentStore(client, keys).resolve(name)
            flow_run = build_flow_run(dep, params, message="Created from the CLI")
            await FlowRunStore(client, settings, keys).create(flow_run)
        finally:
            await client.aclose()
        console.print(f"created flow run {flow_run.name} ({flow_run.id})", highlight=False)

    run(main)


def _set_paused(name: str, paused: bool) -> None:
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            store = DeploymentStore(client, Keys(settings.prefix))
            dep = await store.set_paused((await store.resolve(name)).id, paused)
        finally:
            await client.aclose()
        console.print(f"{'paused' if paused else 'resumed'} {dep.name}", highlight=False)

    run(main)


@deployments_app.command("pause")
def pause_cmd(name: Annotated[str, typer.Argument(help="Deployment name or id.")]) -> None:
    """Pause a deployment's schedules (no new scheduled runs)."""
    _set_paused(name, True)


@deployments_app.command("resume")
def resume_cmd(name: Annotated[str, typer.Argument(help="Deployment name or id.")]) -> None:
    """Resume a deployment's schedules, from now on (missed runs are not created)."""
    _set_paused(name, False)


@deployments_app.command("delete")
def delete_cmd(name: Annotated[str, typer.Argument(help="Deployment name or id.")]) -> None:
    """Delete a deployment (its flow runs are kept)."""
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            dep = await DeploymentStore(client, Keys(settings.prefix)).delete(name)
        finally:
            await client.aclose()
        console.print(f"deleted {dep.name}", highlight=False)

    run(main)


async def serve_worker(settings: Settings, concurrency: int) -> None:
    """Run a worker until SIGTERM/SIGINT; runs in hand get ``shutdown_timeout_s`` to finish,
    then their processes are killed (and the runs recorded Crashed)."""
    client = connect(settings)
    worker = Worker(client, settings, concurrency=concurrency)
    logging.getLogger(__name__).info("worker %s started (concurrency %d)", worker.name,
                                     concurrency)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, worker, settings)
            await worker.run()
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()


async def _stop_on_signal(worker: Worker, settings: Settings) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            worker.stop()
            break
    await anyio.sleep(settings.shutdown_timeout_s)
    await worker.kill_all()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(deployments_app, name="deployments")

    @app.command("worker")
    def worker_cmd(
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1,
                                                 help="Flow runs at once.")] = 4,
    ) -> None:
        """Run flow runs from the runs stream, each in its own process."""
        settings = load_settings()
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run(lambda: serve_worker(settings, concurrency))

