"""Trigger definitions (Prefect 3 JSON compatible). Pure: no I/O here.

Unknown keys inside a trigger are refused with their path (DESIGN.md section 5: Prefect drops
them silently, so a typo'd ``within_seconds`` quietly loses the cooldown).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple, Self
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from automations.events import Event
from triggers.compiled import CompiledTrigger

ResourceSpec = dict[str, str | list[str]]

PROACTIVE_MIN_WITHIN = 10.0
"""Seconds: a Proactive trigger's window is never shorter."""


class Posture(StrEnum):
    Reactive = "Reactive"
    Proactive = "Proactive"


def _posture(value: Any) -> Any:
    if value == "Metric":
        raise ValueError("posture 'Metric' is Prefect Cloud only; use 'Reactive' or 'Proactive'")
    return value


_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def _seconds(value: Any) -> Any:
    """Accept seconds (a number), an ISO-8601 duration string (``PT10M``) or a timedelta."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return _DURATION.validate_python(value).total_seconds()
        except ValidationError:
            raise ValueError(
                f"within must be seconds (a number) or an ISO-8601 duration such as 'PT10M'; "
                f"got {value!r}"
            ) from None
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
    threshold: int = Field(default=1, ge=1)
    within: timedelta = Field(default=timedelta(0), ge=timedelta(0), validate_default=True)

    _compiled: CompiledTrigger | None = PrivateAttr(default=None)

    @field_validator("posture", mode="before")
    @classmethod
    def _posture_before(cls, value: Any) -> Any:
        return _posture(value)

    @field_validator("within", mode="before")
    @classmethod
    def _within_before(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("within may not be null; use 0 for immediate")
        return _seconds(value)

    @field_validator("within", mode="after")
    @classmethod
    def _proactive_within(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        if info.data.get("posture") is not Posture.Proactive:
            return value
        seconds = value.total_seconds()
        if seconds == 0:
            return timedelta(seconds=PROACTIVE_MIN_WITHIN)
        if seconds < PROACTIVE_MIN_WITHIN:
            raise ValueError(
                f"a Proactive trigger needs within >= {PROACTIVE_MIN_WITHIN:g} seconds "
                f"(or 0, meaning {PROACTIVE_MIN_WITHIN:g}); got {seconds:g}"
            )
        return value

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

    def __eq__(self, other: object) -> bool:
        """Field equality: the compiled-matcher cache must not make equal triggers differ."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    # -- pure predicates (compiled once; treat a validated trigger as immutable) --------
    @property
    def compiled(self) -> CompiledTrigger:
        """The precompiled matcher, built on first use and kept on the model."""
        private = self.__pydantic_private__  # direct: pydantic's __getattr__ costs ~2 us
        assert private is not None
        compiled: CompiledTrigger | None = private.get("_compiled")
        if compiled is None or compiled.trigger is not self:  # model_copy copies private attrs
            compiled = private["_compiled"] = CompiledTrigger(
                self, match=self.match, match_related=self.match_related_specs,
                expect=self.expect, after=self.after, for_each=self.for_each)
        return compiled

    @property
    def immediate(self) -> bool:
        """Reactive with ``within`` 0: every expected event is evaluated on its own."""
        return self.posture is Posture.Reactive and not self.within

    def covers(self, event: Event) -> bool:
        return self.compiled.covers(event)

    def expects(self, name: str) -> bool:
        return self.compiled.expects(name)

    def starts_after(self, name: str) -> bool:
        return self.compiled.starts_after(name)

    def bucketing_key(self, event: Event) -> tuple[str, ...]:
        return self.compiled.bucketing_key(event)

    def triggering_labels(self, key: tuple[str, ...]) -> dict[str, str]:
        return self.compiled.triggering_labels(key)

    def meets_threshold(self, count: int) -> bool:
        """Reactive: ``count >= threshold``; Proactive: ``count < threshold``."""
        if self.posture is Posture.Reactive:
            return count >= self.threshold
        return count < self.threshold


class _CompositeBase(_TriggerBase):
    """Children and the optional ``within`` (seconds, ISO-8601 or null: no limit)."""

    type: Literal["compound", "sequence"]  # each subclass narrows it (and keeps it first)
    triggers: list[Trigger] = Field(min_length=1)
    within: timedelta | None = Field(default=None, ge=timedelta(0))

    @field_validator("within", mode="before")
    @classmethod
    def _within_before(cls, value: Any) -> Any:
        return _seconds(value)

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        _check_unique_ids(self)
        return self

    @field_serializer("within")
    def _ser_within(self, value: timedelta | None) -> float | None:
        return None if value is None else value.total_seconds()


