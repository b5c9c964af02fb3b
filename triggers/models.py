"""Trigger definitions (Prefect 3 JSON compatible). Pure: no I/O here.

Unknown keys inside a trigger are refused with their path (DESIGN.md section 5: Prefect drops
them silently, so a typo'd ``within_seconds`` quietly loses the cooldown).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_serializer,
    field_validator,
    model_validator,
)

ResourceSpec = dict[str, str | list[str]]

PROACTIVE_MIN_WITHIN = 10.0


class Posture(StrEnum):
    Reactive = "Reactive"
    Proactive = "Proactive"


def _seconds(value: Any) -> Any:
    """Accept seconds (number), an ISO-8601 duration string, or a timedelta."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


class _TriggerBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: UUID = Field(default_factory=uuid4, description="Trigger id (kept from Prefect JSON).")


class EventTrigger(_TriggerBase):
    """Counts matching events per bucket; fires on threshold (Reactive) or on absence
    (Proactive) within a window."""

    type: Literal["event"] = "event"
    match: ResourceSpec = Field(default_factory=dict)
    match_related: ResourceSpec | list[ResourceSpec] = Field(default_factory=dict)
    after: set[str] = Field(default_factory=set)
    expect: set[str] = Field(default_factory=set)
    for_each: set[str] = Field(default_factory=set)
    posture: Posture = Posture.Reactive
    threshold: int = 1
    within: timedelta = Field(default=timedelta(0), ge=timedelta(0))

    @field_validator("within", mode="before")
    @classmethod
    def _within_before(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("within may not be null; use 0 for immediate")
        return value

    @model_validator(mode="after")
    def _proactive_within(self) -> EventTrigger:
        if self.posture is Posture.Proactive:
            seconds = self.within.total_seconds()
            if seconds == 0:
                self.within = timedelta(seconds=PROACTIVE_MIN_WITHIN)
            elif seconds < PROACTIVE_MIN_WITHIN:
                raise ValueError(
                    f"a Proactive trigger needs within >= {PROACTIVE_MIN_WITHIN:g} seconds "
                    f"(got {seconds:g})"
                )
        return self

    @field_serializer("within")
    def _ser_within(self, value: timedelta) -> float:
        return value.total_seconds()

    @field_serializer("after", "expect", "for_each")
    def _ser_set(self, value: set[str]) -> list[str]:
        return sorted(value)

    @property
    def match_related_specs(self) -> list[ResourceSpec]:
        """``match_related`` as a list of specs (an empty single spec means none)."""
        if isinstance(self.match_related, list):
            return self.match_related
        return [self.match_related] if self.match_related else []


class CompoundTrigger(_TriggerBase):
    """Fires when ``require`` (any, all or N) of its children fired within ``within``."""

    type: Literal["compound"] = "compound"
    triggers: list[Trigger] = Field(min_length=1)
    require: int | Literal["any", "all"]
    within: timedelta | None = None

    @field_validator("within", mode="before")
    @classmethod
    def _within_before(cls, value: Any) -> Any:
        return _seconds(value)

    @model_validator(mode="after")
    def _require_in_range(self) -> CompoundTrigger:
        if isinstance(self.require, int) and not 1 <= self.require <= len(self.triggers):
            raise ValueError(
                f"require must be 'any', 'all' or between 1 and {len(self.triggers)} "
                f"(the number of triggers); got {self.require}"
            )
        return self

    @field_serializer("within")
    def _ser_within(self, value: timedelta | None) -> float | None:
        return None if value is None else value.total_seconds()

    @property
    def needed(self) -> int:
        if self.require == "any":
            return 1
        if self.require == "all":
            return len(self.triggers)
        return self.require


class SequenceTrigger(_TriggerBase):
    """Fires when all its children fired, in the declared order, within ``within``."""

    type: Literal["sequence"] = "sequence"
    triggers: list[Trigger] = Field(min_length=1)
    within: timedelta | None = None

    @field_validator("within", mode="before")
    @classmethod
    def _within_before(cls, value: Any) -> Any:
        return _seconds(value)

    @field_serializer("within")
    def _ser_within(self, value: timedelta | None) -> float | None:
        return None if value is None else value.total_seconds()

    @property
    def needed(self) -> int:
        return len(self.triggers)


def _trigger_type(value: Any) -> str:
    """``type`` picks the model; a trigger without one is an event trigger (as in Prefect)."""
    if isinstance(value, dict):
        return str(value.get("type", "event"))
    return str(getattr(value, "type", "event"))


Trigger = Annotated[
    Annotated[EventTrigger, Tag("event")]
    | Annotated[CompoundTrigger, Tag("compound")]
    | Annotated[SequenceTrigger, Tag("sequence")],
    Discriminator(
        _trigger_type,
        custom_error_type="invalid_trigger_type",
        custom_error_message="type must be 'event', 'compound' or 'sequence'",
    ),
]
CompositeTrigger = CompoundTrigger | SequenceTrigger

CompoundTrigger.model_rebuild()
SequenceTrigger.model_rebuild()
