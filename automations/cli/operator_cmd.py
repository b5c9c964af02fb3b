"""``automations test``: automation unit tests, or an offline dry run over an events file.

Without ``--events`` the files are test files (``automations.testing``: events at relative
times and the firings expected; exit 1 on a mismatch, 2 on a bad file). With ``--events`` the
files are automation files, loaded exactly as ``apply`` loads them (``automations.loader``:
every error at once); the events file has one event JSON per line, as ``automations emit
--file`` and ``automations events tail --json`` use, and every bad line is reported with its
number. Both run ``automations.dry_run`` (the reference evaluator with event time as the
clock); nothing touches Redis.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio
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
from automations.testing.load import InvalidTests, load_test_files
from automations.testing.model import json_schema
from automations.testing.report import case_lines, summary
from automations.testing.runner import case_json, run_file
from triggers.models import never_fires

FilesArg = Annotated[
    list[Path] | None,
    typer.Argument(help="Test files (a mapping with `tests:`), or with --events automation "
                        "files: JSON, YAML or Python.", show_default=False),
]
EventsOpt = Annotated[
    str | None,
    typer.Option("--events", "-e", help="Dry run: an events file, one event JSON per line "
                                        "(- for stdin).", show_default=False),
]
EXIT_MISMATCH = 1
DEFAULT_FOLLOWS_WAIT_S = 900.0


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("test")(test_command)


def test_command(
    files: FilesArg = None,
    events: EventsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines: one per firing (dry run) "
                                                         "or per test.")] = False,
    until: Annotated[
        datetime | None,
        typer.Option(help="Dry run: run the clock to this time at the end (default: the last "
                          "event plus the longest window, so open proactive windows close). "
                          "Naive is UTC.",
                     formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z",
                              "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S"]),
    ] = None,
    follows_wait: Annotated[
        float | None, typer.Option(help="Dry run: seconds an event waits for the event it "
                                        "`follows` [default: 900].", min=0)
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Dry run: report bad event lines and go on without them.")
    ] = False,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the JSON Schema of test files and exit.")
    ] = False,
) -> None:
    """Run automation unit tests (TESTFILE...: events at relative times and the firings
    expected; exit 1 on a mismatch), or with --events dry-run automation FILES over an events
    file. Offline: event time is the clock; nothing is stored or executed."""
    if schema:
        typer.echo(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode())
        return
    if not files:
        fail("give test files, or automation files and --events F.jsonl (see --help)")
    if events is None:
        if until is not None or follows_wait is not None or skip_invalid:
            fail("--until, --follows-wait and --skip-invalid apply to --events dry runs; a "
                 "test file sets `until` per test and `follows_wait` at its top")
        run_unit_tests(files, as_json=as_json)
        return
    automations = load_automations(files)
    numbered, _ = read_events(events, skip_invalid=skip_invalid)
    end = None if until is None else (until if until.tzinfo else until.replace(tzinfo=UTC))
    wait = DEFAULT_FOLLOWS_WAIT_S if follows_wait is None else follows_wait
    result = DryRun(automations, follows_wait=timedelta(seconds=wait)).run(numbered, until=end)
    if as_json:
        for fired in result.fired:
            typer.echo(orjson.dumps(fired_json(fired)).decode())
    else:
        _print_table(result.fired)
    _print_summary(result, len([a for a in automations if a.enabled]), as_json=as_json)


def run_unit_tests(files: Sequence[Path], *, as_json: bool) -> None:
    """Load every test file (exit 2 listing every problem), run them, report; exit 1 when a
    test fails."""
    try:
        loaded = load_test_files(files)
    except InvalidTests as exc:
        for problem in exc.problems:
            err_console.print(f"[bold red]error:[/] {escape(str(problem))}", highlight=False,
                              soft_wrap=True)
        err_console.print(f"{len(exc.problems)} error(s) in the test file(s); no test was run",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    cases = [case for item in loaded for case in anyio.run(run_file, item)]
    for case in cases:
        if as_json:
            typer.echo(orjson.dumps(case_json(case)).decode())
        else:
            for line in case_lines(case):
                console.print(line, highlight=False, soft_wrap=True)
    (err_console if as_json else console).print(summary(cases, len(loaded)), highlight=False,
                                                soft_wrap=True)
    if not all(case.passed for case in cases):
        raise typer.Exit(EXIT_MISMATCH)


def load_automations(files: Sequence[Path]) -> list[Automation]:
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


def read_events(source: str, *, skip_invalid: bool) -> tuple[list[Numbered], int]:
    """The file's events and how many bad lines were skipped (each reported; without
    ``skip_invalid`` a bad line exits 2 and nothing is evaluated)."""
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
    return numbered, bad


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
            when_text(firing.triggered),
            escape(item.automation.name),
            state if state == "Triggered" else f"[green]{state}[/]",
            escape(_describe_event(item)),
            escape(", ".join(f"{k}={v}" for k, v in firing.triggering_labels.items()) or "-"),
        )
    console.print(table)


def when_text(moment: datetime) -> str:
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
