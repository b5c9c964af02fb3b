"""``triggers.explain``: the per-criterion detail of one trigger against one event, whose
verdict is always the compiled trigger's."""

from __future__ import annotations

from typing import Any

import pytest

from automations.events import Event
from triggers.explain import explain_match, explain_parts
from triggers.models import EventTrigger


def trigger(**fields: Any) -> EventTrigger:
    return EventTrigger.model_validate(fields)


def event(name: str = "prefect.flow-run.Failed", resource: dict[str, str] | None = None,
          related: list[dict[str, str]] | None = None) -> Event:
    return Event(event=name, resource={"prefect.resource.id": "prefect.flow-run.1",
                                       **(resource or {})}, related=related or [])


def test_expect_pattern_that_matched_is_named() -> None:
    t = trigger(expect=["prefect.flow-run.Failed", "prefect.flow-run.Crash*", "other"])
    m = explain_match(t, event("prefect.flow-run.Crashed"))
    expect = m.names[0]
    assert expect.kind == "expect" and expect.matched == ("prefect.flow-run.Crash*",)
    assert m.expects and not m.starts_after and m.covers
    assert m.reason() == "counted (expect)"


def test_name_matching_nothing() -> None:
    t = trigger(expect=["a.*"], after=["b"])
    m = explain_match(t, event("c"))
    assert not m.name_covered and not m.covers and not m.near_miss
    assert m.reason() == "event name matches none of ['a.*', 'b']"


def test_empty_expect_counts_every_name_and_after_opens() -> None:
    t = trigger(after=["start"], expect=[])
    m = explain_match(t, event("start"))
    assert m.names[0].matches_any and m.names[0].ok
    assert m.starts_after and m.expects
    assert m.reason() == "counted (expect) and opens a window (after)"


def test_failing_label_is_named_with_its_value() -> None:
    t = trigger(expect=["prefect.flow-run.Failed"],
                match={"prefect.resource.id": "prefect.flow-run.*", "env": ["prod", "stage"]})
    m = explain_match(t, event(resource={"env": "dev"}))
    assert m.near_miss and not m.covers
    failed = m.failed_labels
    assert [(c.where, c.label, c.value, c.patterns) for c in failed] == \
        [("match", "env", "dev", ("prod", "stage"))]
    assert m.reason() == "near miss: match.env: 'dev' does not match ['prod', 'stage']"


def test_missing_label_never_matches_even_negated() -> None:
    t = trigger(match={"team": "!ops"})
    m = explain_match(t, event())
    assert m.failed_labels[0].value is None
    assert "match.team: missing does not match ['!ops']" in m.reason()


def test_related_spec_reports_the_matching_resource() -> None:
    related = [{"prefect.resource.id": "prefect.tag.a", "prefect.resource.role": "tag"},
               {"prefect.resource.id": "prefect.flow.1", "prefect.resource.role": "flow",
                "prefect.resource.name": "etl"}]
    t = trigger(match_related={"prefect.resource.role": "flow", "prefect.resource.name": "etl"})
    m = explain_match(t, event(related=related))
    assert m.covers and {c.resource for c in m.labels} == {1}
    assert all(c.where == "match_related" for c in m.labels)


def test_related_near_miss_shows_the_closest_resource() -> None:
    related = [{"prefect.resource.id": "prefect.tag.a", "prefect.resource.role": "tag"},
               {"prefect.resource.id": "prefect.flow.1", "prefect.resource.role": "flow",
                "prefect.resource.name": "load"}]
    t = trigger(match_related=[{"prefect.resource.role": "flow",
                                "prefect.resource.name": "etl"}])
    m = explain_match(t, event(related=related))
    assert m.near_miss
    (failed,) = m.failed_labels
    assert (failed.where, failed.label, failed.value, failed.resource) == \
        ("match_related[0]", "prefect.resource.name", "load", 1)


def test_related_spec_without_related_resources() -> None:
    t = trigger(match_related={"prefect.resource.role": "flow"})
    m = explain_parts(t, "x", {"prefect.resource.id": "r"}, [])
    assert not m.resources_covered
    assert [(c.value, c.resource) for c in m.failed_labels] == [(None, None)]


@pytest.mark.parametrize("labels", [
    {"env": "prod"}, {"env": "dev"}, {}, {"env": "prod", "team": "data"},
    {"env": "prod-eu", "team": "ops"},
])
def test_detail_agrees_with_the_compiled_verdict(labels: dict[str, str]) -> None:
    t = trigger(expect=["e"], match={"env": ["prod*", "!dev"], "team": "!ops"})
    e = event("e", resource=labels)
    m = explain_match(t, e)
    assert m.covers == t.covers(e)
    assert m.resources_covered == all(c.matched for c in m.labels)
