"""Trigger models, matching and evaluation."""

from triggers.models import (
    CompoundTrigger,
    EventTrigger,
    Posture,
    SequenceTrigger,
    Trigger,
    never_fires,
)

__all__ = [
    "CompoundTrigger",
    "EventTrigger",
    "Posture",
    "SequenceTrigger",
    "Trigger",
    "never_fires",
]
