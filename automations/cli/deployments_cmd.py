"""``automations deployments apply|ls|inspect|run|pause|resume|delete``; ``automations worker``.

``run`` checks the parameters against the flow's signature (the schema ``apply`` stored) before
creating the run: an unknown name, a missing required parameter or a value of the wrong type is
refused with exit code 2, instead of a run the worker can only fail. Every command takes
``--json`` (one object on stdout; ``ls`` one per line).
"""

from __future__ import annotations

import logging
import re
import signal
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
import orjson
import typer
import yaml
from rich.markup import escape
from rich.table import Column, Table

from automations.cli.common import (
    JsonFlag,
    console,
    err_console,
    fail,
    load_settings,
    print_json,
    run,
)
from automations.cli.serve_cmd import unwrapped
from automations.connection import connect, display_url, redis_url
from automations.keys import Keys
from automations.logging_setup import configure_logging
from automations.runtime.deployment_files import (
    InvalidDeployment,
    check_run_parameters,
    load_file,
)
from automations.runtime.deployments import Deployment, DeploymentStore
from automations.runtime.flow_runs import FlowRunStore, build_flow_run
from automations.runtime.worker import Worker
from automations.service import run_observed, wait_for_redis
from automations.settings import Settings

NameArg = Annotated[str, typer.Argument(help="Deployment name or id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one object per line).")]

_PROBLEM = re.compile(r"^(deployments\[\d+\]\S*?)(?: \((.+?)\))?: (.+)$", re.DOTALL)
"""One line of ``invalid deployments:``: ``deployments[0].field: msg``, ``deployments[1] (name):
msg``."""
APPLY_KINDS = ("created", "updated", "unchanged")

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
    as_json: JsonFlag = False,
) -> None:
    """Create or update deployments (by name) from FILE."""
    settings = load_settings()

    async def main() -> None:
        try:
            found = load_file(file)
        except InvalidDeployment as exc:  # the text goes to stderr (exit code 2) as well
            if as_json:
                print_json({"errors": deployment_errors(exc, file)})
            raise
        if dry_run:
            if as_json:
                print_json(_apply_json([("valid", dep) for dep in found], dry_run=True))
                return
            for dep in found:
                console.print(f"ok      {dep.name} ({dep.entrypoint})", highlight=False)
            return
        client = connect(settings)
        try:
            applied = await DeploymentStore(client, Keys.from_settings(settings)).apply(found)
        finally:
            await client.aclose()
        if as_json:
            print_json(_apply_json(applied, dry_run=False))
            return
        for kind, dep in applied:
            console.print(f"{kind:<9} {dep.name}  {dep.id}", highlight=False)

    run(main)


def _apply_json(applied: list[tuple[str, Deployment]], *, dry_run: bool) -> dict[str, Any]:
    """Names by outcome, like ``automations apply --json``, and each deployment with its id
    (a dry run checks the file only: outcome ``valid``, no id yet)."""
    out: dict[str, Any] = {kind: [d.name for k, d in applied if k == kind]
                           for kind in APPLY_KINDS}
    out["deployments"] = [{"name": d.name, "id": None if dry_run else str(d.id),
                           "entrypoint": d.entrypoint, "result": kind} for kind, d in applied]
    out["dry_run"] = dry_run
    return out


def deployment_errors(exc: InvalidDeployment, file: Path) -> list[dict[str, Any]]:
    """``InvalidDeployment``'s lines as ``file``, ``deployment`` (name, when the line has it),
    ``path`` (``deployments[0].entrypoint``) and ``message``; null where a line has none."""
    text = str(exc).removeprefix(f"{file}: ")
    head, _, rest = text.partition("\n")
    lines = [line.strip() for line in rest.split("\n  ")] \
        if head == "invalid deployments:" and rest else [text]
    errors = []
    for line in lines:
        found = _PROBLEM.match(line)
        path, name, message = found.groups() if found else (None, None, line)
        errors.append({"file": str(file), "deployment": name, "path": path, "message": message})
    return errors


