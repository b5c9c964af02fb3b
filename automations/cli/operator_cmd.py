"""``automations test``: an offline dry run of automations over an events file (no Redis).

The automations load exactly as ``apply`` loads them (``automations.loader``: every error at
once); the events file has one event JSON per line, as ``automations emit --file`` and
``automations events tail --json`` use, and every bad line is reported with its number. The
run itself is ``automations.dry_run`` (the reference evaluator with event time as the clock).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from automations.cli.common import EXIT_USER_ERROR, console, err_console, fail
from automations.cli.events_cmd import parse_lines
from automations.dry_run import DryRun, DryRunResult, Fired, Numbered
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.loader import load_files
from automations.models import Automation
from triggers.models import never_fires

FilesArg = Annotated[list[Path], typer.Argument(help="Automation files: JSON, YAML or Python.")]
EventsOpt = Annotated[
    str,
    typer.Option("--events", "-e", help="Events file: one event JSON per line (- for stdin)."),
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("test")(test_command)


def test_command(
    files: FilesArg,
    events: EventsOpt,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per firing.")] = False,
    until: Annotated[
        datetime | None,
        typer.Option(help="Run the clock to this time at the end (default: the last event plus "
                          "the longest window, so open proactive windows close). Naive is UTC."),
    ] = None,
    follows_wait: Annotated[
        float, typer.Option(help="Seconds an event waits for the event it `follows`.", min=0)
    ] = 900.0,
    skip_invalid: Annotated[
        bool, typer.Option(help="Report bad event lines and go on without them.")
    ] = False,
) -> None:
    """Dry-run FILES over an events file offline: which automation fires, when, on which
    event, with which labels. Event time is the clock; nothing is stored or executed."""
    automations = _load_automations(files)
    numbered = _read_events(events, skip_invalid=skip_invalid)
    end = None if until is None else (until if until.tzinfo else until.replace(tzinfo=UTC))
    result = DryRun(automations, follows_wait=timedelta(seconds=follows_wait)).run(
        numbered, until=end
    )
    if as_json:
        for fired in result.fired:
            typer.echo(orjson.dumps(fired_json(fired)).decode())
    else:
        _print_table(result.fired)
    _print_summary(result, len([a for a in automations if a.enabled]), as_json=as_json)


def _load_automations(files: Sequence[Path]) -> list[Automation]:
    """Load as ``apply`` does (every error at once, exit 2) and warn about dead triggers."""
    try:
        automations = load_files(files)
    except InvalidAutomation as exc:
        errors = exc.errors if isinstance(exc, InvalidAutomations) else [exc]
        for error in errors:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False,
                              soft_wrap=True)
        err_console.print(f"{len(errors)} error(s) in the automation files", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    for automation in automations:
        warning = never_fires(automation.trigger)
        if warning:
            err_console.print(f"[yellow]warning:[/] {escape(automation.name)}: trigger: "
                              f"{escape(warning)}", highlight=False, soft_wrap=True)
    return automations


def _read_events(source: str, *, skip_invalid: bool) -> list[Numbered]:
    label = "<stdin>" if source == "-" else source
    try:
        if source == "-":
            lines = sys.stdin.read().splitlines()
        else:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{label}: cannot read events: {exc}")
    numbered: list[Numbered] = []
    bad = 0
    for line, parsed in parse_lines(lines):
        if isinstance(parsed, str):
            bad += 1
            kind = "warning" if skip_invalid else "error"
            colour = "yellow" if skip_invalid else "bold red"
            err_console.print(f"[{colour}]{kind}:[/] {escape(label)}:{line}: {escape(parsed)}",
                              highlight=False, soft_wrap=True)
        else:
            numbered.append(Numbered(line, parsed))
    if bad and not skip_invalid:
        err_console.print(f"{bad} bad event line(s); nothing was evaluated "
                          "(--skip-invalid evaluates the rest)", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR)
    return numbered


def fired_json(fired: Fired) -> dict[str, Any]:
    """The ``--json`` line of one firing."""
    firing = fired.firing
    event = firing.triggering_event or {}
    return {
        "triggered": firing.triggered.isoformat(),
        "automation": fired.automation.name,
        "automation_id": str(fired.automation.id),
        "state": firing.trigger_states[0].value,
        "labels": firing.triggering_labels,
        "event": event.get("event"),
        "event_id": event.get("id"),
        "event_occurred": event.get("occurred"),
        "event_line": fired.line,
        "firing_id": str(firing.id),
        "trigger_id": str(firing.trigger_id),
        "child_firings": len(firing.triggering_firings),
    }


def _print_table(fired: Sequence[Fired]) -> None:
    if not fired:
        console.print("no automation fired")
        return
    table = Table()
    for column in ("when (UTC)", "automation", "state", "event", "labels"):
        table.add_column(column, overflow="fold")
    for item in fired:
        firing = item.firing
        state = firing.trigger_states[0].value
        table.add_row(
            _when(firing.triggered),
            escape(item.automation.name),
            state if state == "Triggered" else f"[green]{state}[/]",
            escape(_describe_event(item)),
            escape(", ".join(f"{k}={v}" for k, v in firing.triggering_labels.items()) or "-"),
        )
    console.print(table)


def _when(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0")
    return text.removesuffix(".")


def _describe_event(item: Fired) -> str:
    """The triggering event's name and line; another automation's event names it."""
    event = item.firing.triggering_event
    if event is None:
        return "- (no event in the window)"
    name = str(event.get("event"))
    if item.line is not None:
        return f"{name} (line {item.line})"
    source = (event.get("resource") or {}).get("prefect.resource.name")
    return f"{name} ({source})" if source else name


def _print_summary(result: DryRunResult, enabled: int, *, as_json: bool) -> None:
    out = err_console if as_json else console
    names = {f.automation.name for f in result.fired}
    span = ""
    if result.start is not None and result.until is not None:
        span = f", event time {result.start.isoformat()} to {result.until.isoformat()}"
    out.print(f"{len(result.fired)} firing(s) of {len(names)} of {enabled} enabled "
              f"automation(s) over {result.events} event(s){span}", highlight=False,
              soft_wrap=True)
    if result.held_followers:
        out.print(f"[yellow]note:[/] {result.held_followers} event(s) still wait for the event "
                  "they `follows` (not in the file?); --follows-wait 0 evaluates them at once",
                  highlight=False, soft_wrap=True)
    if result.truncated_chains:
        out.print(f"[yellow]note:[/] stopped feeding back {result.truncated_chains} automation "
                  "event(s): automations keep triggering each other", highlight=False,
                  soft_wrap=True)
