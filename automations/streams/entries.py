"""A stream entry as every consumer's handler sees it, and a handler's verdict on one: plain
slotted dataclasses (per-entry work in the hot path: no pydantic)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    """One stream entry: its id, raw fields and how often it was delivered (1 = first time)."""

    id: str
    fields: dict[bytes, bytes]
    deliveries: int


@dataclass(slots=True)
class Reject:
    """A handler's verdict that ``entry`` can never succeed: acked and dead-lettered at once."""

    entry: Entry
    reason: str