@deployments_app.command("ls")
def ls_cmd(as_json: JsonOpt = False) -> None:
    """List deployments with their schedules and state."""
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            deployments = await DeploymentStore(client, Keys.from_settings(settings)).all()
        finally:
            await client.aclose()
        if as_json:
            for dep in deployments:
                typer.echo(orjson.dumps(dep.record()).decode())
            return
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
def inspect_cmd(
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the default).")] = False,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="Print YAML.")] = False,
) -> None:
    """Print a deployment as JSON (or YAML with `--yaml`)."""
    settings = load_settings()
    if as_json and as_yaml:
        fail("give --json or --yaml, not both")

    async def main() -> None:
        client = connect(settings)
        try:
            dep = await DeploymentStore(client, Keys.from_settings(settings)).resolve(name)
        finally:
            await client.aclose()
        if as_yaml:
            typer.echo(yaml.safe_dump(dep.record(), sort_keys=False, allow_unicode=True), nl=False)
            return
        typer.echo(orjson.dumps(dep.record(), option=orjson.OPT_INDENT_2).decode())

    run(main)


@deployments_app.command("run")
def run_cmd(
    name: NameArg,
    param: Annotated[list[str] | None, typer.Option("--param", "-p",
                                                    help="key=value (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new run as JSON.")]
    = False,
) -> None:
    """Create a flow run of a deployment now; a worker runs it. Parameters are checked
    against the flow's signature first (exit code 2 when they do not fit)."""
    settings = load_settings()
    params = _parse_params(param or [])

    async def main() -> None:
        client = connect(settings)
        try:
            keys = Keys.from_settings(settings)
            dep = await DeploymentStore(client, keys).resolve(name)
            note = check_run_parameters(dep, params)
            if note:
                err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False,
                                  soft_wrap=True)
            flow_run = build_flow_run(dep, params, message="Created from the CLI")
            await FlowRunStore(client, settings, keys).create(flow_run)
        finally:
            await client.aclose()
        if as_json:
            typer.echo(orjson.dumps(flow_run.record()).decode())
            return
        console.print(f"created flow run {flow_run.name} ({flow_run.id})", highlight=False)

    run(main)


def _set_paused(name: str, paused: bool, *, as_json: bool) -> None:
    """Pause or resume; one already in that state is left alone (a resume would restart its
    schedules from now) and said so, exit code 0."""
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            store = DeploymentStore(client, Keys.from_settings(settings))
            dep: Deployment = await store.resolve(name)
            changed = dep.paused != paused
            if changed:
                dep = await store.set_paused(dep.id, paused)
        finally:
            await client.aclose()
        if as_json:
            print_json({"deployment": dep.name, "id": str(dep.id), "paused": dep.paused,
                        "changed": changed})
            return
        if changed:
            console.print(f"{'paused' if paused else 'resumed'} {dep.name}", highlight=False)
        else:
            state = "already paused" if paused else "not paused (already active)"
            console.print(f"{dep.name} is {state}", highlight=False)

    run(main)


@deployments_app.command("pause")
def pause_cmd(name: NameArg, as_json: JsonFlag = False) -> None:
    """Pause a deployment's schedules (no new scheduled runs)."""
    _set_paused(name, True, as_json=as_json)


@deployments_app.command("resume")
def resume_cmd(name: NameArg, as_json: JsonFlag = False) -> None:
    """Resume a deployment's schedules, from now on (missed runs are not created)."""
    _set_paused(name, False, as_json=as_json)


@deployments_app.command("delete")
def delete_cmd(name: NameArg, as_json: JsonFlag = False) -> None:
    """Delete a deployment (its flow runs are kept)."""
    settings = load_settings()

    async def main() -> None:
        client = connect(settings)
        try:
            dep = await DeploymentStore(client, Keys.from_settings(settings)).delete(name)
        finally:
            await client.aclose()
        if as_json:
            print_json({"deployment": dep.name, "id": str(dep.id), "deleted": True})
            return
        console.print(f"deleted {dep.name}", highlight=False)

    run(main)


async def serve_worker(settings: Settings, concurrency: int) -> None:
    """Run a worker until SIGTERM/SIGINT/SIGHUP; runs in hand get ``shutdown_timeout_s`` to
    finish, then their processes are killed (and the runs recorded Crashed). Redis away at
    start for ``startup_timeout_s``: ``BusUnavailable`` (exit code 4)."""
    client = connect(settings)
    worker = Worker(client, settings, concurrency=concurrency)
    stopping = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, worker, settings, stopping)
            if await wait_for_redis(client, display_url(redis_url(settings)), settings,
                                    stopping):
                logging.getLogger(__name__).info("worker %s started (concurrency %d)",
                                                 worker.name, concurrency)
                await worker.run()
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()


async def _stop_on_signal(worker: Worker, settings: Settings, stopping: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            stopping.set()
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
        configure_logging(settings.log_level, settings.log_format)
        run(lambda: unwrapped(run_observed(settings, "worker",
                                           partial(serve_worker, settings, concurrency))))

