"""The engine's precomputed lookups: per-name plans and keyed op templates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from automations.engine.plan import EMPTY, Planner
from automations.engine.specs import immediate, window_specs
from automations.events import Event
from automations.keys import Keys
from tests.triggers.test_sieve import resources, specs
from triggers.index import TriggerIndex
from triggers.models import CompoundTrigger, EventTrigger, Posture


def planner_for(*triggers: EventTrigger | CompoundTrigger) -> tuple[Planner, Keys, list[str]]:
    keys = Keys("t")
    index = TriggerIndex()
    spec_of = {}
    automation_ids = []
    for trigger in triggers:
        aid = uuid4()
        automation_ids.append(str(aid))
        index.add(aid, trigger)
        for spec in window_specs(aid, trigger, keys):
            spec_of[id(spec.trigger)] = spec
    return Planner(keys, index, spec_of.__getitem__), keys, automation_ids


def test_plan_keeps_only_triggers_whose_names_match() -> None:
    exact = EventTrigger(expect={"flow.Failed"})
    glob = EventTrigger(expect={"flow.*"}, after={"deploy.started"})
    planner, _, _ = planner_for(exact, glob)
    assert [s.spec.trigger for s in planner.candidates("flow.Failed")] == [exact, glob]
    assert [s.spec.trigger for s in planner.candidates("deploy.started")] == [glob]
    assert planner.candidates("other") == ()
    assert planner.plan("flow.Failed") is planner.plan("flow.Failed")  # built once
    [step] = planner.candidates("deploy.started")
    assert (step.after, step.expect) == (True, False)  # opens a window, is not counted


def test_static_and_keyed_templates_name_the_right_keys() -> None:
    plain = EventTrigger(expect={"x"})
    keyed = EventTrigger(expect={"x"}, after={"x"}, for_each={"prefect.resource.id"},
                         posture=Posture.Proactive, within=timedelta(seconds=30))
    planner, keys, (a1, a2) = planner_for(plain, keyed)
    first, second = planner.candidates("x")
    assert first.template == (
        first.spec.ref, keys.of(a1).bucket(a1, str(plain.id), ""), "{}", "", False, True, "")
    assert second.template is None
    key_str, labels = planner.encode(second.compiled, ("r1",))
    assert (key_str, labels) == ('["r1"]', '{"prefect.resource.id":"r1"}')
    assert second.keyed(key_str, labels) == (
        second.spec.ref, keys.of(a2).bucket(a2, str(keyed.id), key_str), labels,
        keys.of(a2).held_expect(a2, str(keyed.id), key_str), True, True,
        keys.of(a2).unresolved(a2, str(keyed.id), key_str),
    )
    assert first.spec.ref != second.spec.ref


def test_match_checks_only_the_steps_the_event_labels_may_interest() -> None:
    rid, role = "prefect.resource.id", "prefect.resource.role"
    deployments = [EventTrigger(expect={"x"}, match_related={role: "deployment", rid: f"d{i}"})
                   for i in range(20)]
    anywhere = EventTrigger(expect={"x"}, match={rid: "run.*"})
    other_name = EventTrigger(expect={"y"}, match_related={rid: "d3"})
    planner, _, _ = planner_for(*deployments, anywhere, other_name)
    related = [{role: "deployment", rid: "d3"}]
    plan, steps = planner.match(Event(event="x", resource={rid: "run.1"}, related=related))
    assert [s.spec.trigger for s in steps] == [deployments[3], anywhere]
    assert plan is planner.plan("x") and plan.steps == planner.candidates("x")
    assert len(plan.steps) == 21
    assert planner.match(Event(event="x", resource={rid: "job.1"}, related=related))[1] == [
        plan.steps[3]]
    assert planner.match(Event(event="z", resource={rid: "run.1"})) == (EMPTY, [])


# an event's resources have an id, related ones a role too
identified = resources.map(lambda r: {"prefect.resource.id": "a", **r})
in_role = identified.map(lambda r: {"prefect.resource.role": "a", **r})
names = st.sets(st.sampled_from(["a", "b", "c*"]), max_size=2)


@st.composite
def triggers(draw: st.DrawFn) -> EventTrigger | CompoundTrigger:
    def one() -> EventTrigger:
        related: Any = draw(st.one_of(specs, st.lists(specs, max_size=2)))
        return EventTrigger(expect=draw(names), after=draw(names), match=draw(specs),
                            match_related=related)

    if draw(st.booleans()):
        return one()
    return CompoundTrigger(require="any", triggers=[one(), one()])


@settings(max_examples=300, deadline=None)
@given(triggers=st.lists(triggers(), min_size=1, max_size=8),
       events=st.lists(st.tuples(st.sampled_from(["a", "b", "cc"]), identified,
                                 st.lists(in_role, max_size=3)), min_size=1, max_size=6))
def test_match_equals_the_full_scan(
    triggers: list[EventTrigger | CompoundTrigger],
    events: list[tuple[str, dict[str, str], list[dict[str, str]]]],
) -> None:
    planner, _, _ = planner_for(*triggers)
    for name, resource, related in events:
        plan, steps = planner.match(Event(event=name, resource=resource, related=related))
        assert plan is planner.plan(name)
        assert steps == [s for s in plan.steps if s.compiled.resources_covered(resource, related)]


def test_composite_children_are_ordered_and_clear_forgets_plans() -> None:
    compound = CompoundTrigger(require="all", triggers=[
        EventTrigger(expect={"x"}), EventTrigger(expect={"x"})])
    planner, _, _ = planner_for(compound)
    plan = planner.plan("x")
    assert plan.ordered and len(plan.steps) == 2
    planner.clear()
    assert planner.plan("x") is not plan


def test_immediate_triggers() -> None:
    assert immediate(EventTrigger(expect={"x"}))
    assert not immediate(EventTrigger(expect={"x"}, threshold=2))
    assert not immediate(EventTrigger(expect={"x"}, within=timedelta(seconds=5)))
    assert not immediate(EventTrigger(expect={"x"}, after={"y"}))
    assert not immediate(EventTrigger(expect={"x"}, posture=Posture.Proactive))
