"""The engine's precomputed lookups: per-name plans and keyed op templates."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

from automations.engine.plan import Planner
from automations.engine.specs import immediate, window_specs
from automations.keys import Keys
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
        first.spec.ref, keys.bucket(a1, str(plain.id), ""), "{}", "", False, True, "")
    assert second.template is None
    key_str, labels = planner.encode(second.compiled, ("r1",))
    assert (key_str, labels) == ('["r1"]', '{"prefect.resource.id":"r1"}')
    assert second.keyed(key_str, labels) == (
        second.spec.ref, keys.bucket(a2, str(keyed.id), key_str), labels,
        keys.held_expect(a2, str(keyed.id), key_str), True, True,
        keys.unresolved(a2, str(keyed.id), key_str),
    )
    assert first.spec.ref != second.spec.ref


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
