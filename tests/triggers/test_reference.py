"""The reference evaluator: every behaviour of reference section 3.5 plus the DESIGN fixes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automations.events import Event
from automations.models import Automation
from triggers.firing import Firing, TriggerState
from triggers.models import (
    CompoundTrigger,
    EventTrigger,
    Posture,
    SequenceTrigger,
    Trigger,
    never_fires,
)
from triggers.reference import ReferenceEvaluator

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN = "prefect.flow-run.1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Auto:
    trigger: EventTrigger | CompoundTrigger | SequenceTrigger
    id: UUID = field(default_factory=uuid4)
    enabled: bool = True


def ev(name: str, t: float, resource: str = RUN, **extra: Any) -> Event:
    return Event(event=name, occurred=at(t), resource={"prefect.resource.id": resource}, **extra)


class Harness:
    """Feeds events with ``now`` = occurred + lag and records the firings."""

    def __init__(self, *triggers: Trigger, lag: float = 0, **options: Any) -> None:
        self.automations = [Auto(t) for t in triggers]
        self.evaluator = ReferenceEvaluator(self.automations, **options)
        self.lag = lag
        self.firings: list[Firing] = []

    def send(self, event: Event, now: datetime | None = None) -> list[Firing]:
        fired = self.evaluator.process(event, now or event.occurred + timedelta(seconds=self.lag))
        self.firings += fired
        return fired

    def advance(self, seconds: float) -> list[Firing]:
        fired = self.evaluator.advance(at(seconds))
        self.firings += fired
        return fired


def event_names(firings: list[Firing]) -> list[str | None]:
    return [f.triggering_event["event"] if f.triggering_event else None for f in firings]


def event_times(firings: list[Firing]) -> list[float]:
    return [
        (datetime.fromisoformat(f.triggering_event["occurred"]) - T0).total_seconds()
        for f in firings
        if f.triggering_event
    ]


# -- reactive (reference 3.5) ------------------------------------------------------------
def test_reactive_every_event_fires_independently() -> None:
    h = Harness(EventTrigger(expect={"x"}))
    for t in (0, 0, 1, 2):
        h.send(ev("x", t))
    h.send(ev("y", 3))
    assert len(h.firings) == 4
    assert event_names(h.firings) == ["x"] * 4
    assert h.firings[0].trigger_states == [TriggerState.Triggered]
    assert h.firings[0].triggered == at(0)
    assert h.firings[0].automation_id == h.automations[0].id
    assert h.firings[0].trigger_id == h.automations[0].trigger.id


def test_reactive_within_zero_threshold_n_lives_about_a_minute() -> None:
    h = Harness(EventTrigger(expect={"x"}, threshold=2, for_each={"prefect.resource.id"}))
    h.send(ev("x", 0, "a"))
    assert h.send(ev("x", 30, "a"))  # 2 within a minute
    h.send(ev("x", 100, "b"))
    assert not h.send(ev("x", 161, "b"))  # the first bucket expired (end + 60 s)
    assert h.send(ev("x", 170, "b"))  # the second event opened a new bucket


def test_reactive_within_is_a_cooldown() -> None:
    h = Harness(EventTrigger(expect={"x"}, within=60))
    assert h.send(ev("x", 0))
    assert not h.send(ev("x", 10))  # ignored, not counted
    assert not h.send(ev("x", 59))
    assert h.send(ev("x", 61))  # next window [60, 120)
    assert not h.send(ev("x", 119))
    assert event_times(h.firings) == [0, 61]


def test_reactive_threshold_window_eager_and_backdated() -> None:
    h = Harness(EventTrigger(expect={"x"}, threshold=3, within=60))
    h.send(ev("x", 0))
    h.send(ev("x", -600))  # 10 min before the first: inside the 15-min backdated window
    assert h.send(ev("x", 30))  # fires at once on the third
    assert event_times(h.firings) == [30]


def test_reactive_window_expires_then_event_opens_fresh_window() -> None:
    h = Harness(EventTrigger(expect={"x"}, threshold=2, within=60))
    h.send(ev("x", 0))
    assert not h.send(ev("x", 65))  # beyond the window: starts [65, 125) counting itself
    assert h.send(ev("x", 70))


def test_reactive_after_then_expect() -> None:
    h = Harness(EventTrigger(after={"A"}, expect={"B"}, within=60))
    assert not h.send(ev("B", 0))  # no window: dropped (held, but no A before it)
    h.send(ev("A", 10))
    h.send(ev("A", 50))  # repeated A does not reset the window
    assert h.send(ev("B", 65))  # inside [10, 70)
    assert not h.send(ev("B", 66))  # bucket deleted on firing: needs a new A
    h.send(ev("A", 100))
    assert not h.send(ev("B", 170))  # after the window: deleted silently
    assert not h.send(ev("B", 171))
    assert event_times(h.firings) == [65]


def test_reactive_repeated_after_does_not_extend_window() -> None:
    h = Harness(EventTrigger(after={"A"}, expect={"B"}, within=60))
    h.send(ev("A", 0))
    h.send(ev("A", 50))
    assert not h.send(ev("B", 70))  # window stayed [0, 60)


def test_reactive_after_within_zero_is_about_a_minute() -> None:
    h = Harness(EventTrigger(after={"A"}, expect={"B"}))
    h.send(ev("A", 0))
    assert h.send(ev("B", 45))  # immediate: any time later while the bucket lives
    h.send(ev("A", 100))
    assert not h.send(ev("B", 161))  # swept 60 s after A


def test_after_within_zero_threshold_two_never_fires() -> None:
    """What ``never_fires`` warns about: the immediate window closes at the first B."""
    trigger = EventTrigger(after={"A"}, expect={"B"}, threshold=2)
    assert never_fires(trigger) is not None
    h = Harness(trigger)
    for t in range(0, 50, 5):
        h.send(ev("A" if t % 10 == 0 else "B", t))
    assert not h.firings


def test_same_event_in_after_and_expect() -> None:
    h = Harness(EventTrigger(after={"x"}, expect={"x"}, threshold=2, within=60))
    assert not h.send(ev("x", 0))  # opens at -1 -> 0
    assert not h.send(ev("x", 1))
    assert h.send(ev("x", 2))
    assert event_times(h.firings) == [2]


# -- proactive (reference 3.5 and 3.6) ---------------------------------------------------
def stuck() -> EventTrigger:
    return EventTrigger(
        posture=Posture.Proactive,
        after={"Running"},
        expect={"Completed"},
        for_each={"prefect.resource.id"},
        within=60,
    )


def test_proactive_a_not_followed_by_b() -> None:
    h = Harness(stuck())
    h.send(ev("Running", 0, "r1"))
    h.send(ev("Running", 0, "r2"))
    h.send(ev("Completed", 30, "r1"))
    assert not h.advance(59)
    fired = h.advance(60)
    assert [f.triggering_labels for f in fired] == [{"prefect.resource.id": "r2"}]
    assert event_names(fired) == ["Running"]  # the bucket's last event
    assert fired[0].triggered == at(60)
    assert not h.advance(200)  # once


def test_proactive_late_b_after_end_fires_at_once() -> None:
    h = Harness(stuck())
    h.send(ev("Running", 0))
    fired = h.send(ev("Completed", 70))  # after the end, before any advance
    assert event_names(fired) == ["Completed"]
    assert not h.advance(80)


def test_proactive_heartbeat_slides() -> None:
    h = Harness(
        EventTrigger(
            posture=Posture.Proactive,
            after={"heartbeat"},
            expect={"heartbeat", "Completed"},
            for_each={"prefect.resource.id"},
            within=30,
        )
    )
    for t in (0, 20, 40, 60):
        h.send(ev("heartbeat", t))
        assert not h.advance(t + 5)
    assert not h.advance(89)
    fired = h.advance(90)  # silence for 30 s after the heartbeat at 60
    assert event_times(fired) == [60]
    h.send(ev("heartbeat", 100))
    h.send(ev("Completed", 110))  # terminal: meets the threshold, bucket gone
    assert not h.advance(500)


def test_proactive_global_rolling_window() -> None:
    h = Harness(EventTrigger(posture=Posture.Proactive, expect={"x"}, threshold=2, within=60))
    assert not h.advance(0)  # creates [0, 60)
    h.send(ev("x", 10))
    assert len(h.advance(60)) == 1  # 1 < 2: fires, rolls to [60, 120)
    h.send(ev("x", 70))
    h.send(ev("x", 80))
    assert not h.advance(120)  # met: rolls to [120, 180)
    fired = h.advance(180)
    assert len(fired) == 1 and fired[0].triggering_event is None
    assert h.firings[0].triggering_event is not None


def test_proactive_global_with_after_honours_after() -> None:
    """DESIGN fix: no global bucket for a proactive trigger without for_each but with after."""
    h = Harness(EventTrigger(posture=Posture.Proactive, after={"A"}, expect={"B"}, within=60))
    assert not h.advance(0)
    assert not h.advance(1000)
    h.send(ev("A", 1000))
    assert len(h.advance(1060)) == 1
    assert not h.advance(2000)


def test_proactive_for_each_without_after() -> None:
    never = Harness(
        EventTrigger(posture=Posture.Proactive, expect={"x"}, for_each={"prefect.resource.id"})
    )
    never.send(ev("x", 0))
    assert not never.advance(100) and not never.advance(1000)

    h = Harness(
        EventTrigger(
            posture=Posture.Proactive,
            expect={"x"},
            for_each={"prefect.resource.id"},
            threshold=2,
            within=60,
        )
    )
    h.send(ev("x", 0, "k"))  # [-900, 60)
    assert len(h.advance(60)) == 1
    assert len(h.advance(120)) == 1  # every window while below threshold
    h.send(ev("x", 130, "k"))
    h.send(ev("x", 140, "k"))  # meets: deleted, nothing re-creates it
    assert not h.advance(180) and not h.advance(1000)


def test_expect_before_after_is_held_no_false_proactive_firing() -> None:
    """DESIGN fix: Completed delivered before the Running that precedes it in event time."""
    h = Harness(stuck())
    h.send(ev("Completed", 10))
    h.send(ev("Running", 5))
    assert not h.advance(100)
    assert not h.firings


def test_expect_before_after_is_held_reactive_fires() -> None:
    h = Harness(EventTrigger(after={"A"}, expect={"B"}, within=60))
    h.send(ev("B", 10))
    fired = h.send(ev("A", 5))
    assert event_names(fired) == ["B"]


def test_held_expect_outside_the_window_is_not_counted() -> None:
    h = Harness(stuck())
    h.send(ev("Completed", 100))  # 95 s after Running: outside [5, 65)
    h.send(ev("Running", 5))
    assert len(h.advance(65)) == 1


def test_held_expect_expires() -> None:
    h = Harness(stuck())
    h.send(ev("Completed", 10))
    later = 10 + 60 + 15 * 60  # held for W + 15 min of the events clock only
    h.send(ev("Unrelated", later))  # moves the events clock
    h.send(ev("Running", 5), now=at(later))
    assert len(h.advance(later + 1)) == 1


def test_lag_compensation_delays_proactive_evaluation() -> None:
    h = Harness(stuck(), lag=30)
    h.send(ev("Running", 0))  # processed at wall 30: offset -30
    assert not h.advance(70)  # as of 40
    assert len(h.advance(90)) == 1  # as of 60
    plain = Harness(stuck(), lag=30, lag_compensation=False)
    plain.send(ev("Running", 0))
    assert len(plain.advance(60)) == 1


def test_proactive_resolved_after_condition_met_again() -> None:
    h = Harness(stuck())
    h.send(ev("Running", 0))
    assert h.advance(60)[0].trigger_states == [TriggerState.Triggered]
    resolved = h.send(ev("Completed", 90))
    assert [f.trigger_states for f in resolved] == [[TriggerState.Resolved]]
    assert resolved[0].triggering_labels == {"prefect.resource.id": RUN}
    assert not h.send(ev("Completed", 95))  # only once


# -- composites (reference 3.11) ---------------------------------------------------------
def child(name: str, **kwargs: Any) -> EventTrigger:
    return EventTrigger(expect={name}, **kwargs)


def test_compound_any_fires_on_each_child() -> None:
    a, b = child("a"), child("b")
    h = Harness(CompoundTrigger(require="any", triggers=[a, b]))
    h.send(ev("a", 0))
    h.send(ev("b", 1))
    assert len(h.firings) == 2
    assert [f.triggering_firings[0].trigger_id for f in h.firings] == [a.id, b.id]


def test_compound_all_within_labels_and_reset() -> None:
    a = child("a", for_each={"prefect.resource.id"})
    b = child("b", for_each={"prefect.resource.name"})
    top = CompoundTrigger(require="all", within=timedelta(seconds=60), triggers=[a, b])
    h = Harness(top)
    h.send(ev("a", 0))
    assert not h.send(ev("b", 100))  # a's firing is older than 60 s: dropped
    fired = h.send(ev("a", 120))
    assert len(fired) == 1
    firing = fired[0]
    assert firing.trigger_id == top.id
    assert [f.trigger_id for f in firing.triggering_firings] == [a.id, b.id]
    assert firing.triggering_event is not None and firing.triggering_event["event"] == "a"
    assert firing.triggering_labels == {"prefect.resource.id": RUN, "prefect.resource.name": ""}
    assert not h.send(ev("b", 121))  # state was cleared


def test_compound_n_of_m_keeps_latest_per_child() -> None:
    h = Harness(CompoundTrigger(require=2, triggers=[child("a"), child("b"), child("c")]))
    h.send(ev("a", 0))
    assert not h.send(ev("a", 1))  # same child again: still one
    fired = h.send(ev("c", 2))
    assert len(fired) == 1
    assert event_times(fired[0].triggering_firings) == [1, 2]


def test_sequence_order() -> None:
    a, b, c = child("a"), child("b"), child("c")
    h = Harness(SequenceTrigger(triggers=[a, b, c]))
    h.send(ev("b", 0))
    h.send(ev("a", 1))
    assert not h.send(ev("c", 2))  # b before a: out of order
    h.send(ev("b", 3))
    assert h.send(ev("c", 4))
    assert [f.trigger_id for f in h.firings[0].triggering_firings] == [a.id, b.id, c.id]


def test_sequence_within() -> None:
    h = Harness(SequenceTrigger(within=timedelta(seconds=10), triggers=[child("a"), child("b")]))
    h.send(ev("a", 0))
    assert not h.send(ev("b", 11))
    h.send(ev("a", 20))
    assert h.send(ev("b", 25))


def test_nested_composites_and_proactive_child() -> None:
    proactive = EventTrigger(posture=Posture.Proactive, after={"start"}, expect={"end"}, within=30)
    inner = SequenceTrigger(triggers=[child("a"), child("b")])
    h = Harness(CompoundTrigger(require="all", triggers=[inner, proactive]))
    h.send(ev("start", 0))
    h.send(ev("a", 1))
    h.send(ev("b", 2))
    fired = h.advance(30)
    assert len(fired) == 1
    assert [f.trigger_id for f in fired[0].triggering_firings] == [inner.id, proactive.id]
    assert not h.send(ev("end", 40))  # children of composites do not resolve


# -- ordering, dedupe, filters -----------------------------------------------------------
def test_duplicate_event_ids_count_once() -> None:
    h = Harness(EventTrigger(expect={"x"}, threshold=2, within=60))
    event = ev("x", 0)
    h.send(event)
    assert not h.send(event)
    assert h.send(ev("x", 1))


def test_follows_holds_until_leader() -> None:
    h = Harness(stuck())
    running = ev("Running", 0)
    completed = ev("Completed", 10, follows=running.id)
    log = ev("Other", 11, follows=completed.id)
    assert not h.send(completed)
    assert not h.send(log)
    assert h.evaluator.held_followers() == 2
    assert not h.send(completed)  # duplicate of a held event
    h.send(running)  # releases completed, then its follower
    assert h.evaluator.held_followers() == 0
    assert not h.advance(100)  # Completed counted: no false firing


def test_follows_leader_already_seen_or_self() -> None:
    h = Harness(EventTrigger(expect={"x"}))
    leader = ev("x", 0)
    h.send(leader)
    assert h.send(ev("x", 1, follows=leader.id))
    me = ev("x", 2)
    assert h.send(me.model_copy(update={"follows": me.id}))


def test_lost_follower_released_after_the_wait() -> None:
    h = Harness(EventTrigger(expect={"x"}), follows_wait=timedelta(minutes=15))
    lost = ev("x", 0, follows=uuid4())
    h.send(lost)
    assert not h.advance(899)
    fired = h.advance(900)
    assert event_times(fired) == [0]
    assert fired[0].triggered == at(900)
    assert not h.send(lost)  # now seen


def test_follows_wait_zero_does_not_hold() -> None:
    h = Harness(EventTrigger(expect={"x"}), follows_wait=timedelta(0))
    assert h.send(ev("x", 0, follows=uuid4()))


def test_released_followers_in_occurred_order() -> None:
    h = Harness(EventTrigger(after={"A"}, expect={"B"}, within=60))
    leader = ev("L", 0)
    b = ev("B", 20, follows=leader.id)
    a = ev("A", 10, follows=leader.id)
    h.send(b)
    h.send(a)
    assert event_names(h.send(leader)) == ["B"]


def test_log_write_events_are_skipped() -> None:
    h = Harness(EventTrigger())
    assert not h.send(ev("prefect.log.write", 0))
    assert h.send(ev("anything", 1))


def test_disabled_automation_is_ignored_and_real_model_fits() -> None:
    disabled = Automation(name="off", enabled=False, trigger=EventTrigger(), actions=[])
    enabled = Automation(name="on", trigger=EventTrigger(expect={"x"}), actions=[])
    evaluator = ReferenceEvaluator([disabled, enabled])
    fired = evaluator.process(ev("x", 0), at(0))
    assert [f.automation_id for f in fired] == [enabled.id]
    assert "automations=1" in repr(evaluator)


# -- windows closed by a later event (module docstring, point 3) ------------------------
def test_after_event_beyond_an_ended_window_opens_the_next() -> None:
    h = Harness(stuck())
    h.send(ev("Running", 0))
    fired = h.send(ev("Running", 100))  # first window [0, 60) is over: fires, then reopens
    assert event_times(fired) == [0]
    assert not h.advance(159)
    assert event_times(h.advance(160)) == [100]


def test_reactive_after_window_ended_then_late_after_counts_held() -> None:
    h = Harness(EventTrigger(after={"A"}, expect={"B"}, within=60))
    h.send(ev("A", 0))
    assert not h.send(ev("B", 70))  # closes [0, 60) without firing; B is held
    fired = h.send(ev("A", 65))  # delivered late: opens [65, 125) and counts B
    assert event_times(fired) == [70]


# -- property: a follows chain makes arrival order irrelevant ---------------------------
def zoo() -> list[Trigger]:
    per_run = {"prefect.resource.id"}
    return [
        EventTrigger(expect={"B"}),
        EventTrigger(expect={"B", "C"}, threshold=2, within=20, for_each=per_run),
        EventTrigger(after={"A"}, expect={"B"}, within=30, for_each=per_run),
        EventTrigger(after={"A"}, expect={"A", "C"}, threshold=2, within=40),
        EventTrigger(
            posture=Posture.Proactive, after={"A"}, expect={"C"}, within=25, for_each=per_run
        ),
        EventTrigger(posture=Posture.Proactive, expect={"B"}, threshold=2, within=30),
        CompoundTrigger(
            require="all",
            within=timedelta(seconds=50),
            triggers=[child("A", for_each=per_run), child("C")],
        ),
        SequenceTrigger(triggers=[child("A"), child("B"), child("C")]),
    ]


def summary(firings: list[Firing]) -> list[tuple[Any, ...]]:
    return [
        (
            f.automation_id,
            f.trigger_id,
            tuple(sorted(f.triggering_labels.items())),
            f.triggering_event["id"] if f.triggering_event else None,
            tuple(f.trigger_states),
            len(f.triggering_firings),
        )
        for f in firings
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from("ABC"), st.sampled_from(["r1", "r2"]), st.integers(0, 20)),
        min_size=1,
        max_size=25,
    ),
    data=st.data(),
)
def test_follows_chain_arrival_order_does_not_matter(
    steps: list[tuple[str, str, int]], data: st.DataObject
) -> None:
    t = 0.0
    chain: list[Event] = []
    for name, run, gap in steps:
        t += gap
        chain.append(ev(name, t, run, follows=chain[-1].id if chain else None))
    now = at(t + 1)
    end = at(t + 1000)
    triggers = zoo()
    autos = [Auto(tr) for tr in triggers]

    ordered = ReferenceEvaluator(autos)
    expected = [f for e in chain for f in ordered.process(e, now)] + ordered.advance(end)

    arrivals = data.draw(st.permutations(chain + data.draw(st.lists(st.sampled_from(chain)))))
    shuffled = ReferenceEvaluator(autos)
    got = [f for e in arrivals for f in shuffled.process(e, now)] + shuffled.advance(end)
    assert shuffled.held_followers() == 0
    assert summary(got) == summary(expected)
