"""State containers of the reference evaluator (``triggers.reference``): buckets, the
``follows`` queue and composite child firings. Pure and in memory; the semantics they
implement are spelled out in ``triggers.reference``'s docstring (points 1 and 8)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from uuid import UUID

from automations.events import Event
from triggers.firing import Firing
from triggers.models import CompositeTrigger, CompoundTrigger


def event_order(event: Event) -> tuple[datetime, str]:
    """Events are ordered by ``occurred``, then id."""
    return (event.occurred, str(event.id))


@dataclass(slots=True)
class Bucket:
    """One window of one trigger for one ``for_each`` key: ``[start, end)``."""

    start: datetime
    end: datetime
    count: int
    last_event: Event | None

    def __repr__(self) -> str:
        last = self.last_event.event if self.last_event else None
        window = f"[{self.start.isoformat()}, {self.end.isoformat()})"
        return f"Bucket({window} count={self.count} last={last})"


class FollowerQueue:
    """Dedupe by event id and hold events until the event they ``follows`` is processed."""

    def __init__(self, wait: timedelta) -> None:
        self.wait = wait
        self._seen: set[UUID] = set()
        self._followers: dict[UUID, list[tuple[datetime, Event]]] = {}
        self._held: set[UUID] = set()

    def __len__(self) -> int:
        """How many events are held."""
        return len(self._held)

    @property
    def seen(self) -> int:
        return len(self._seen)

    def admit(self, event: Event, now: datetime) -> bool:
        """True if ``event`` is to be processed now; False if a duplicate or held."""
        if event.id in self._seen or event.id in self._held:
            return False
        leader = event.follows
        if (
            leader is None
            or leader == event.id
            or leader in self._seen
            or self.wait <= timedelta(0)
        ):
            return True
        self._followers.setdefault(leader, []).append((now, event))
        self._held.add(event.id)
        return False

    def mark_processed(self, event: Event) -> list[Event] | None:
        """Record ``event`` as processed; return its held followers in order, or None if it
        was processed already."""
        self._held.discard(event.id)
        if event.id in self._seen:
            return None
        self._seen.add(event.id)
        return sorted((e for _, e in self._followers.pop(event.id, [])), key=event_order)

    def pop_lost(self, now: datetime) -> list[Event]:
        """Followers held at least ``wait``, oldest ``occurred`` first."""
        lost: list[Event] = []
        for leader, waiting in list(self._followers.items()):
            keep = [(t, e) for t, e in waiting if now - t < self.wait]
            lost.extend(e for t, e in waiting if now - t >= self.wait)
            if keep:
                self._followers[leader] = keep
            else:
                del self._followers[leader]
        return sorted(lost, key=event_order)


class CompositeBook:
    """The latest firing per child of each composite trigger (reference section 3.11)."""

    def __init__(self) -> None:
        self._children: dict[tuple[UUID, UUID], dict[UUID, Firing]] = {}

    def offer(self, automation_id: UUID, parent: CompositeTrigger, child: Firing) -> Firing | None:
        """Record a child firing; return the parent's firing when it is complete."""
        if parent.needed == 1:
            return parent_firing(automation_id, parent, [child], child)
        order = [c.id for c in parent.triggers]
        state = self._children.setdefault((automation_id, parent.id), {})
        if parent.within is not None:
            oldest = child.triggered - parent.within
            for child_id in [cid for cid, f in state.items() if f.triggered < oldest]:
                del state[child_id]
        state[child.trigger_id] = child
        ordered = [state[cid] for cid in order if cid in state]
        if isinstance(parent, CompoundTrigger):
            ready = len(ordered) >= parent.needed
        else:
            ready = len(ordered) == len(order) and all(
                a.triggered <= b.triggered for a, b in pairwise(ordered)
            )
        if not ready:
            return None
        del self._children[(automation_id, parent.id)]
        return parent_firing(automation_id, parent, ordered, child)


def parent_firing(
    automation_id: UUID, parent: CompositeTrigger, children: Sequence[Firing], last: Firing
) -> Firing:
    """The composite's firing: children in declared order, their labels merged in that order
    (a later child wins), the triggering event of the child that completed it."""
    labels: dict[str, str] = {}
    for child in children:
        labels.update(child.triggering_labels)
    return Firing(
        automation_id=automation_id,
        trigger_id=parent.id,
        triggered=last.triggered,
        triggering_labels=labels,
        triggering_event=last.triggering_event,
        triggering_firings=list(children),
    )
