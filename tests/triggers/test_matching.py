"""Reference section 2: label globs, negation, specs, related specs, event names, buckets."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from automations.events import Event
from triggers.matching import (
    LabelRef,
    NameMatcher,
    ResourceMatcher,
    ValueMatcher,
    glob_match,
    related_match,
    resource_matches,
)
from triggers.models import (
    CompoundTrigger,
    EventTrigger,
    Posture,
    SequenceTrigger,
    all_event_triggers,
    effective_within,
)


def flow_run_event(name: str = "prefect.flow-run.Failed", **extra: Any) -> Event:
    return Event(
        event=name,
        resource={"prefect.resource.id": "prefect.flow-run.1", "prefect.state-type": "FAILED"},
        related=[
            {
                "prefect.resource.id": "prefect.flow.f1",
                "prefect.resource.role": "flow",
                "prefect.resource.name": "etl",
            },
            {"prefect.resource.id": "prefect.deployment.d1", "prefect.resource.role": "deployment"},
            {"prefect.resource.id": "prefect.tag.dev", "prefect.resource.role": "tag"},
            {"prefect.resource.id": "prefect.tag.prod", "prefect.resource.role": "tag"},
        ],
        **extra,
    )


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("prefect.flow-run.1", "prefect.flow-run.1", True),
        ("prefect.flow-run.1", "prefect.flow-run.10", False),  # full string, not prefix
        ("prefect.flow-run.*", "prefect.flow-run.abc", True),
        ("prefect.flow-run.*", "xprefect.flow-run.abc", False),
        ("*.csv", "s3://bucket/a.csv", True),
        ("s3://*.csv", "s3://bucket/a.csv", True),
        ("s3://*.csv", "s3://bucket/a.csv.gz", False),
        ("run-?", "run-7", True),
        ("run-?", "run-17", False),
        ("run-[0-3]", "run-2", True),
        ("run-[0-3]", "run-5", False),
        ("Prefect.*", "prefect.x", False),  # case-sensitive
        ("!prefect.flow-run.*", "prefect.task-run.1", True),
        ("!prefect.flow-run.*", "prefect.flow-run.1", False),
        ("!exact", "other", True),
        ("*", "", True),
        ("a\nb*", "a\nbc", True),
    ],
)
def test_glob_match(pattern: str, value: str, expected: bool) -> None:
    assert glob_match(pattern, value) is expected
    assert ValueMatcher(pattern)(value) is expected


@pytest.mark.parametrize("pattern", ["x", "!x", "*", "!*", "x*", "!x*"])
def test_missing_label_never_matches_even_negated(pattern: str) -> None:
    assert glob_match(pattern, None) is False
    assert ValueMatcher(pattern)(None) is False
    assert resource_matches({"absent": pattern}, {"prefect.resource.id": "r"}) is False


def test_list_is_or_and_empty_list_never_matches() -> None:
    assert ValueMatcher(["a", "b*"])("bx")
    assert not ValueMatcher(["a", "b*"])("c")
    assert not ValueMatcher([])("anything")
    # OR of negations matches everything that has the label (reference 2.2)
    assert ValueMatcher(["!a", "!b"])("a")
    # ["dev-*", "!dev-x"] never applies the negation
    assert ValueMatcher(["dev-*", "!dev-x"])("dev-x")


def test_spec_labels_are_anded_and_empty_spec_matches_all() -> None:
    labels = {"prefect.resource.id": "prefect.flow-run.1", "prefect.state-type": "FAILED"}
    assert resource_matches({}, labels)
    assert resource_matches(
        {"prefect.resource.id": "prefect.flow-run.*", "prefect.state-type": ["FAILED", "CRASHED"]},
        labels,
    )
    assert not resource_matches(
        {"prefect.resource.id": "prefect.flow-run.*", "prefect.state-type": "COMPLETED"}, labels
    )
    assert ResourceMatcher({}).includes([])
    assert not ResourceMatcher({"a": "b"}).includes([])


def test_related_specs_are_anded_each_by_some_resource() -> None:
    related = flow_run_event().related
    tag = {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.prod"}
    deployment = {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": "prefect.deployment.*",
    }
    assert related_match([tag, deployment], related)
    assert related_match(tag, related)
    assert not related_match([tag, {"prefect.resource.role": "work-pool"}], related)
    # one spec needs ONE resource with all its labels
    assert not related_match(
        {"prefect.resource.role": "flow", "prefect.resource.id": "prefect.tag.*"}, related
    )
    assert related_match({}, [])
    assert related_match([{}], [])
    assert related_match([], [])


def test_negated_tag_does_not_exclude_other_tags() -> None:
    """Reference 2.3 caveat: a non-dev tag alongside dev still matches."""
    spec = {"prefect.resource.role": "tag", "prefect.resource.id": "!prefect.tag.dev"}
    assert related_match(spec, flow_run_event().related)
    only_dev = [
        r for r in flow_run_event().related if r["prefect.resource.id"] != "prefect.tag.prod"
    ]
    assert not related_match(spec, only_dev)


def test_name_matcher() -> None:
    names = NameMatcher(["prefect.flow-run.Failed", "prefect.task-run.*", "*.Crashed"])
    assert names("prefect.flow-run.Failed")
    assert names("prefect.task-run.Running")
    assert names("prefect.flow-run.Crashed")
    assert not names("prefect.flow-run.Completed")
    assert not NameMatcher([])("x")
    assert not NameMatcher([])


def test_compiled_trigger_covers_expect_after_and_resources() -> None:
    trigger = EventTrigger(
        expect={"prefect.flow-run.Failed"},
        after={"prefect.flow-run.Running"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=[{"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.prod"}],
    )
    assert trigger.covers(flow_run_event("prefect.flow-run.Failed"))
    assert trigger.covers(flow_run_event("prefect.flow-run.Running"))
    assert not trigger.covers(flow_run_event("prefect.flow-run.Completed"))
    assert trigger.expects("prefect.flow-run.Failed")
    assert not trigger.expects("prefect.flow-run.Running")
    assert trigger.starts_after("prefect.flow-run.Running")
    assert not trigger.starts_after("prefect.flow-run.Failed")
    other = Event(
        event="prefect.flow-run.Failed", resource={"prefect.resource.id": "prefect.task-run.1"}
    )
    assert not trigger.covers(other)
    # compiled once and cached on the model
    assert trigger.compiled is trigger.compiled


def test_empty_expect_counts_every_event_and_empty_after_gates_nothing() -> None:
    trigger = EventTrigger()
    assert trigger.covers(flow_run_event("anything.at.all"))
    assert trigger.expects("anything")
    assert not trigger.starts_after("anything")
    gated = EventTrigger(after={"a"})
    assert gated.covers(flow_run_event("b"))  # empty expect: every name is covered


def test_covers_parts_works_on_raw_dicts() -> None:
    compiled = EventTrigger(expect={"x"}, match={"prefect.resource.id": "r*"}).compiled
    assert compiled.covers_parts("x", {"prefect.resource.id": "r1"}, [])
    assert not compiled.covers_parts("y", {"prefect.resource.id": "r1"}, [])


def test_bucketing_key_sorted_labels_related_and_missing() -> None:
    trigger = EventTrigger(
        for_each={
            "related:deployment:prefect.resource.id",
            "prefect.resource.id",
            "related:work-pool:prefect.resource.id",
            "prefect.missing",
            "related:tag:prefect.resource.id",
        }
    )
    key = trigger.bucketing_key(flow_run_event())
    assert key == (
        "",  # prefect.missing
        "prefect.flow-run.1",  # prefect.resource.id
        "prefect.deployment.d1",
        "prefect.tag.dev",  # FIRST related resource with the role
        "",  # no work-pool
    )
    assert trigger.triggering_labels(key) == {
        "prefect.missing": "",
        "prefect.resource.id": "prefect.flow-run.1",
        "related:deployment:prefect.resource.id": "prefect.deployment.d1",
        "related:tag:prefect.resource.id": "prefect.tag.dev",
        "related:work-pool:prefect.resource.id": "",
    }
    assert EventTrigger().bucketing_key(flow_run_event()) == ()
    assert EventTrigger().triggering_labels(()) == {}


def test_label_ref_parses_like_prefect() -> None:
    assert LabelRef.parse("related:flow:prefect.resource.name") == LabelRef(
        "related:flow:prefect.resource.name", "flow", "prefect.resource.name"
    )
    # the label is after the LAST colon, the role between the first and the last
    assert LabelRef.parse("related:a:b:c").role == "a:b"
    assert LabelRef.parse("plain.label") == LabelRef("plain.label", None, "plain.label")


def test_all_event_triggers_walks_composites_with_parents() -> None:
    a, b, c = EventTrigger(expect={"a"}), EventTrigger(expect={"b"}), EventTrigger(expect={"c"})
    inner = SequenceTrigger(triggers=[b, c])
    outer = CompoundTrigger(require="all", triggers=[a, inner])
    paths = all_event_triggers(outer)
    assert [p.trigger.id for p in paths] == [a.id, b.id, c.id]
    assert [tuple(x.id for x in p.parents) for p in paths] == [
        (outer.id,),
        (outer.id, inner.id),
        (outer.id, inner.id),
    ]
    assert all_event_triggers(a) == [(a, ())]


def test_effective_within() -> None:
    assert effective_within(EventTrigger(posture="Proactive")) == timedelta(seconds=10)
    assert effective_within(EventTrigger(within=30)) == timedelta(seconds=30)
    assert effective_within(EventTrigger()) == timedelta(0)
    built = EventTrigger.model_construct(posture=Posture.Proactive, within=timedelta(0))
    assert effective_within(built) == timedelta(seconds=10)
