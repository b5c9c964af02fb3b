"""``automations replay``: what automations would have fired on past events, read only.

The automations are FILES (loaded exactly as ``apply`` loads them) or, without FILES, the
stored ones (as the engine loads them); the events are the events stream's entries added
between ``--since`` and ``--until`` (``automations.replay``) or an events file (``--events``,
filtered by ``occurred``). Evaluation is ``automations.dry_run``. Nothing is written to Redis
and no action runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from automations.cli.common import console, err_console, fail, load_settings, run
from automations.cli.operator_cmd import fired_json, load_automations, read_events, when_text
from automations.connection import connect
from automations.dry_run import DryRun, DryRunResult, Fired, Numbered
from automations.durations import parse_duration
from automations.events import utcnow
from automations.keys import Keys
from automations.models import Automation
from automations.replay import Replay, entry_ms, replay_stream, stream_bound
from automations.settings import Settings
from automations.store import AutomationStore

MAX_LISTED_SKIPS = 5
"""Undecodable entries named one by one; the rest are counted."""

FilesArg = Annotated[list[Path] | None, typer.Argument(
    help="Automation files (default: the stored automations).", show_default=False)]
MomentOpt = Annotated[str | None, typer.Option(
    help="A duration back from now (1h, 30m, 2d) or an ISO time (naive is UTC).",
    show_default=False)]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("replay")(replay)


def replay(
    files: FilesArg = None,
    since: MomentOpt = None,
    until: MomentOpt = None,
    events: Annotated[str | None, typer.Option(
        "--events", "-e", help="Replay an events file (one event JSON per line, - for "
                               "stdin) instead of the events stream.", show_default=False)]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per firing.")] = False,
) -> None:
    """Replay stored (or FILES) automations over the events stream (entries added between
    --since and --until; default: all of it) or an events file: what would have fired, and
    when. Read only: nothing is written and no action runs."""
    now = utcnow()
    start, end = _moment(since, now, "--since"), _moment(until, now, "--until")
    if start is not None and end is not None and start > end:
        fail("--since is after --until")
    settings = load_settings()
    given = load_automations(files) if files else None
    if events is not None:
        numbered, bad = _file_events(events, start, end)
        automations = given if given is not None else run(lambda: _stored(settings))
        result = DryRun(automations, follows_wait=timedelta(seconds=settings.follows_wait_s)
                        ).run(numbered, until=end)
        _report(automations, result, None, as_json=as_json)
        if bad:
            _out(as_json).print(f"[yellow]note:[/] {bad} bad event line(s) skipped",
                                highlight=False, soft_wrap=True)
        return
    automations, replayed = run(lambda: _from_stream(settings, given, start, end or now))
    _report(automations, replayed.result, replayed, as_json=as_json)


def _moment(value: str | None, now: datetime, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option}: expected a duration back from now (30m, 1h, 2d) or an ISO time such "
             f"as 2026-01-01T12:00:00Z; got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _file_events(source: str, start: datetime | None,
                 end: datetime | None) -> tuple[list[Numbered], int]:
    numbered, bad = read_events(source, skip_invalid=True)
    kept = [n for n in numbered if (start is None or n.event.occurred >= start)
            and (end is None or n.event.occurred <= end)]
    return kept, bad


async def _stored(settings: Settings) -> list[Automation]:
    redis = connect(settings)
    try:
        return await AutomationStore(redis, Keys.from_settings(settings)).all()
    finally:
        await redis.aclose()


async def _from_stream(
    settings: Settings, given: list[Automation] | None, start: datetime | None, end: datetime
) -> tuple[list[Automation], Replay]:
    redis = connect(settings)
    keys = Keys.from_settings(settings)
    try:
        automations = given if given is not None else await AutomationStore(redis, keys).all()
        first: Any = await redis.xrange(keys.events, min=stream_bound(start, "-"), count=1)
        low = entry_ms(first[0][0].decode()) if first else 0
        high = int(stream_bound(end, "+"))
        with Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.fields[n]} events"),
                      TimeElapsedColumn(), console=err_console, transient=True,
                      disable=not err_console.is_terminal) as bar:
            task = bar.add_task("replay", total=max(high - low, 1), n=0)

            def advance(at_ms: int, count: int) -> None:
                bar.update(task, completed=max(at_ms - low, 0), n=count)

            replayed = await replay_stream(
                redis, keys, automations, since=start, until=end,
                follows_wait=timedelta(seconds=settings.follows_wait_s),
                max_future=timedelta(seconds=settings.max_future_s), progress=advance)
        return automations, replayed
    finally:
        await redis.aclose()


def _out(as_json: bool) -> Any:
    return err_console if as_json else console


def _report(automations: Sequence[Automation], result: DryRunResult, replayed: Replay | None,
            *, as_json: bool) -> None:
    if as_json:
        for fired in result.fired:
            line = fired_json(fired)
            if replayed is not None:
                line["stream_id"] = replayed.stream_id(fired.line)
            typer.echo(orjson.dumps(line).decode())
    else:
        _table(result.fired, replayed)
    out = _out(as_json)
    enabled = len([a for a in automations if a.enabled])
    names = {f.automation.name for f in result.fired}
    where = "from the events file"
    if replayed is not None:
        where = ("from the events stream" if replayed.first_id is None else
                 f"from the events stream (entries {replayed.first_id} to {replayed.last_id})")
    span = ""
    if result.start is not None and result.until is not None:
        span = f", event time {result.start.isoformat()} to {result.until.isoformat()}"
    out.print(f"{len(result.fired)} firing(s) of {len(names)} of {enabled} enabled "
              f"automation(s) over {result.events} event(s) {where}{span}; nothing was "
              "written and no action ran", highlight=False, soft_wrap=True)
    if replayed is not None and replayed.undecodable:
        for entry_id, why in replayed.undecodable[:MAX_LISTED_SKIPS]:
            err_console.print(f"[yellow]skipped:[/] entry {entry_id}: {escape(why)}",
                              highlight=False, soft_wrap=True)
        out.print(f"[yellow]note:[/] {len(replayed.undecodable)} undecodable entr(ies) "
                  "skipped", highlight=False, soft_wrap=True)
    if result.held_followers:
        out.print(f"[yellow]note:[/] {result.held_followers} event(s) still wait for the "
                  "event they `follows`", highlight=False, soft_wrap=True)
    if not enabled:
        out.print("[yellow]note:[/] no enabled automation to replay", highlight=False)


def _table(fired: Sequence[Fired], replayed: Replay | None) -> None:
    if not fired:
        console.print("no automation would have fired")
        return
    table = Table()
    source = "event (stream id)" if replayed is not None else "event (line)"
    for column in ("when (UTC)", "automation", "state", source, "labels"):
        table.add_column(column, overflow="fold")
    for item in fired:
        firing = item.firing
        event = firing.triggering_event
        where = (replayed.stream_id(item.line) if replayed is not None else item.line)
        described = "-" if event is None else str(event.get("event"))
        if event is not None and where is not None:
            described += f" ({where})"
        table.add_row(when_text(firing.triggered), escape(item.automation.name),
                      firing.trigger_states[0].value, escape(described),
                      escape(", ".join(f"{k}={v}" for k, v in
                                       firing.triggering_labels.items()) or "-"))
    console.print(table)
