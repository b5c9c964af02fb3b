"""``automations explain TARGET``: why an event did or did not count, or an automation's state.

TARGET is an automation name or id (its open buckets, proactive deadlines, the last events
that counted, the last near misses and firings), else an event id or an events-stream entry
id (for every automation that could have cared: which name pattern or label matched or
failed, the bucket, whether it fired and what its actions did). The answers come from
``automations.insight.explain``; this module only prints them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import anyio
import orjson
import typer
from rich.markup import escape

from automations.cli.common import console, load_settings, user_errors
from automations.connection import connect
from automations.errors import NotFound
from automations.events import utcnow
from automations.insight.explain import explain_automation, explain_event, is_event_target
from automations.insight.explain_models import (
    AutomationState,
    AutomationVerdict,
    BucketState,
    EventExplanation,
    FiringInfo,
    TriggerVerdict,
)
from automations.keys import Keys
from automations.store import AutomationStore

TargetArg = Annotated[str, typer.Argument(
    metavar="TARGET", help="An event id, an events-stream entry id, or an automation name/id.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("explain")(explain)


def explain(
    target: TargetArg,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Event: one JSON object per automation considered; automation: one "
                       "object.")] = False,
) -> None:
    """Why an event did (not) count for each automation, or an automation's live state."""
    settings = load_settings()

    async def main() -> EventExplanation | AutomationState:
        redis = connect(settings)
        keys = Keys.from_settings(settings)
        store = AutomationStore(redis, keys)
        try:
            now = utcnow()
            try:
                automation = await store.find(target)
            except NotFound:
                if not is_event_target(target):
                    raise NotFound(f"no automation named {target!r} (nor with that id), and it "
                                   "is not an event id or a stream entry id") from None
                return await explain_event(redis, keys, await store.all(), target, now,
                                           settings=settings)
            return await explain_automation(redis, keys, automation, now)
        finally:
            await redis.aclose()

    with user_errors():
        result = anyio.run(main)
    if isinstance(result, AutomationState):
        _print_state(result, as_json)
    else:
        _print_event(result, as_json)


# -- an event -------------------------------------------------------------------------------


def _print_event(result: EventExplanation, as_json: bool) -> None:
    if as_json:
        head = {"event_id": result.event_id, "entry_id": result.entry_id, "event": result.event,
                "occurred": result.occurred}
        for verdict in result.automations:
            typer.echo(orjson.dumps({**head, **verdict.model_dump(mode="json")}).decode())
        return
    console.print(f"[bold]{escape(result.event or '?')}[/] event {result.event_id or '?'} "
                  f"(entry {result.entry_id or '?'}, occurred {result.occurred or '?'})",
                  highlight=False, soft_wrap=True)
    if result.logged_at is not None:
        console.print(f"engine decision logged at {result.logged_at.isoformat()}",
                      highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for verdict in result.automations:
        _print_verdict(verdict)


def _print_verdict(v: AutomationVerdict) -> None:
    mark = "[green]counted[/]" if v.counted else \
        "[yellow]near miss[/]" if v.near_miss else "[dim]not counted[/]"
    fired = " [bold red]fired[/]" if v.fired else ""
    console.print(f"\n{mark}{fired}  [bold]{escape(v.automation)}[/] ({v.automation_id})",
                  highlight=False, soft_wrap=True)
    console.print(f"  {escape(v.reason)}  [dim]({v.source})[/]", highlight=False,
                  soft_wrap=True)
    for t in v.triggers:
        _print_trigger(t)
    for firing in v.firings:
        _print_firing(firing)


def _print_trigger(t: TriggerVerdict) -> None:
    console.print(f"  {escape(t.path)}: {t.posture}, threshold {t.threshold}, "
                  f"within {t.within_s:g}s", highlight=False)
    for name in t.names:
        if name.patterns:
            verdict = f"matched by {list(name.matched)}" if name.matched else "no match"
            console.print(escape(f"    {name.kind} {list(name.patterns)}: {verdict}"),
                          highlight=False, soft_wrap=True)
    for label in t.labels:
        colour = "green" if label.matched else "red"
        console.print(f"    [{colour}]{'ok' if label.matched else 'FAIL'}[/] "
                      f"{escape(label.describe())}", highlight=False, soft_wrap=True)
    if t.stateless and t.counted:
        console.print("    stateless: fires on every new event it takes", highlight=False)
    if t.bucket is not None:
        console.print(f"    {_bucket_line(t.bucket)}", highlight=False, soft_wrap=True)


def _print_firing(f: FiringInfo) -> None:
    console.print(f"  firing {f.firing_id} ({f.state}) at {f.fired_at}", highlight=False)
    if f.actions is None:
        console.print("    actions: no history recorded", highlight=False)
    for a in f.actions or ():
        detail = f": {escape(a.detail)}" if a.detail else ""
        console.print(f"    action {a.index} {a.type}: {a.outcome}{detail}", highlight=False,
                      soft_wrap=True)


def _bucket_line(b: BucketState) -> str:
    labels = f" {b.labels}" if b.labels else ""
    line = (f"bucket{labels}: {b.count}/{b.threshold} in [{_t(b.start)}, {_t(b.end)})"
            f"{'' if b.open else ' (window ended)'}")
    if b.deadline is not None:
        line += f", deadline {_t(b.deadline)} (fires if fewer than {b.threshold})"
    return escape(line)


def _t(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


# -- an automation --------------------------------------------------------------------------


def _print_state(state: AutomationState, as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps(state.model_dump(mode="json")).decode())
        return
    enabled = "enabled" if state.enabled else "[yellow]paused[/]"
    console.print(f"[bold]{escape(state.automation)}[/] ({state.automation_id}) {enabled}",
                  highlight=False, soft_wrap=True)
    for note in state.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    more = " (more not shown)" if state.more_buckets else ""
    console.print(f"\nbuckets: {len(state.buckets)}{more}", highlight=False)
    for bucket in state.buckets:
        console.print(f"  {_bucket_line(bucket)}", highlight=False, soft_wrap=True)
    if state.stateless_triggers:
        console.print(f"  ({len(state.stateless_triggers)} stateless trigger(s): no bucket)",
                      highlight=False)
    for title, refs in (("last events that counted", state.counted),
                        ("last near misses", state.near_misses)):
        console.print(f"\n{title} ({state.decisions_scanned:,} decisions scanned): "
                      f"{len(refs) or 'none'}", highlight=False)
        for ref in refs:
            console.print(f"  {ref.occurred}  {escape(ref.event)}  {ref.event_id}",
                          highlight=False, soft_wrap=True)
    console.print(f"\nlast firings: {len(state.firings) or 'none'}", highlight=False)
    for firing in state.firings:
        _print_firing(firing)
