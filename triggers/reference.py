"""The reference evaluator: small, in memory, one event at a time, explicit clock.

It defines the trigger semantics that the Redis engine must reproduce (property tests compare
the two) and runs ``automations test`` offline. It favours being obviously right over being
fast: it loops over every trigger, and keeps all state in dicts owned by the instance.

Two clocks. Windows are on event time (``occurred``). ``now`` (wall time, given by the
caller) stamps firings (``Firing.triggered``), measures the ``follows`` wait, and, shifted
by the events-clock offset, gives ``as_of``, the time proactive windows and expiry use.

Semantics (reference sections 2-3, with the DESIGN.md section 5 fixes); ``W`` = ``within``:

1. Dedupe and ``follows``. An event id is evaluated at most once (duplicates, also of a held
   event, are dropped). An event whose ``follows`` leader has not been processed is held,
   unless ``follows_wait`` is 0; when the leader is processed its held followers are processed
   right after it (ordered by ``occurred``, then id; their own followers likewise, depth
   first). A follower held ``follows_wait`` (default 15 min of wall time) is released by
   ``advance``, oldest ``occurred`` first. Events named ``prefect.log.write`` are marked
   seen but never evaluated.
2. Events clock (section 3.7). ``clock`` = max ``occurred`` (clamped to ``now``) of the
   processed events, ``clock_updated`` = ``now`` of the last processed event; ``offset =
   clock - clock_updated`` (<= 0; 0 before any event); ``as_of = now + offset``. A consumer
   behind by 30 s thus evaluates proactive windows 30 s in the past and does not fire for
   events still queued. (Like Prefect, the offset stays until the next event; pass
   ``lag_compensation=False`` for ``as_of = now``.) The clock moves before the event is
   evaluated.
3. Buckets: one per (automation, event trigger, ``for_each`` key), ``[start, end)``, a count
   and the last counted event. For each event that a trigger covers (name in expect or
   after, resources match), with ``at = occurred``:
   - an ``after`` event opens a window ``[at, at + W)`` if none is open, with count -1 when
     the event is also expected (it does not count itself) else 0; an open window is kept
     (a repeated ``after`` event neither resets nor extends it);
   - without ``after``, an expected event with no open window opens ``[at - 15 min, at + W)``
     (the first window is backdated 15 min to absorb out-of-order events);
   - an event that is not expected stops there; an expected event with no window is dropped,
     or, for a trigger with ``after``, held (point 6);
   - for a trigger with ``after`` (and W > 0), an event at or beyond the end of the open
     window first closes it: a Proactive one below threshold fires (triggering event: this
     event if expected, else the bucket's last event), and the bucket is deleted. The event
     is then handled as if no window were open (an ``after`` event opens the next window, an
     expected one is held). Prefect instead ignores such an ``after`` event (its insert is a
     no-op while the ended bucket waits for the sweep), losing the next window;
   - EVALUATE (section 3.4): an event before ``start`` is ignored (not counted: this is the
     cooldown); one in ``[start, end)`` (or any, for Reactive with W = 0) counts. Reactive
     fires as soon as ``count >= threshold`` (triggering event: this event) and the bucket
     is deleted; the next window is ``[max(end, at), +W)``, so events until the old ``end``
     are ignored: W doubles as a cooldown. With ``after`` a finished window is deleted (the
     next ``after`` event opens one); with W = 0 a bucket that did not fire stays (until
     expiry). An event beyond ``end`` rolls the window and is counted in the new one.
   - Proactive fires when a window has ended with ``count < threshold`` (triggering event:
     the bucket's last counted event, may be null), from ``advance`` or from an event beyond
     ``end``. A proactive event in both ``after`` and ``expect`` that meets the threshold
     slides the window to ``[at, at + W)`` (heartbeat).
4. Proactive windows end-to-end. ``advance(now)`` evaluates every proactive bucket with
   ``end <= as_of`` (by ``end``, then key) and fires those below threshold; a trigger
   without ``after`` rolls to ``[max(end, as_of), +W)`` with count 0, one with ``after`` is
   deleted. A proactive bucket that reaches its threshold is deleted at once when the trigger
   has ``after`` or ``for_each`` (it can no longer fire: Prefect deletes it on its next 5-s
   pass; we do it deterministically). So ``for_each`` without ``after`` and threshold 1 can
   never fire (``never_fires`` warns). A proactive trigger without ``for_each`` and without
   ``after`` keeps one global rolling bucket, created ``[as_of, as_of + W)`` at the first
   call (``process`` or ``advance``) after it is loaded and never deleted (a window that met
   the threshold just rolls). DESIGN fix: a proactive trigger without ``for_each`` but with
   ``after`` gets no global bucket; only its ``after`` events open windows.
5. Expiry. A Reactive bucket with ``end <= as_of - 60 s`` is gone (checked when read, and
   swept by ``advance``); so ``within: 0, threshold: N`` needs N events within about a
   minute. Proactive buckets leave only through evaluation.
6. Held expect events (DESIGN fix, reactive and proactive). For a trigger with ``after``, an
   expected, non-``after`` event that finds no open window is held for its key. When a
   window opens (an ``after`` event, or the heartbeat slide) the held events with
   ``start <= occurred < end`` (``occurred >= start`` for Reactive W = 0) are counted and
   forgotten; the latest becomes the last event. A Reactive window that then meets the
   threshold fires at once (triggering event: the latest held one, or the opening event
   when it is itself expected). A held event is dropped once ``occurred + W + 15 min <=
   as_of``.
7. Resolved (DESIGN fix). After a top-level proactive event trigger fires for a key, the
   next ``threshold`` expected events covered for that key (any window, held or not) make a
   ``Resolved`` firing (triggering event: the last of them), which runs
   ``actions_on_resolve``. Proactive children of composites do not resolve.
8. Composites (section 3.11). A child firing goes to its parent. Needing 1 (``any``,
   ``require: 1``, a one-child sequence) the parent fires at once. Otherwise the parent
   keeps the latest firing per child; with ``within``, child firings with ``triggered <
   this.triggered - within`` (wall time) are dropped first. Compound fires when it holds
   ``needed`` children; sequence when it holds all and their ``triggered`` times do not
   decrease in declared order (ties count as in order). Firing clears the parent's state.
   The parent firing carries the child firings (declared order), this child's triggering
   event, and ``triggering_labels`` = the children's labels merged in declared order (a
   later child wins on a clash; DESIGN fix: Prefect sends none).
9. Output. ``process`` and ``advance`` return the automation-level firings (top-level
   trigger, ``trigger_id`` of the automation's trigger), in automation order then trigger
   walk order. Disabled automations are ignored entirely.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from automations.events import Event
from triggers.firing import Firing, TriggerState
from triggers.models import (
    CompoundTrigger,
    EventTrigger,
    Posture,
    SequenceTrigger,
    TriggerPath,
    all_event_triggers,
    effective_within,
)
from triggers.reference_parts import Bucket, CompositeBook, FollowerQueue, event_order

PRECEDING_EVENT_LOOKBACK = timedelta(minutes=15)
EXPIRED_BUCKET_BUFFER = timedelta(seconds=60)
HELD_EVENT_RETENTION = timedelta(minutes=15)
DEFAULT_FOLLOWS_WAIT = timedelta(minutes=15)
SKIPPED_EVENTS = frozenset({"prefect.log.write"})

BucketKey = tuple[UUID, UUID, tuple[str, ...]]


class AutomationLike(Protocol):
    """What the evaluator needs of an automation (``automations.models.Automation`` fits)."""

    @property
    def id(self) -> UUID: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def trigger(self) -> EventTrigger | CompoundTrigger | SequenceTrigger: ...


@dataclass(slots=True)
class _Loaded:
    id: UUID
    top: UUID
    paths: list[TriggerPath]


class ReferenceEvaluator:
    """In-memory oracle of the trigger semantics in this module's docstring."""

    def __init__(
        self,
        automations: Iterable[AutomationLike],
        *,
        follows_wait: timedelta = DEFAULT_FOLLOWS_WAIT,
        lag_compensation: bool = True,
    ) -> None:
        self.follows_wait = follows_wait
        self.lag_compensation = lag_compensation
        self._automations = [
            _Loaded(a.id, a.trigger.id, all_event_triggers(a.trigger))
            for a in automations
            if a.enabled
        ]
        self.buckets: dict[BucketKey, Bucket] = {}
        self._held: dict[BucketKey, list[Event]] = {}
        self._unresolved: dict[BucketKey, int] = {}
        self._composites = CompositeBook()
        self._queue = FollowerQueue(follows_wait)
        self._clock: datetime | None = None
        self._clock_updated: datetime | None = None
        self._as_of: datetime | None = None

    def __repr__(self) -> str:
        return (
            f"ReferenceEvaluator(automations={len(self._automations)}, "
            f"buckets={len(self.buckets)}, seen={self._queue.seen}, "
            f"held_followers={len(self._queue)})"
        )

    # -- public API ------------------------------------------------------------------
    def process(self, event: Event, now: datetime) -> list[Firing]:
        """Handle one delivered event; return the automation firings it caused."""
        out: list[Firing] = []
        if self._queue.admit(event, now):
            self._handle(event, now, out)
        return out

    def advance(self, now: datetime) -> list[Firing]:
        """Release lost followers, fire ended proactive windows, expire state."""
        out: list[Firing] = []
        self._release_lost(now, out)
        as_of = self._as_of = self.as_of(now)
        self._ensure_globals(as_of)
        for loaded in self._automations:
            for path in loaded.paths:
                if path.trigger.posture is Posture.Proactive:
                    self._proactive_pass(loaded, path, as_of, now, out)
        self._sweep(as_of)
        return out

    def as_of(self, now: datetime) -> datetime:
        """``now`` shifted by the events-clock offset (module docstring, point 2)."""
        if not self.lag_compensation or self._clock is None or self._clock_updated is None:
            return now
        return now + (self._clock - self._clock_updated)

    def held_followers(self) -> int:
        return len(self._queue)

    # -- ordering --------------------------------------------------------------------
    def _handle(self, event: Event, now: datetime, out: list[Firing]) -> None:
        """Evaluate ``event``, then its held followers depth first (occurred order)."""
        stack = [event]
        while stack:
            current = stack.pop()
            followers = self._queue.mark_processed(current)
            if followers is None:
                continue
            if current.event not in SKIPPED_EVENTS:
                self._evaluate_event(current, now, out)
            stack.extend(reversed(followers))

    def _release_lost(self, now: datetime, out: list[Firing]) -> None:
        for event in self._queue.pop_lost(now):
            self._handle(event, now, out)

    # -- per event -------------------------------------------------------------------
    def _evaluate_event(self, event: Event, now: datetime, out: list[Firing]) -> None:
        occurred = min(event.occurred, now)
        self._clock = occurred if self._clock is None else max(self._clock, occurred)
        self._clock_updated = now
        as_of = self._as_of = self.as_of(now)
        self._ensure_globals(as_of)
        for loaded in self._automations:
            for path in loaded.paths:
                if path.trigger.compiled.covers(event):
                    for firing in self._on_event(loaded, path, event, now):
                        self._propagate(loaded, path, firing, out)

    def _on_event(
        self, loaded: _Loaded, path: TriggerPath, event: Event, now: datetime
    ) -> list[Firing]:
        trigger = path.trigger
        compiled = trigger.compiled
        bkey: BucketKey = (loaded.id, trigger.id, compiled.bucketing_key(event))
        expected = compiled.expects(event.event)
        opens = compiled.starts_after(event.event)
        within = effective_within(trigger)
        at = event.occurred
        fired = self._resolve(loaded, path, bkey, event, now) if expected else []
        bucket = self._live(bkey, trigger)
        if bucket is not None and trigger.after and not trigger.immediate and bucket.end <= at:
            fired += self._settle(bkey, trigger, bucket, event if expected else None, now)
            bucket = None
        if opens and bucket is None:
            bucket = self._open(bkey, trigger, at, at + within, -1 if expected else 0, event)
            if not expected:
                fired += self._after_opened(bkey, trigger, bucket, now)
        elif not trigger.after and expected and bucket is None:
            bucket = self._open(bkey, trigger, at - PRECEDING_EVENT_LOOKBACK, at + within, 0, event)
        if not expected:
            return fired
        if bucket is None:
            if trigger.after:
                self._held.setdefault(bkey, []).append(event)
            return fired
        fired += self._evaluate(bkey, trigger, bucket, at, event, now)
        self._tidy(bkey, trigger)
        return fired

    def _settle(
        self,
        bkey: BucketKey,
        trigger: EventTrigger,
        bucket: Bucket,
        late: Event | None,
        now: datetime,
    ) -> list[Firing]:
        """An event beyond an ``after`` window's end: close that window first (point 3)."""
        del self.buckets[bkey]
        if trigger.posture is Posture.Proactive and bucket.count < trigger.threshold:
            return [self._firing(bkey, trigger, late or bucket.last_event, now)]
        return []

    def _after_opened(
        self, bkey: BucketKey, trigger: EventTrigger, bucket: Bucket, now: datetime
    ) -> list[Firing]:
        """An ``after``-only event opened a window that held events may already satisfy."""
        if trigger.posture is Posture.Reactive and bucket.count >= trigger.threshold:
            del self.buckets[bkey]
            return [self._firing(bkey, trigger, bucket.last_event, now)]
        self._tidy(bkey, trigger)
        return []

    def _evaluate(
        self,
        bkey: BucketKey,
        trigger: EventTrigger,
        bucket: Bucket,
        at: datetime,
        event: Event | None,
        now: datetime,
    ) -> list[Firing]:
        """Reference section 3.4, with ``at`` the evaluation time (event time or as_of)."""
        fired: list[Firing] = []
        pending = 1 if event is not None else 0
        if at < bucket.start:
            return fired
        if pending and (trigger.immediate or bucket.start <= at < bucket.end):
            bucket.count += 1
            bucket.last_event = event
            pending = 0
        reactive = trigger.posture is Posture.Reactive
        meets = trigger.meets_threshold(bucket.count)
        if (reactive or bucket.end <= at) and meets:
            fired.append(self._firing(bkey, trigger, event or bucket.last_event, now))
            del self.buckets[bkey]
        elif at < bucket.end:
            if (
                event is not None
                and not reactive
                and not meets
                and self._is_heartbeat(trigger, event)
            ):
                within = effective_within(trigger)
                self._open(bkey, trigger, event.occurred, event.occurred + within, 0, event)
            return fired
        return fired + self._finish(bkey, trigger, bucket, at, event if pending else None, now)

    def _finish(
        self,
        bkey: BucketKey,
        trigger: EventTrigger,
        bucket: Bucket,
        at: datetime,
        carried: Event | None,
        now: datetime,
    ) -> list[Firing]:
        """The window is over (fired or ended): delete, keep or roll it."""
        if trigger.after:
            self.buckets.pop(bkey, None)
            return []
        within = effective_within(trigger)
        if not within:
            return []
        start = max(bucket.end, at)
        if trigger.posture is Posture.Reactive and carried is not None:
            fresh = self._open(bkey, trigger, start, start + within, 0, None)
            return self._evaluate(bkey, trigger, fresh, at, carried, now)
        self._open(bkey, trigger, start, start + within, 1 if carried else 0, carried)
        return []

    @staticmethod
    def _is_heartbeat(trigger: EventTrigger, event: Event) -> bool:
        compiled = trigger.compiled
        return compiled.starts_after(event.event) and compiled.expects(event.event)

    # -- bucket state ----------------------------------------------------------------
    def _live(self, bkey: BucketKey, trigger: EventTrigger) -> Bucket | None:
        """The bucket, unless it is an expired Reactive one (then it is deleted)."""
        bucket = self.buckets.get(bkey)
        if bucket is None or trigger.posture is Posture.Proactive or self._as_of is None:
            return bucket
        if bucket.end <= self._as_of - EXPIRED_BUCKET_BUFFER:
            del self.buckets[bkey]
            return None
        return bucket

    def _open(
        self,
        bkey: BucketKey,
        trigger: EventTrigger,
        start: datetime,
        end: datetime,
        count: int,
        last: Event | None,
    ) -> Bucket:
        """Start (or restart) a window, counting held expect events that fall inside it."""
        bucket = Bucket(start, end, count, last)
        held = self._held.pop(bkey, [])
        if held and self._as_of is not None:
            horizon = self._as_of - effective_within(trigger) - HELD_EVENT_RETENTION
            held = [e for e in held if e.occurred > horizon]
        keep: list[Event] = []
        counted: list[Event] = []
        for event in held:
            inside = start <= event.occurred and (trigger.immediate or event.occurred < end)
            (counted if inside else keep).append(event)
        if keep:
            self._held[bkey] = keep
        if counted:
            bucket.count += len(counted)
            bucket.last_event = max(counted, key=event_order)
        self.buckets[bkey] = bucket
        return bucket

    def _tidy(self, bkey: BucketKey, trigger: EventTrigger) -> None:
        """A proactive bucket that met its threshold can no longer fire (point 4)."""
        bucket = self.buckets.get(bkey)
        if (
            bucket is not None
            and trigger.posture is Posture.Proactive
            and bucket.count >= trigger.threshold
            and (trigger.after or trigger.for_each)
        ):
            del self.buckets[bkey]

    def _ensure_globals(self, as_of: datetime) -> None:
        for loaded in self._automations:
            for path in loaded.paths:
                trigger = path.trigger
                if (
                    trigger.posture is Posture.Proactive
                    and not trigger.for_each
                    and not trigger.after
                ):
                    bkey: BucketKey = (loaded.id, trigger.id, ())
                    if bkey not in self.buckets:
                        self._open(bkey, trigger, as_of, as_of + effective_within(trigger), 0, None)

    def _proactive_pass(
        self, loaded: _Loaded, path: TriggerPath, as_of: datetime, now: datetime, out: list[Firing]
    ) -> None:
        trigger = path.trigger
        due = sorted(
            (
                (bucket.end, bkey)
                for bkey, bucket in self.buckets.items()
                if bkey[0] == loaded.id and bkey[1] == trigger.id and bucket.end <= as_of
            ),
        )
        for _, bkey in due:
            for firing in self._evaluate(bkey, trigger, self.buckets[bkey], as_of, None, now):
                self._propagate(loaded, path, firing, out)
            self._tidy(bkey, trigger)

    def _sweep(self, as_of: datetime) -> None:
        reactive = {
            (loaded.id, path.trigger.id): path.trigger
            for loaded in self._automations
            for path in loaded.paths
            if path.trigger.posture is Posture.Reactive
        }
        expired = [
            bkey
            for bkey, bucket in self.buckets.items()
            if (bkey[0], bkey[1]) in reactive and bucket.end <= as_of - EXPIRED_BUCKET_BUFFER
        ]
        for bkey in expired:
            del self.buckets[bkey]
        triggers = {(lo.id, p.trigger.id): p.trigger for lo in self._automations for p in lo.paths}
        for bkey, held in list(self._held.items()):
            trigger = triggers.get((bkey[0], bkey[1]))
            within = effective_within(trigger) if trigger else timedelta(0)
            keep = [e for e in held if e.occurred + within + HELD_EVENT_RETENTION > as_of]
            if keep:
                self._held[bkey] = keep
            else:
                del self._held[bkey]

    # -- firings ---------------------------------------------------------------------
    def _firing(
        self,
        bkey: BucketKey,
        trigger: EventTrigger,
        event: Event | None,
        now: datetime,
        state: TriggerState = TriggerState.Triggered,
    ) -> Firing:
        return Firing(
            automation_id=bkey[0],
            trigger_id=trigger.id,
            trigger_states=[state],
            triggered=now,
            triggering_labels=trigger.compiled.triggering_labels(bkey[2]),
            triggering_event=None if event is None else event.to_dict(),
        )

    def _resolve(
        self, loaded: _Loaded, path: TriggerPath, bkey: BucketKey, event: Event, now: datetime
    ) -> list[Firing]:
        """Count an expected event towards resolving an unresolved proactive firing."""
        remaining = self._unresolved.get(bkey)
        if remaining is None:
            return []
        if remaining > 1:
            self._unresolved[bkey] = remaining - 1
            return []
        del self._unresolved[bkey]
        return [self._firing(bkey, path.trigger, event, now, TriggerState.Resolved)]

    def _propagate(
        self, loaded: _Loaded, path: TriggerPath, firing: Firing, out: list[Firing]
    ) -> None:
        """Send an event trigger's firing up through its composite parents."""
        trigger = path.trigger
        if (
            not path.parents
            and trigger.posture is Posture.Proactive
            and TriggerState.Triggered in firing.trigger_states
        ):
            key = tuple(firing.triggering_labels[label] for label in trigger.compiled.labels)
            self._unresolved[(loaded.id, trigger.id, key)] = trigger.threshold
        for parent in reversed(path.parents):
            parent_firing = self._composites.offer(loaded.id, parent, firing)
            if parent_firing is None:
                return
            firing = parent_firing
        out.append(firing)
