"""A firing's actions rendered offline, with the dispatcher's own code: ``plan_actions`` and
``new_invocation`` (which actions, which triggering event), ``template_context`` and
``actions.templating`` (notification and webhook fields), and the run-deployment executor's
``render_parameters``.

What lives in Redis is not looked up; it renders as a placeholder and is listed in
``RenderedAction.placeholders``: a ``block`` target (``urls``/``url`` become
``<block 'name': resolved from Redis when the action runs>``), and the ``flow_run`` /
``deployment`` template variables (``{{ flow_run.name }}`` becomes
``<flow_run.name: read from Redis when the action runs>``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from actions.models import Action, CallWebhook, RunDeployment, SendNotification
from actions.outcome import PermanentError
from actions.templating import TemplateEngine, Templates, render_action
from automations.dispatch.executors.deployments import render_parameters
from automations.dispatch.invocation import new_invocation, plan_actions, template_context
from automations.dispatch.ports import AutomationView, Ports
from automations.models import Automation
from triggers.firing import Firing


@dataclass(slots=True)
class RenderedAction:
    """One action of a firing as the dispatcher would run it (``fields``: the rendered
    action's JSON; ``error``: why rendering failed, as the dispatcher would fail it)."""

    index: int
    type: str
    fields: dict[str, Any]
    placeholders: list[str] = field(default_factory=list)
    error: str | None = None


class Unavailable(Mapping[str, Any]):
    """A template value that lives in Redis: any attribute or item of it is another
    placeholder, and it renders as ``<path: read from Redis when the action runs>``."""

    def __init__(self, path: str, seen: list[str]) -> None:
        self._path = path
        self._seen = seen

    def __getattr__(self, name: str) -> Unavailable:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, key: str) -> Unavailable:
        return Unavailable(f"{self._path}.{key}", self._seen)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        if self._path not in self._seen:
            self._seen.append(self._path)
        return f"<{self._path}: read from Redis when the action runs>"

    __repr__ = __str__


class _Offline:
    """Every port at once, answering lookups with placeholders and refusing effects (the
    template context only ever calls ``get``)."""

    def __init__(self, seen: list[str]) -> None:
        self._seen = seen

    async def get(self, key: Any, /) -> Any:
        raise AssertionError("offline: no lookups")

    async def by_name(self, name: str, /) -> Any:
        raise AssertionError("offline: no lookups")

    async def set_enabled(self, automation_id: UUID, enabled: bool, /) -> object:
        raise AssertionError("offline: no effects")

    async def set_paused(self, deployment_id: UUID, paused: bool, /) -> object:
        raise AssertionError("offline: no effects")

    async def set_state(self, flow_run_id: UUID, state: str, name: str | None,
                        message: str | None, force: bool, /) -> Mapping[str, Any]:
        raise AssertionError("offline: no effects")

    async def create_flow_run(
        self, deployment_id: UUID, parameters: Mapping[str, Any] | None,
        job_variables: Mapping[str, Any] | None, scheduled_start: datetime,
        idempotency_key: str, creator: Mapping[str, str] | None = None, /,
    ) -> Mapping[str, Any]:
        raise AssertionError("offline: no effects")


class _Lookup(_Offline):
    """``get`` of one kind of record (``flow_run``, ``deployment``): a placeholder."""

    def __init__(self, name: str, seen: list[str]) -> None:
        super().__init__(seen)
        self._name = name

    async def get(self, key: Any, /) -> Mapping[str, Any] | None:
        return Unavailable(self._name, self._seen)


def _ports(seen: list[str]) -> Ports:
    return Ports(automations=_Offline(seen), blocks=_Offline(seen),
                 deployments=_Lookup("deployment", seen), flow_runs=_Lookup("flow_run", seen))


async def render_actions(
    automation: Automation, firing: Firing, engine: TemplateEngine | None = None
) -> list[RenderedAction]:
    """Every action the dispatcher would run for ``firing``, rendered."""
    engine = engine or TemplateEngine()
    view: AutomationView = automation
    rendered = []
    for planned in plan_actions(view, firing):
        invocation = new_invocation(view, firing, planned)
        seen: list[str] = []
        context, loaders = template_context(view, firing, invocation.triggering_event,
                                            _ports(seen))
        templates = Templates(engine, context, loaders)
        action, error = await _render(planned.action, templates)
        fields = action.model_dump(mode="json")
        placeholders = [f"template variable {name}" for name in seen]
        placeholders.extend(_block_targets(action, fields))
        rendered.append(RenderedAction(planned.index, action.type, fields, placeholders, error))
    return rendered


async def _render(action: Action, templates: Templates) -> tuple[Action, str | None]:
    try:
        done = await render_action(action, templates)
        if isinstance(done, RunDeployment) and done.parameters is not None:
            parameters = await render_parameters(done.parameters, templates)
            done = done.model_copy(update={"parameters": parameters})
        return done, None
    except PermanentError as exc:
        return action, exc.message


def _block_targets(action: Action, fields: dict[str, Any]) -> list[str]:
    """Put a placeholder where a block's URL would go; name what was replaced."""
    if not isinstance(action, SendNotification | CallWebhook):
        return []
    block = action.block or action.block_document_id
    if block is None:
        return []
    kind = "block" if action.block else "block_document_id"
    text = f"<{kind} {str(block)!r}: resolved from Redis when the action runs>"
    target = "urls" if isinstance(action, SendNotification) else "url"
    fields[target] = [text] if target == "urls" else text
    return [f"{target}: {kind} {str(block)!r}"]
