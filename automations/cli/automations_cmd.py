"""``automations apply|ls|inspect|pause|resume|delete|validate|schema``: automations as code.

``apply`` and ``validate`` load JSON, YAML or Python files (``automations.loader``) and report
every error at once (exit code 2, nothing stored); ``validate`` and ``schema`` need no Redis.
Block names are checked against Redis: ``apply`` needs it anyway, ``validate`` checks them when
Redis answers within a few seconds and otherwise says that it could not (not an error).
Machine-readable output (``--json`` on every command, ``inspect --yaml``, ``schema``) goes to
stdout unstyled; warnings, notes and error text stay on stderr, so stdout parses as it is.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import orjson
import redis.exceptions
import typer
import yaml
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from actions.models import Action
from actions.targets import KnownBlocks
from automations.action_targets import known_blocks
from automations.cli.common import (
    EXIT_USER_ERROR,
    JsonFlag,
    console,
    err_console,
    load_settings,
    print_json,
    settings_error,
    user_errors,
)
from automations.connection import CONNECTION_ERRORS, connect, display_url, redis_url
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.keys import Keys
from automations.loader import file_schema, load_sources
from automations.models import Automation
from automations.settings import Settings
from automations.store import AutomationStore
from automations.store_plan import ApplyResult
from triggers.models import CompoundTrigger, EventTrigger, Posture, Trigger, never_fires

T = TypeVar("T")
JsonObject = dict[str, Any]
ErrorsJson = Callable[[list[JsonObject]], JsonObject]
"""With ``--json``: the object printed for a failed load, given the errors as objects."""

FilesArg = Annotated[list[Path], typer.Argument(
    help="JSON, YAML or Python files, or directories of them.")]
NameArg = Annotated[str, typer.Argument(help="Automation name (or id).")]
BLOCKS_WAIT_S = 3.0
"""How long ``validate`` waits for Redis to read the block names before it gives up on them."""
_UNREACHABLE: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, *CONNECTION_ERRORS)
_NAMED = re.compile(r" \(automation ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\)$")
"""The `` (automation 'name')`` the loader appends to an error about one automation."""
_NAMED_PATH = re.compile(r"^('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(?:\.|\[|$)")
"""A field path the store starts with the automation's name: ``'name'.id``."""


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    for name, fn in (("apply", apply), ("ls", ls), ("inspect", inspect), ("pause", pause),
                     ("resume", resume), ("delete", delete), ("validate", validate),
                     ("schema", schema)):
        app.command(name)(fn)


# -- commands -------------------------------------------------------------------------


def apply(
    files: FilesArg,
    prune: Annotated[bool, typer.Option(help="Delete stored automations not in FILES.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Report what would change; write nothing.")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Create or update automations by name from FILES (atomic: all or nothing)."""
    errors_json = _errors_only if as_json else None
    automations = _load_or_exit(files, BlockCheck(load_settings()), errors_json)
    _print_warnings(automations)
    result = _with_store(lambda store: store.apply(automations, prune=prune, dry_run=dry_run),
                         errors_json)
    if as_json:
        print_json({"created": result.created, "updated": result.updated,
                    "unchanged": result.unchanged, "deleted": result.deleted,
                    "trigger_reset": result.trigger_reset, "dry_run": result.dry_run,
                    "warnings": _warnings(automations)})
        return
    _print_result(result)


def ls(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List automations: name, enabled, trigger, actions, last fired."""

    async def fetch(store: AutomationStore) -> tuple[list[Automation], dict[str, str]]:
        return await store.all(), await store.last_fired()

    automations, fired = _with_store(fetch)
    if as_json:
        for a in automations:
            typer.echo(orjson.dumps({
                "id": str(a.id), "name": a.name, "enabled": a.enabled,
                "trigger": describe_trigger(a.trigger), "actions": [x.type for x in a.actions],
                "last_fired": fired.get(str(a.id))}).decode())
        return
    if not automations:
        console.print("no automations")
        return
    table = Table("name", "enabled", "trigger", "actions", "last fired")
    for a in automations:
        table.add_row(escape(a.name), "yes" if a.enabled else "[yellow]paused[/]",
                      escape(describe_trigger(a.trigger)), escape(describe_actions(a)),
                      fired.get(str(a.id), "never"))
    console.print(table)


def inspect(
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="Print YAML.")] = False,
) -> None:
    """Show one automation; `--json`/`--yaml` output can be applied again."""
    automation = _with_store(lambda store: store.find(name))
    data = automation.model_dump(mode="json")
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if as_yaml:
        typer.echo(text, nl=False)
        return
    console.print(f"[bold]{escape(automation.name)}[/] ({automation.id}) "
                  + ("enabled" if automation.enabled else "[yellow]paused[/]"))
    console.print(f"trigger: {escape(describe_trigger(automation.trigger))}")
    console.print(escape(text), highlight=False, soft_wrap=True)


