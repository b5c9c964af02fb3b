"""``automations history``: what fired and what each action did, from the dispatcher's history
stream (``automations.insight.history``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import orjson
import redis.asyncio as aioredis
import typer
from rich.markup import escape
from rich.table import Column, Table

from automations.cli.common import console, fail, load_settings, run
from automations.connection import connect
from automations.errors import NotFound
from automations.events import utcnow
from automations.insight.history import (
    DEAD,
    EXECUTED,
    FAILED,
    RETRYING,
    ActionRecord,
    FiringRecord,
    firing_json,
    read_history,
)
from automations.keys import Keys

DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhdw]))+$")
PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
COLOURS = {EXECUTED: "green", FAILED: "red", DEAD: "bold red", RETRYING: "yellow"}

WhenOpt = Annotated[str | None, typer.Option(
    metavar="WHEN", help="A duration ago (30m, 1h, 2d, 1h30m) or an ISO time (naive is UTC).")]


def parse_moment(text: str, now: datetime) -> datetime:
    """``1h`` (ago, from ``now``) or an ISO time; ValueError with a readable message."""
    value = text.strip()
    if DURATION.match(value):
        seconds = sum(float(n) * UNITS[unit] for n, unit in PART.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 1h, 2d) nor an ISO time "
                         "(2026-01-31T12:00:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""
    app.command("history")(history_command)


def history_command(
    name: Annotated[str | None, typer.Argument(
        metavar="[NAME]", help="Only this automation (name or id).")] = None,
    since: WhenOpt = None,
    until: WhenOpt = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N",
                                       help="At most N firings (the newest).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per firing.")] = False,
) -> None:
    """Firings over time, newest first, with each action's latest outcome: executed, failed
    (permanent), retrying, dead (given up to the dead letters) or pending."""
    settings = load_settings()
    now = utcnow()
    try:
        start = None if since is None else parse_moment(since, now)
        end = None if until is None else parse_moment(until, now)
    except ValueError as exc:
        fail(str(exc))

    async def main() -> list[FiringRecord]:
        client = connect(settings)
        keys = Keys.from_settings(settings)
        try:
            automation_id = None if name is None else await _automation_id(client, keys, name)
            return await read_history(client, keys, automation_id=automation_id, since=start,
                                      until=end, limit=limit)
        finally:
            await client.aclose()

    firings = run(main)
    if as_json:
        for firing in firings:
            typer.echo(orjson.dumps(firing_json(firing)).decode())
        return
    _print_table(firings, limit)


async def _automation_id(client: aioredis.Redis, keys: Keys, name: str) -> str:
    """The id of the automation called ``name``; an id is taken as is (a deleted automation
    keeps its history)."""
    found: Any = await client.hget(keys.automation_names, name)
    if found is not None:
        return found.decode() if isinstance(found, bytes) else str(found)
    try:
        return str(UUID(name))
    except ValueError:
        raise NotFound(f"no automation named {name!r}") from None


def _print_table(firings: list[FiringRecord], limit: int) -> None:
    """A row per action (the firing's time and automation on its first row); the ids are in
    ``--json`` (they would squeeze the table)."""
    if not firings:
        console.print("no firings recorded (in that time)", highlight=False)
        return
    table = Table(Column("fired (UTC)", no_wrap=True), "automation", "action",
                  Column("outcome", no_wrap=True), Column("detail", overflow="fold", ratio=1))
    for firing in firings:
        rows: list[ActionRecord | None] = [*firing.actions] or [None]
        for i, action in enumerate(rows):
            first = i == 0
            table.add_row(_when(firing.fired_at) if first else "",
                          escape(firing.automation) if first else "", *_action(action),
                          end_section=i == len(rows) - 1)
    console.print(table)
    more = " (the newest; --limit shows more)" if len(firings) >= limit else ""
    console.print(f"{len(firings)} firing(s){more}; --json shows firing and event ids",
                  highlight=False)


def _action(action: ActionRecord | None) -> tuple[str, str, str]:
    if action is None:
        return "-", "-", ""
    colour = COLOURS.get(action.outcome, "dim")
    tries = f" ({action.attempts} attempts)" if action.attempts > 1 else ""
    return (f"{action.index} {escape(action.type)}", f"[{colour}]{action.outcome}[/]{tries}",
            escape(action.detail or ""))


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%m-%d %H:%M:%S")
