"""Checks of an automation's actions when it is validated or applied: templates that could
never render, and targets that could never work.

What the models alone cannot see: a notification URL Apprise cannot parse, a webhook URL that
is not ``http(s)://`` (``actions.targets``), and a block name that is neither stored nor in the
environment (only when the block names could be read from Redis). The loader joins these to
its other errors, so every mistake of every automation is reported at once. Nothing is sent:
Apprise only parses the URL, and its log line (which repeats the URL) is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import apprise
import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError

from actions.models import Action, CallWebhook, SendNotification
from actions.targets import KnownBlocks, webhook_url_problem
from actions.templating import TemplateEngine, check_templates
from automations.blocks import BlockStore, env_block_vars
from automations.errors import InvalidAutomation
from automations.keys import Keys
from automations.models import Automation

APPRISE_LOGGER = "apprise"
ACTION_LISTS = ("actions", "actions_on_trigger", "actions_on_resolve")
_ACTION: TypeAdapter[Action] = TypeAdapter(Action)


def actions_of(automation: Automation) -> list[tuple[str, Action]]:
    """``(field path, action)`` for every action of every list."""
    return [(f"{name}[{i}]", action) for name in ACTION_LISTS
            for i, action in enumerate(getattr(automation, name))]


def valid_actions(entry: dict[Any, Any]) -> list[tuple[str, Action]]:
    """The actions of an invalid automation's mapping that validate on their own."""
    found: list[tuple[str, Action]] = []
    for name in ACTION_LISTS:
        items = entry.get(name)
        for i, item in enumerate(items if isinstance(items, list) else []):
            try:
                found.append((f"{name}[{i}]", _ACTION.validate_python(item)))
            except ValidationError:
                continue  # already reported by the automation's own validation
    return found


def action_errors(
    actions: Sequence[tuple[str, Action]],
    *,
    file: str | None = None,
    prefix: str = "",
    name: Any = None,
    engine: TemplateEngine | None = None,
) -> list[InvalidAutomation]:
    """Templates that could never render and targets that could never work (block names
    aside), for each ``(field path, action)``."""
    engine = engine or TemplateEngine()
    suffix = automation_suffix(name)
    return [InvalidAutomation(f"{message}{suffix}", file=file,
                              field_path=join_path(prefix, f"{where}.{path}"))
            for where, action in actions
            for path, message in [*template_problems(action, engine),
                                  *target_problems(action)]]


def automation_suffix(name: Any) -> str:
    return f" (automation {name!r})" if isinstance(name, str) and name else ""


def template_problems(action: Action, engine: TemplateEngine) -> list[tuple[str, str]]:
    """``(field path inside the action, "template error: ...")`` per broken template."""
    found = []
    for problem in check_templates(action, engine):
        path, _, message = problem.partition(": ")
        message = message.splitlines()[0] if message else problem
        found.append((path, f"template error: {message}"))
    return found


def join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def target_problems(action: Action) -> list[tuple[str, str]]:
    """``(field path inside the action, message)`` for every target of ``action`` that can
    never work (block names aside: see ``block_refs``)."""
    problems: list[tuple[str, str]] = []
    if isinstance(action, SendNotification):
        for i, url in enumerate(action.urls or []):
            problem = apprise_url_problem(url)
            if problem:
                problems.append((f"urls[{i}]", problem))
    elif isinstance(action, CallWebhook) and action.url is not None:
        problem = webhook_url_problem(action.url)
        if problem:
            problems.append(("url", problem))
    return problems


def block_refs(action: Action) -> list[tuple[str, str]]:
    """``(field path inside the action, block name)`` for each block the action names."""
    if not isinstance(action, SendNotification | CallWebhook):
        return []
    return [(field, str(value)) for field in ("block", "block_document_id")
            if (value := getattr(action, field))]


def apprise_url_problem(url: str) -> str | None:
    """Why Apprise cannot use ``url`` (its scheme is shown, never the URL), or None."""
    with _quiet_apprise():
        accepted = apprise.Apprise().add(url)
    if accepted:
        return None
    scheme, sep, _ = url.partition("://")
    shown = f"{scheme}://..." if sep else "a URL without a scheme"
    hint = (" (an HTTP endpoint is json://, form:// or xml://, or use a call-webhook action)"
            if scheme.lower() in {"http", "https"} else "")
    return (f"Apprise cannot use this notification URL ({shown}){hint}; see "
            "https://github.com/caronc/apprise/wiki for the URL of each service")


@contextmanager
def _quiet_apprise() -> Iterator[None]:
    """Drops Apprise's log records of this thread while it parses (they repeat the URL)."""
    drop = _ThreadFilter(threading.get_ident())
    logger = logging.getLogger(APPRISE_LOGGER)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _ThreadFilter(logging.Filter):
    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


async def known_blocks(redis: aioredis.Redis, keys: Keys,
                       environ: Mapping[str, str] | None = None) -> KnownBlocks:
    """The stored block names and the ``AUTOMATIONS_BLOCK_*`` variables set (names only)."""
    stored = await BlockStore(redis, keys, environ=environ).names()
    return KnownBlocks.of(stored, env_block_vars(environ))
