"""Offline dry run of automations over recorded events (``automations test``); no Redis.

The events are fed, in file order (the delivery order), to ``triggers.reference.
ReferenceEvaluator``, the in-memory oracle the Redis engine is property-tested against, with
**event time as the clock**: the clock is the latest ``occurred`` seen so far, so proactive
windows close when the events say that time has passed, not when the wall clock does. Between
two events the clock steps through every proactive window end on the way, as the live timer
would (one firing per window end, stamped with that end). After the last event it runs on to
``until`` (default: the last event plus the longest window) so open proactive windows close.

Each automation-level firing is fed back as its ``prefect.automation.triggered`` /
``.resolved`` event (``automations.dispatch.invocation.state_event``, as the engine publishes
it), so automations that watch other automations fire too. Action events (``action.triggered``,
``.executed``) and the flow runs actions would start are not simulated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from automations.dispatch.invocation import state_event
from automations.events import Event
from automations.models import Automation
from triggers.firing import Firing
from triggers.models import Posture, all_event_triggers, effective_within
from triggers.reference import DEFAULT_FOLLOWS_WAIT, ReferenceEvaluator

MAX_FEEDBACK = 1000
"""Automation events fed back per input event or window end: a bound on chains of
automations that trigger each other (A fires B fires A; the loop guard sees only self-loops)."""


@dataclass(frozen=True, slots=True)
class Numbered:
    """An event and its line number in the events file."""

    line: int
    event: Event


@dataclass(frozen=True, slots=True)
class Fired:
    """One automation firing, with the events-file line of its triggering event (None when
    that event is not from the file, e.g. another automation's triggered event)."""

    automation: Automation
    firing: Firing
    line: int | None


@dataclass(slots=True)
class DryRunResult:
    fired: list[Fired]
    events: int
    start: datetime | None
    until: datetime | None
    held_followers: int
    truncated_chains: int


def longest_window(automations: Iterable[Automation]) -> timedelta:
    """The longest effective ``within`` of any event trigger (proactive: at least 10 s)."""
    return max(
        (
            effective_within(path.trigger)
            for a in automations
            for path in all_event_triggers(a.trigger)
        ),
        default=timedelta(0),
    )


class _Lane:
    """One automation's own evaluator. Automations share no trigger state, so evaluating each
    alone is the same as evaluating them together, and a window end costs only its owner."""

    def __init__(self, automation: Automation, follows_wait: timedelta) -> None:
        self.automation = automation
        self.evaluator = ReferenceEvaluator(
            [automation], follows_wait=follows_wait, lag_compensation=False
        )
        self.paths = all_event_triggers(automation.trigger)
        self.proactive = frozenset(
            p.trigger.id for p in self.paths if p.trigger.posture is Posture.Proactive
        )
        self.next_end: datetime | None = None
        self._fresh = True

    def process(self, event: Event, now: datetime) -> list[Firing]:
        held = self.evaluator.held_followers()
        fired = self.evaluator.process(event, now)
        if self.proactive and (
            self._fresh
            or held != self.evaluator.held_followers()
            or any(p.trigger.compiled.covers(event) for p in self.paths)
        ):
            self._fresh = False
            self.refresh()
        return fired

    def advance(self, now: datetime) -> list[Firing]:
        fired = self.evaluator.advance(now)
        self._fresh = False
        self.refresh()
        return fired

    def refresh(self) -> None:
        """The earliest end of this automation's proactive windows (None: nothing to close)."""
        self.next_end = min(
            (b.end for key, b in self.evaluator.buckets.items() if key[1] in self.proactive),
            default=None,
        )

    def due(self, moment: datetime) -> bool:
        """Must ``advance`` run at ``moment`` (a window to close, or a follower to release)?"""
        if self.evaluator.held_followers():
            return True
        return self.next_end is not None and self.next_end <= moment


class DryRun:
    """One pass of some automations over some events; build a fresh one per run (``run``, or
    ``feed`` each event then ``finish``)."""

    def __init__(
        self, automations: Sequence[Automation], *, follows_wait: timedelta = DEFAULT_FOLLOWS_WAIT
    ) -> None:
        enabled = [a for a in automations if a.enabled]
        self._lanes = [_Lane(a, follows_wait) for a in enabled]
        self._by_id = {lane.automation.id: lane.automation for lane in self._lanes}
        self._lines: dict[UUID, int] = {}
        self._fired: list[Fired] = []
        self._now: datetime | None = None
        self._start: datetime | None = None
        self._events = 0
        self._truncated = 0

    def run(self, events: Sequence[Numbered], *, until: datetime | None = None) -> DryRunResult:
        """Evaluate ``events`` in order, then close windows up to ``until``."""
        for item in events:
            self.feed(item)
        return self.finish(until)

    def feed(self, item: Numbered) -> None:
        """Evaluate one more event (delivery order is call order): for runs over more events
        than fit in memory at once (``automations replay`` over a stream)."""
        self._lines.setdefault(item.event.id, item.line)
        occurred = item.event.occurred
        self._start = occurred if self._start is None else min(self._start, occurred)
        self._events += 1
        now = occurred if self._now is None else max(self._now, occurred)
        self._advance_to(now)
        self._feed(self._deliver(item.event, now), now)

    def finish(self, until: datetime | None = None) -> DryRunResult:
        """Close windows up to ``until`` (default: the last event plus the longest window)."""
        if until is None and self._now is not None:
            until = self._now + longest_window(self._by_id.values())
        if until is not None:
            self._advance_to(until)
        return DryRunResult(
            fired=self._fired,
            events=self._events,
            start=self._start,
            until=until,
            held_followers=max((lane.evaluator.held_followers() for lane in self._lanes),
                               default=0),
            truncated_chains=self._truncated,
        )

    def _deliver(self, event: Event, now: datetime) -> list[Firing]:
        return [firing for lane in self._lanes for firing in lane.process(event, now)]

    def _advance_to(self, target: datetime) -> None:
        """Step the clock to ``target`` through every proactive window end on the way."""
        if self._now is not None and target < self._now:
            return
        while True:
            ends = [
                lane.next_end
                for lane in self._lanes
                if lane.next_end is not None and lane.next_end <= target
            ]
            step = max(min(ends), self._now or target) if ends else target
            self._now = step
            fired = [firing for lane in self._lanes if lane.due(step)
                     for firing in lane.advance(step)]
            self._feed(fired, step)
            if step >= target:
                return

    def _feed(self, firings: list[Firing], now: datetime) -> None:
        """Record firings and evaluate the automation events they publish, breadth first."""
        queue = deque(firings)
        budget = MAX_FEEDBACK
        while queue:
            firing = queue.popleft()
            automation = self._by_id[firing.automation_id]
            events = [state_event(automation, firing, state) for state in firing.trigger_states]
            if events:
                firing = firing.model_copy(update={"automation_triggered_event_id": events[0].id})
            self._fired.append(Fired(automation, firing, self._line_of(firing)))
            for event in events:
                if budget == 0:
                    self._truncated += 1
                    continue
                budget -= 1
                queue.extend(self._deliver(event, now))

    def _line_of(self, firing: Firing) -> int | None:
        event = firing.triggering_event
        if event is None or "id" not in event:
            return None
        try:
            return self._lines.get(UUID(str(event["id"])))
        except ValueError:
            return None
