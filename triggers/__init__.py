"""Trigger models, matching and evaluation."""

from triggers.models import CompoundTrigger, EventTrigger, Posture, SequenceTrigger, Trigger

__all__ = ["CompoundTrigger", "EventTrigger", "Posture", "SequenceTrigger", "Trigger"]
