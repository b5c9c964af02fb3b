"""A batch of firings entries -> the actions to begin, each firing on its own.

Whatever one entry or one firing cannot do (be decoded, name a stored automation, plan its
actions, encode its events) rejects that firing alone, with its real cause (exception type and
message) as the dead letter's reason; the other firings of the batch go on. Everything that
could fail for a firing's content is done here, before any action of the batch starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from pydantic import ValidationError

from automations.dispatch.invocation import (
    Invocation,
    action_triggered,
    new_invocation,
    plan_actions,
)
from automations.dispatch.isolation import describe
from automations.dispatch.ledger import Start
from automations.engine.outbox import OutboxEntryError, firings_of
from automations.events import format_validation_error
from automations.insight.history import fired_entry
from automations.models import Automation
from automations.store import InvalidStoredAutomation
from automations.streams.entries import Entry, Reject
from triggers.firing import Firing


@dataclass(slots=True)
class Parsed:
    """One firing of the batch: its entry (one ``data`` field: what a dead letter keeps), the
    firing and its JSON as read."""

    entry: Entry
    firing: Firing
    raw: bytes


@dataclass(slots=True)
class Plan:
    """The actions of the batch's firings, each with its ``Start`` for the ledger."""

    invocations: list[Invocation] = field(default_factory=list)
    starts: list[Start] = field(default_factory=list)
    firings: list[tuple[Entry, int]] = field(default_factory=list)
    """Per firing: its entry and how many of the invocations are its own (in order)."""


def parse_entries(entries: Sequence[Entry], rejects: list[Reject]) -> list[Parsed]:
    """Every firing of the batch; an engine entry holding several firings yields one per
    firing. An entry (or firing) that cannot be read is rejected alone."""
    parsed: list[Parsed] = []
    for entry in entries:
        try:
            firings = firings_of(entry.fields)
        except OutboxEntryError as exc:
            rejects.append(Reject(entry, str(exc)))
            continue
        except ValidationError as exc:
            rejects.append(Reject(entry, f"invalid firing: {format_validation_error(exc)}"))
            continue
        except Exception as exc:
            rejects.append(Reject(entry, f"unreadable firing entry: {describe(exc)}"))
            continue
        raw = entry.fields.get(b"data")
        if len(firings) == 1 and raw is not None:
            parsed.append(Parsed(entry, firings[0], raw))
            continue
        for firing in firings:
            try:
                raw = firing.to_json()
            except Exception as exc:
                rejects.append(Reject(
                    Entry(entry.id, {**entry.fields, b"firing_id": str(firing.id).encode()},
                          entry.deliveries),
                    f"firing {firing.id} cannot be encoded: {describe(exc)}"))
                continue
            parsed.append(Parsed(Entry(entry.id, {b"data": raw}, entry.deliveries), firing, raw))
    return parsed


def plan_batch(parsed: Sequence[Parsed],
               found: Mapping[UUID, Automation | InvalidStoredAutomation | None],
               rejects: list[Reject], *, history: bool) -> Plan:
    """The actions of every firing whose automation exists and whose actions can be planned
    and encoded; each other firing becomes a reject with its cause."""
    plan = Plan()
    for item in parsed:
        automation = found.get(item.firing.automation_id)
        if isinstance(automation, InvalidStoredAutomation):
            rejects.append(Reject(item.entry, str(automation)))
            continue
        if automation is None:
            rejects.append(Reject(item.entry, f"automation {item.firing.automation_id} does "
                                  "not exist (deleted after it fired)"))
            continue
        try:
            invocations, starts = plan_firing(automation, item, history=history)
        except ValidationError as exc:  # e.g. a malformed triggering event: this entry only
            rejects.append(Reject(item.entry, f"invalid firing: {format_validation_error(exc)}"))
            continue
        except Exception as exc:
            rejects.append(Reject(item.entry, f"cannot run firing {item.firing.id}: "
                                  f"{describe(exc)}"))
            continue
        plan.invocations += invocations
        plan.starts += starts
        plan.firings.append((item.entry, len(invocations)))
    return plan


def plan_firing(automation: Automation, item: Parsed, *, history: bool
                ) -> tuple[list[Invocation], list[Start]]:
    """One firing's invocations and their ledger starts (events encoded here). The firing's
    ``fired`` history record rides with its first action (index 0), so a redelivered firing
    whose actions are done records nothing again."""
    firing = item.firing
    invocations = [new_invocation(automation, firing, planned, item.raw)
                   for planned in plan_actions(automation, firing)]
    starts = []
    for inv in invocations:
        event = action_triggered(inv)
        record = None
        if history and inv.index == 0:
            record = fired_entry(
                firing_id=firing.id, automation_id=automation.id, automation=automation.name,
                fired_at=firing.triggered, event_id=(firing.triggering_event or {}).get("id"),
                actions=[i.action_type for i in invocations])
        starts.append(Start(inv.key, event.to_json(), str(event.id), record))
    return invocations, starts
