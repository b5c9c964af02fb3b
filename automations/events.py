"""Events in Prefect 3's grammar, with its limits, serialised to JSON by pydantic-core.

A leaf module: it imports nothing of ours but ``errors``, so ``triggers`` can use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from automations.errors import EventTooLarge, InvalidEvent

MAX_EVENT_NAME = 1024
MAX_LABELS = 500
MAX_RELATED = 100
MAX_EVENT_BYTES = 1_500_000
MAX_EVENT_DEPTH = 64
"""Nesting levels of an event's JSON (the event object is level 1, ``payload`` level 2).
orjson reads 1,023 levels, pydantic's JSON parser about 200 and its serializer about 254: an
event the engine accepts must survive being embedded in a firing and an announcement, which
add a few levels each, so every entry point refuses deeper events with this one limit."""
MAX_PAYLOAD_DEPTH = MAX_EVENT_DEPTH - 1
DEPTH_CHECKED = "depth_checked"  # validation context: the document's depth is known bounded
DEPTH_CONTEXT = {DEPTH_CHECKED: True}
TOO_DEEP = f"event nests more than {MAX_EVENT_DEPTH} levels (payload at most {MAX_PAYLOAD_DEPTH})"

RESOURCE_ID = "prefect.resource.id"
RESOURCE_ROLE = "prefect.resource.role"
RESOURCE_NAME = "prefect.resource.name"


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7), as Prefect's client generates."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000


def micros(moment: datetime) -> int:
    """Microseconds since the epoch (exact, unlike ``timestamp() * 1e6``): the engine's time."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


def from_micros(value: float) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


def to_us(seconds: float) -> int:
    return round(seconds * US)


def nesting(value: Any, limit: int) -> int:
    """Levels of containers in ``value`` (a scalar is 0), counted up to ``limit + 1``: the walk
    stops as soon as the limit is passed, so a hostile document costs no more than a valid one."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _check_labels(labels: Mapping[str, Any], where: str) -> None:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{where} has {len(labels)} labels; at most {MAX_LABELS} are allowed")
    if not labels.get(RESOURCE_ID):
        raise ValueError(f"{where} needs a non-empty '{RESOURCE_ID}' label")


class Event(BaseModel):
    """One event. Unknown top-level keys (e.g. Prefect's ``received``) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=False)

    id: UUID = Field(default_factory=uuid7)
    occurred: datetime = Field(default_factory=utcnow)
    event: str = Field(min_length=1, max_length=MAX_EVENT_NAME)
    resource: dict[str, str]
    related: list[dict[str, str]] = Field(default_factory=list, max_length=MAX_RELATED)
    payload: dict[str, Any] = Field(default_factory=dict)
    follows: UUID | None = None

    @field_validator("occurred")
    @classmethod
    def _tz_aware(cls, value: datetime) -> datetime:
        # A naive timestamp is taken as UTC: the grammar is UTC and guessing a local zone is worse.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    @model_validator(mode="after")
    def _limits(self, info: ValidationInfo) -> Event:
        _check_labels(self.resource, "resource")
        for i, related in enumerate(self.related):
            _check_labels(related, f"related[{i}]")
            if not related.get(RESOURCE_ROLE):
                raise ValueError(f"related[{i}] needs a non-empty '{RESOURCE_ROLE}' label")
        depth_checked = bool(info.context and info.context.get(DEPTH_CHECKED))
        if not depth_checked and nesting(self.payload, MAX_PAYLOAD_DEPTH) > MAX_PAYLOAD_DEPTH:
            raise ValueError(TOO_DEEP)
        return self

    # -- convenience -------------------------------------------------------------------
    @property
    def resource_id(self) -> str:
        return self.resource[RESOURCE_ID]

    def resource_in_role(self, role: str) -> dict[str, str] | None:
        """The first related resource with ``role`` (Prefect's rule)."""
        for related in self.related:
            if related.get(RESOURCE_ROLE) == role:
                return related
        return None

    def label(self, name: str) -> str | None:
        """A resource label, or ``related:<role>:<label>`` of the first related with that role."""
        if name.startswith("related:"):
            role, _, label = name[len("related:"):].partition(":")
            found = self.resource_in_role(role)
            return None if found is None else found.get(label)
        return self.resource.get(name)

    # -- serialisation -----------------------------------------------------------------
    def to_json(self) -> bytes:
        # pydantic-core's serializer writes the same bytes as orjson over model_dump, 2.5x faster.
        return self.__pydantic_serializer__.to_json(self)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        """Parse and validate; any problem becomes one precise ``InvalidEvent``."""
        if len(raw) > MAX_EVENT_BYTES:
            raise EventTooLarge(f"event is {len(raw)} bytes; at most {MAX_EVENT_BYTES} are allowed")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            if any("recursion limit" in err["msg"] for err in exc.errors(include_url=False)):
                # pydantic's parser stops near 200 levels: the same limit, the same words
                raise InvalidEvent(TOO_DEEP) from None
            raise InvalidEvent(format_validation_error(exc)) from None

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, depth_checked: bool = False) -> Event:
        """``depth_checked``: the caller already bounded the whole document's depth by
        ``MAX_EVENT_DEPTH`` (the engine's intake does, for every event), which bounds the
        payload's, so the model need not walk it again."""
        try:
            return cls.model_validate(data, context=DEPTH_CONTEXT if depth_checked else None)
        except ValidationError as exc:
            raise InvalidEvent(format_validation_error(exc)) from None

    def encoded(self) -> bytes:
        """JSON bytes, refusing an event over the size limit (as Prefect's client does)."""
        raw = self.to_json()
        if len(raw) > MAX_EVENT_BYTES:
            raise EventTooLarge(
                f"event '{self.event}' is {len(raw)} bytes; at most {MAX_EVENT_BYTES} are allowed"
            )
        return raw


def format_validation_error(exc: ValidationError) -> str:
    """``field.path: message`` for every error, joined by ``; ``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def event_json_schema() -> dict[str, Any]:
    return Event.model_json_schema()
