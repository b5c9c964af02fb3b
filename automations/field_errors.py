"""Pydantic and template errors as ``InvalidAutomation``s a user can act on.

Pydantic's locations carry union member tags and its messages internal prefixes; these turn
them into one readable message per field path (``trigger.triggers[1].within``). Used wherever
automations are validated: files, the store and ``automations test`` files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from actions.templating import TemplateEngine
from automations.action_targets import (
    ACTION_LISTS,
    actions_of,
    automation_suffix,
    join_path,
    template_problems,
)
from automations.errors import InvalidAutomation
from automations.models import LOOP_ERROR, Automation

TRIGGER_TAGS = frozenset({"event", "compound", "sequence"})
MEMBER_LABEL = re.compile(r"^(str|int|float|bool|(list|dict|set|union|function-\w+)\[.*\])$")


def template_errors(
    automation: Automation,
    *,
    file: str | None = None,
    prefix: str = "",
    engine: TemplateEngine | None = None,
) -> list[InvalidAutomation]:
    """Templates of the automation's actions that could never render (``actions.templating``
    parse and limits), each with its field path."""
    engine = engine or TemplateEngine()
    return [InvalidAutomation(message, file=file, field_path=join_path(prefix, f"{where}.{path}"))
            for where, action in actions_of(automation)
            for path, message in template_problems(action, engine)]


def validation_errors(
    exc: ValidationError, *, file: str | None = None, prefix: str = "", name: Any = None
) -> list[InvalidAutomation]:
    """One ``InvalidAutomation`` per pydantic error, with a readable field path."""
    by_path: dict[str, list[str]] = {}
    suffix = automation_suffix(name)
    for error in exc.errors(include_url=False):
        ctx = error.get("ctx") or {}
        if error["type"] == LOOP_ERROR:
            path, message = str(ctx.get("path", "")), str(ctx.get("message", error["msg"]))
        else:
            path, message = field_path(error["loc"]), _message(error)
        full = ".".join(p for p in (prefix, path) if p).replace(".[", "[")
        by_path.setdefault(full, []).append(message)  # a union's members fail at one path
    return [InvalidAutomation(" or ".join(dict.fromkeys(messages)) + suffix, file=file,
                              field_path=path) for path, messages in by_path.items()]


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (not allowed here)"
    return message


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic location as ``trigger.triggers[1].within``: union tags removed, list
    indexes in brackets, dict keys that are not identifiers quoted."""
    parts: list[str] = []
    previous: list[int | str] = []
    for item in loc:
        tag = isinstance(item, str) and _is_union_tag(item, previous)
        previous.append(item)
        if tag:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.isidentifier():
            parts.append(f".{item}" if parts else item)
        else:
            parts.append(f"[{orjson.dumps(item).decode()}]")
    return "".join(parts)


def _is_union_tag(item: str, previous: Sequence[int | str]) -> bool:
    """Pydantic puts the chosen union member's tag into locations; we strip it."""
    if MEMBER_LABEL.match(item):
        return True
    if previous and previous[-1] == "trigger" and len(previous) == 1:
        return item in TRIGGER_TAGS
    if len(previous) >= 2 and isinstance(previous[-1], int):
        owner = previous[-2]
        if owner == "triggers":
            return item in TRIGGER_TAGS
        if owner in ACTION_LISTS and len(previous) == 2:
            return True
    return False

