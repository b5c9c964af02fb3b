"""The automation test file format: pydantic models, the single source of its rules and of
its JSON Schema (``automations test --schema``).

A test file names automation files, and per test the input events at times relative to
``start`` and the firings expected from them (``docs/testing-automations.md``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from automations.durations import SYNTAX, format_duration, parse_duration
from automations.errors import InvalidEvent
from automations.events import RESOURCE_ID, Event
from automations.loader import EXTENSION_PREFIX

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
MAX_REPEAT = 10_000
NAMESPACE = UUID("0f4d7c4e-3a1b-4c55-9a0e-6f3b2d8e9a71")
"""Namespace of the ids of test events without one: the same test gives the same ids."""

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"},
                              {"type": "number", "minimum": 0},
                              {"type": "string", "pattern": "^P"}],
                    "description": f"A duration: {SYNTAX}."}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputEvent(_Strict):
    """One input event (or ``repeat`` of them, ``every`` apart), as ``automations emit --file``
    takes it but with ``at`` (relative to ``start``) instead of ``occurred``."""

    at: Duration = Field(timedelta(0), description="When it occurred, relative to `start`.")
    event: str = Field(description="The event name, e.g. prefect.flow-run.Failed.")
    resource: dict[str, str] | str = Field(
        description="Resource labels (with prefect.resource.id), or just the resource id.")
    related: list[dict[str, str]] = Field(default_factory=list,
                                          description="Related resources (each with a role).")
    payload: dict[str, Any] = Field(default_factory=dict)
    id: UUID | None = Field(None, description="Event id (default: derived from the test).")
    follows: UUID | None = Field(None, description="Id of the event this one follows.")
    repeat: int = Field(1, ge=1, le=MAX_REPEAT, description="How many copies of the event.")
    every: Duration | None = Field(None, description="Time between copies (with repeat > 1).")

    @model_validator(mode="after")
    def _consistent(self) -> InputEvent:
        if self.repeat > 1 and not self.every:
            raise ValueError("repeat > 1 needs `every` (the time between copies)")
        if self.repeat > 1 and self.id is not None:
            raise ValueError("an explicit `id` cannot be repeated (ids are unique)")
        self.events(DEFAULT_START, "check")  # the event grammar's own limits, reported here
        return self

    def labels(self) -> dict[str, str]:
        return {RESOURCE_ID: self.resource} if isinstance(self.resource, str) else self.resource

    def events(self, start: datetime, seed: str) -> list[Event]:
        """The events at their absolute times; ids derived from ``seed`` unless given."""
        every = self.every or timedelta(0)
        made = []
        for copy in range(self.repeat):
            event_id = self.id or uuid.uuid5(NAMESPACE, f"{seed}:{copy}")
            data = {"id": event_id, "occurred": start + self.at + copy * every,
                    "event": self.event, "resource": self.labels(), "related": self.related,
                    "payload": self.payload, "follows": self.follows}
            try:
                made.append(Event.parse(data))
            except InvalidEvent as exc:
                raise ValueError(str(exc)) from None
        return made


class ExpectedAction(BaseModel):
    """One action of the firing, picked by ``index`` (its running index over ``actions``,
    ``actions_on_trigger``, ``actions_on_resolve``) or ``type``; every other key is a field of
    the rendered action, compared as a subset."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    index: int | None = Field(None, ge=0, description="The action's index in the firing.")
    type: str | None = Field(None, description="The action type (any action of that type).")

    @model_validator(mode="after")
    def _picked(self) -> ExpectedAction:
        if self.index is None and self.type is None:
            raise ValueError("give `index` or `type` to say which action")
        return self

    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExpectedFiring(_Strict):
    """One firing the test expects. Keys left out are not checked."""

    automation: str = Field(min_length=1, description="The automation's name.")
    at: Duration | None = Field(None, description="Firing time relative to `start`.")
    within: Duration = Field(timedelta(0), description="Tolerance around `at` (default: exact).")
    state: Literal["Triggered", "Resolved"] | None = None
    labels: dict[str, str] | None = Field(
        None, description="Triggering labels (a subset: other labels may be present).")
    event: str | None = Field(None, description="Name of the triggering event.")
    actions: list[ExpectedAction] = Field(default_factory=list)


class AutomationTestCase(_Strict):
    """One test: events in, the complete list of expected firings out."""

    name: str = Field(min_length=1)
    events: list[InputEvent] = Field(default_factory=list)
    until: Duration | None = Field(
        None, description="Run the clock to this time after the events (default: the last "
                          "event plus the longest window).")
    expect: list[ExpectedFiring] = Field(
        default_factory=list, description="Every firing expected (none: nothing may fire).")


class AutomationTests(_Strict):
    """A test file: automation files and the tests run against them (``x-*`` keys are free:
    YAML anchors to merge from)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_extra={"patternProperties": {"^x-": {}}})

    schema_: str | None = Field(None, alias="$schema", description="JSON Schema URL/path.")
    automations: list[str] = Field(
        min_length=1, description="Automation files or directories, relative to this file.")
    start: datetime = Field(DEFAULT_START, description="Time 0 of every test (naive is UTC).")
    follows_wait: Duration = Field(timedelta(minutes=15),
                                   description="How long an event waits for its `follows`.")
    tests: list[AutomationTestCase] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _extensions(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items()
                    if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
        return data

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    @model_validator(mode="after")
    def _unique_names(self) -> AutomationTests:
        seen: set[str] = set()
        for test in self.tests:
            if test.name in seen:
                raise ValueError(f"test name {test.name!r} is used twice; names must be unique")
            seen.add(test.name)
        return self


def json_schema() -> dict[str, Any]:
    """JSON Schema of a test file (for editors and ``automations test --schema``)."""
    schema = AutomationTests.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "automations test file"
    return schema