def pause(name: NameArg, as_json: JsonFlag = False) -> None:
    """Stop evaluating an automation (its window state is kept)."""
    _set_enabled(name, False, as_json=as_json)


def resume(name: NameArg, as_json: JsonFlag = False) -> None:
    """Evaluate a paused automation again."""
    _set_enabled(name, True, as_json=as_json)


def delete(name: NameArg, as_json: JsonFlag = False) -> None:
    """Delete an automation."""
    deleted = _with_store(lambda store: store.delete(name))
    if as_json:
        print_json({"automation": deleted.name, "id": str(deleted.id), "deleted": True})
        return
    console.print(f"deleted {escape(repr(deleted.name))}")


def validate(files: FilesArg, as_json: JsonFlag = False) -> None:
    """Check FILES: every error at once, plus never-fires warnings. Needs no Redis; block
    names are checked when Redis can be reached."""
    try:
        check = BlockCheck(Settings(), wait_s=BLOCKS_WAIT_S)
    except ValidationError as exc:
        check = BlockCheck(None, unavailable=settings_error(exc))

    def invalid(errors: list[JsonObject]) -> JsonObject:
        return {"valid": False, "automations": [], "errors": errors, "warnings": [],
                "notes": check.notes()}

    automations = _load_or_exit(files, check, invalid if as_json else None)
    _print_warnings(automations)
    if as_json:
        print_json({"valid": True, "automations": [a.name for a in automations], "errors": [],
                    "warnings": _warnings(automations), "notes": check.notes()})
        return
    for a in automations:
        console.print(f"[green]ok[/] {escape(a.name)}: {escape(describe_trigger(a.trigger))}",
                      soft_wrap=True)
    console.print(f"{len(automations)} automation(s) in {len(files)} file(s) are valid")


def schema(
    as_json: Annotated[bool, typer.Option("--json", help="Accepted for scripts: the output is "
                                          "JSON already.")] = False,
) -> None:
    """Print the JSON Schema of the automations file format (for editor validation)."""
    del as_json  # the same output either way
    typer.echo(orjson.dumps(file_schema(), option=orjson.OPT_INDENT_2).decode())


# -- helpers --------------------------------------------------------------------------


class BlockCheck:
    """Reads the known block names from Redis for the loader, once, only when an action names
    a block. When Redis cannot be reached in ``wait_s`` it answers None (not checked) and
    keeps a ``note`` saying why."""

    def __init__(self, settings: Settings | None, *, wait_s: float | None = None,
                 unavailable: str = "") -> None:
        self.settings = settings
        self.wait_s = wait_s
        self.unavailable = unavailable
        self.note = ""

    def notes(self) -> list[str]:
        return [self.note] if self.note else []

    def __call__(self, names: Collection[str]) -> KnownBlocks | None:
        if self.settings is None:
            self.note = f"block names were not checked ({self.unavailable})"
            return None
        settings = self.settings
        url = redis_url(settings)

        async def fetch() -> KnownBlocks:
            client = connect(settings)
            try:
                with anyio.fail_after(self.wait_s):
                    return await known_blocks(client, Keys.from_settings(settings))
            finally:
                await client.aclose()

        try:
            return anyio.run(fetch)
        except _UNREACHABLE as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            self.note = (f"block names were not checked: cannot reach Redis at "
                         f"{display_url(url)} ({reason})")
            return None


def _load_or_exit(files: Sequence[Path], check_blocks: BlockCheck,
                  errors_json: ErrorsJson | None) -> list[Automation]:
    try:
        return [item.automation for item in load_sources(files, check_blocks=check_blocks)]
    except InvalidAutomations as exc:
        _report(exc.errors, errors_json)
    except InvalidAutomation as exc:
        _report([exc], errors_json)
    finally:
        if check_blocks.note:
            err_console.print(f"[yellow]note:[/] {escape(check_blocks.note)}", highlight=False,
                              soft_wrap=True)


