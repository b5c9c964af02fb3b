"""The ``Firing``: the only thing that crosses from triggers to actions.

Its wire format on the firings stream (the outbox) and its ``prefect.automation.triggered``
event live in ``automations.engine.outbox``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field

from automations.events import uuid7


class TriggerState(StrEnum):
    Triggered = "Triggered"
    Resolved = "Resolved"


class Firing(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: UUID = Field(default_factory=uuid7)
    automation_id: UUID
    trigger_id: UUID
    trigger_states: list[TriggerState] = Field(default_factory=lambda: [TriggerState.Triggered])
    triggered: datetime
    triggering_labels: dict[str, str] = Field(default_factory=dict)
    triggering_event: dict[str, Any] | None = Field(
        None, description="The event JSON (reactive: the one that crossed the threshold; "
        "proactive: the bucket's last event, may be null)."
    )
    triggering_firings: list[Firing] = Field(default_factory=list)
    automation_triggered_event_id: UUID | None = Field(
        None, description="Id of the prefect.automation.triggered/resolved event of this firing."
    )

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Firing:
        return cls.model_validate_json(raw)

    def __repr__(self) -> str:
        return (
            f"Firing(id={self.id}, automation={self.automation_id}, "
            f"states={[s.value for s in self.trigger_states]}, labels={self.triggering_labels})"
        )