class CompoundTrigger(_CompositeBase):
    """Fires when ``require`` (any, all or N) of its children fired within ``within``."""

    type: Literal["compound"] = "compound"
    require: int | Literal["any", "all"]

    @field_validator("require", mode="before")
    @classmethod
    def _require_shape(cls, value: Any) -> Any:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | str)
            or (isinstance(value, str) and value not in ("any", "all"))
        ):
            raise ValueError(f"require must be 'any', 'all' or a number of triggers; got {value!r}")
        return value

    @field_validator("require", mode="after")
    @classmethod
    def _require_in_range(cls, value: int | str, info: ValidationInfo) -> int | str:
        children = info.data.get("triggers")
        if isinstance(value, int) and children is not None and not 1 <= value <= len(children):
            raise ValueError(
                f"require must be 'any', 'all' or between 1 and {len(children)} "
                f"(the number of triggers); got {value}"
            )
        return value

    @property
    def needed(self) -> int:
        if self.require == "any":
            return 1
        if self.require == "all":
            return len(self.triggers)
        return self.require


class SequenceTrigger(_CompositeBase):
    """Fires when all its children fired, in the declared order, within ``within``."""

    type: Literal["sequence"] = "sequence"

    @property
    def needed(self) -> int:
        return len(self.triggers)


def _check_unique_ids(trigger: _CompositeBase) -> None:
    """Trigger ids key the window state, so one automation may not reuse one."""
    seen: set[UUID] = {trigger.id}
    stack: list[Any] = list(trigger.triggers)
    while stack:
        child = stack.pop()
        if child.id in seen:
            raise ValueError(f"trigger id {child.id} is used twice; trigger ids must be unique")
        seen.add(child.id)
        stack.extend(getattr(child, "triggers", ()))


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


def never_fires(trigger: Trigger) -> str | None:
    """A warning for ``apply``/``validate`` when (part of) ``trigger`` can never fire, else None.

    Composite parents are reported only through their children: a compound ``any`` with one
    dead child can still fire, so only children that block the parent are reported.
    """
    if isinstance(trigger, EventTrigger):
        return _event_never_fires(trigger)
    needed = trigger.needed if isinstance(trigger, CompoundTrigger) else len(trigger.triggers)
    dead = [(i, w) for i, c in enumerate(trigger.triggers) if (w := never_fires(c))]
    if len(trigger.triggers) - len(dead) >= needed:
        return None
    i, warning = dead[0]
    return f"triggers[{i}]: {warning}"


def _event_never_fires(trigger: EventTrigger) -> str | None:
    empty = _empty_pattern_list(trigger)
    if empty is not None:
        return f"{empty} is an empty list, which matches nothing"
    if (
        trigger.posture is Posture.Proactive
        and trigger.for_each
        and not trigger.after
        and trigger.threshold == 1
    ):
        return (
            "a Proactive trigger with for_each, no 'after' and threshold 1 can never fire: "
            "its windows are opened only by expected events, which already meet the "
            "threshold; add 'after' (the event that starts the wait)"
        )
    if trigger.immediate and trigger.after and trigger.threshold > 1:
        return (
            "a Reactive trigger with 'after', within 0 and threshold > 1 can never fire: "
            "its window closes at the first expected event; set 'within'"
        )
    return None


def _empty_pattern_list(trigger: EventTrigger) -> str | None:
    """The path of a ``match``/``match_related`` label whose pattern list is empty."""
    specs: list[tuple[str, ResourceSpec]] = [("match", trigger.match)]
    if isinstance(trigger.match_related, list):
        specs += [(f"match_related[{i}]", s) for i, s in enumerate(trigger.match_related)]
    else:
        specs.append(("match_related", trigger.match_related))
    for where, spec in specs:
        for label, patterns in spec.items():
            if patterns == []:
                return f"{where}.{label}"
    return None


class TriggerPath(NamedTuple):
    """An event trigger and its composite ancestors, outermost first."""

    trigger: EventTrigger
    parents: tuple[CompositeTrigger, ...]


def all_event_triggers(trigger: Trigger) -> list[TriggerPath]:
    """Every event trigger inside ``trigger`` (depth first, declared order) with its parents."""
    found: list[TriggerPath] = []
    _walk(trigger, (), found)
    return found


def _walk(trigger: Trigger, parents: tuple[CompositeTrigger, ...], out: list[TriggerPath]) -> None:
    if trigger.type == "event":
        out.append(TriggerPath(trigger, parents))
        return
    for child in trigger.triggers:
        _walk(child, (*parents, trigger), out)


def effective_within(trigger: EventTrigger) -> timedelta:
    """The window length the engine uses: a Proactive trigger never goes below 10 s."""
    if trigger.posture == "Proactive":
        return max(trigger.within, timedelta(seconds=PROACTIVE_MIN_WITHIN))
    return trigger.within