def _report(errors: Sequence[InvalidAutomation], errors_json: ErrorsJson | None) -> NoReturn:
    """Every error on stderr, exit code 2; with ``--json`` also one object on stdout."""
    if errors_json is not None:
        print_json(errors_json([error_json(e) for e in errors]))
    for error in errors:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False,
                          soft_wrap=True)
    err_console.print(f"{len(errors)} error(s); nothing was stored", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


def error_json(error: InvalidAutomation) -> JsonObject:
    """An error as ``file``, ``automation`` (its name when the error says it), ``path`` and
    ``message``, the parts the text line is made of (null where the error has none)."""
    automation = None
    for pattern, text in ((_NAMED, error.message), (_NAMED_PATH, error.field_path)):
        found = pattern.search(text)
        if found:
            automation = _literal(found.group(1))
            break
    return {"file": error.file, "automation": automation, "path": error.field_path or None,
            "message": error.message}


def _literal(quoted: str) -> str | None:
    """The name a ``repr`` spells (None for text that only looks like one)."""
    try:
        value = ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _errors_only(errors: list[JsonObject]) -> JsonObject:
    return {"errors": errors}


def _with_store(fn: Callable[[AutomationStore], Awaitable[T]],
                errors_json: ErrorsJson | None = None) -> T:
    settings = load_settings()

    async def main() -> T:
        redis = connect(settings)
        try:
            return await fn(AutomationStore(redis, Keys.from_settings(settings)))
        finally:
            await redis.aclose()

    with user_errors():
        try:
            return anyio.run(main)
        except InvalidAutomations as exc:  # refused by the store (e.g. id clash): same report
            _report(exc.errors, errors_json)


def _set_enabled(name: str, enabled: bool, *, as_json: bool) -> None:
    async def flip(store: AutomationStore) -> tuple[Automation, bool]:
        current = await store.find(name)
        return await store.set_enabled(current.id, enabled), current.enabled != enabled

    automation, changed = _with_store(flip)
    if as_json:
        print_json({"automation": automation.name, "id": str(automation.id),
                    "enabled": automation.enabled, "changed": changed})
        return
    state = "resumed" if enabled else "paused"
    label = escape(repr(automation.name))
    console.print(f"{state} {label}" if changed else f"{label} was already {state}")


def _warnings(automations: Sequence[Automation]) -> list[JsonObject]:
    """Never-fires warnings as objects, shaped like errors."""
    return [{"automation": a.name, "path": "trigger", "message": warning}
            for a in automations if (warning := never_fires(a.trigger))]


def _print_warnings(automations: Sequence[Automation]) -> None:
    for w in _warnings(automations):
        err_console.print(f"[yellow]warning:[/] {escape(w['automation'])}: trigger: "
                          f"{escape(w['message'])}", highlight=False, soft_wrap=True)


def _print_result(result: ApplyResult) -> None:
    for label, names in (("created", result.created), ("updated", result.updated),
                         ("unchanged", result.unchanged), ("deleted", result.deleted)):
        for name in names:
            reset = " (trigger changed: window state reset)" \
                if name in result.trigger_reset else ""
            console.print(f"{label:>9}  {escape(name)}{reset}", highlight=False, soft_wrap=True)
    console.print(result.summary(), highlight=False, soft_wrap=True)


# -- one-line summaries ---------------------------------------------------------------


def describe_trigger(trigger: Trigger) -> str:
    """A one-line summary of a trigger for tables."""
    if isinstance(trigger, EventTrigger):
        return _describe_event(trigger)
    within = f" within {_duration(trigger.within)}" if trigger.within else ""
    parts = "; ".join(describe_trigger(child) for child in trigger.triggers)
    if isinstance(trigger, CompoundTrigger):
        return f"{trigger.require} of {len(trigger.triggers)}{within}: [{parts}]"
    return f"sequence of {len(trigger.triggers)}{within}: [{parts}]"


def _describe_event(trigger: EventTrigger) -> str:
    names = "|".join(sorted(trigger.expect)) or "any event"
    if trigger.posture is Posture.Proactive:
        text = f"fewer than {trigger.threshold} {names} in {_duration(trigger.within)}"
    else:
        count = f"{trigger.threshold}x " if trigger.threshold > 1 else ""
        window = f" in {_duration(trigger.within)}" if trigger.within else ""
        text = f"{count}{names}{window}"
    if trigger.after:
        text += f" after {'|'.join(sorted(trigger.after))}"
    if trigger.for_each:
        text += f" per {', '.join(sorted(trigger.for_each))}"
    return text


def describe_actions(automation: Automation) -> str:
    def types(actions: Sequence[Action]) -> str:
        return ", ".join(a.type for a in actions)

    text = types(automation.actions) or "-"
    if automation.actions_on_trigger:
        text += f"; on trigger: {types(automation.actions_on_trigger)}"
    if automation.actions_on_resolve:
        text += f"; on resolve: {types(automation.actions_on_resolve)}"
    return text


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
