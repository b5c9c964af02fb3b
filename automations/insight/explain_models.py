"""The answers of ``automations explain`` as pydantic models: the CLI prints them and a console
serves them as JSON, so both read one shape (``insight.explain`` and ``insight.firings`` fill
them in)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from triggers.explain import LabelCheck, NameCheck


class BucketState(BaseModel):
    """One bucket as it is in Redis now."""

    trigger_id: str
    key: str
    labels: dict[str, str]
    start: datetime
    end: datetime
    count: int
    threshold: int
    posture: str
    open: bool  # now is before its end
    deadline: datetime | None  # Proactive: when the timer fires it if count < threshold
    last_event_id: str | None


class ActionOutcome(BaseModel):
    index: int
    type: str
    outcome: str
    at: datetime | None = None
    detail: str | None = None


class FiringInfo(BaseModel):
    firing_id: str
    outbox_entry: str  # its firings-stream entry id
    automation_id: str
    trigger_id: str | None
    state: str  # Triggered or Resolved
    fired_at: str | None
    event_id: str | None
    actions: list[ActionOutcome] | None = None  # None: no history to tell


class TriggerVerdict(BaseModel):
    """One event trigger of an automation against the event."""

    trigger_id: str
    path: str  # "trigger", "trigger.triggers[1]"...
    posture: str
    threshold: int
    within_s: float
    counted: bool  # the engine evaluates the (event, trigger) pair
    reason: str
    names: list[NameCheck]
    labels: list[LabelCheck]
    stateless: bool  # keeps no bucket: fires on every event it takes
    bucket_key: str | None = None
    bucket: BucketState | None = None


class AutomationVerdict(BaseModel):
    automation: str
    automation_id: str
    enabled: bool
    counted: bool
    near_miss: bool
    reason: str
    source: Literal["decision log", "evaluated now"]
    fired: bool
    firings: list[FiringInfo]
    triggers: list[TriggerVerdict]


class EventExplanation(BaseModel):
    event_id: str | None
    entry_id: str | None  # in the events stream
    event: str | None
    occurred: str | None
    logged_at: datetime | None  # when the engine logged its decision (None: not logged)
    processed: bool | None  # its dedupe marker exists (None: unknown)
    automations: list[AutomationVerdict]
    notes: list[str]


class DecisionRef(BaseModel):
    event_id: str
    event: str
    occurred: str
    entry_id: str
    logged_at: datetime


class AutomationState(BaseModel):
    automation: str
    automation_id: str
    enabled: bool
    buckets: list[BucketState]
    more_buckets: bool
    stateless_triggers: list[str]
    counted: list[DecisionRef]
    near_misses: list[DecisionRef]
    decisions_scanned: int
    firings: list[FiringInfo]
    notes: list[str]
