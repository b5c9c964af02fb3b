"""ResourceSieve: the triggers an event's label values may interest, exactly those a full scan
of ``resources_covered`` finds, in the same order."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.compiled import CompiledTrigger
from triggers.matching import Labels
from triggers.models import EventTrigger
from triggers.sieve import Anchor, ResourceSieve, best_anchor

RID, ROLE = "prefect.resource.id", "prefect.resource.role"
LABELS = [RID, ROLE, "env"]
VALUES = ["a", "b", "ab", "prefect.deployment.1"]
PATTERNS = [*VALUES, "a*", "*b", "?", "[ab]", "!a", "!a*", "prefect.deployment.*"]


def compiled(trigger: EventTrigger) -> CompiledTrigger:
    return trigger.compiled


def full_scan(triggers: list[EventTrigger], resource: Labels,
              related: list[Labels]) -> list[EventTrigger]:
    return [t for t in triggers if t.compiled.resources_covered(resource, related)]


def test_best_anchor_prefers_ids_then_other_labels_then_roles() -> None:
    deployment = {ROLE: "deployment", RID: "prefect.deployment.1"}
    assert best_anchor({RID: "prefect.flow-run.*"}, [deployment]) == Anchor(
        True, RID, frozenset({"prefect.deployment.1"}))
    assert best_anchor({"env": ["a", "b"]}, [{ROLE: "tag"}]) == Anchor(
        False, "env", frozenset({"a", "b"}))
    assert best_anchor({}, [{ROLE: "tag", "env": "!prod"}]) == Anchor(
        True, ROLE, frozenset({"tag"}))
    assert best_anchor({RID: ["x", "y*"]}, [{"env": "!a"}]) is None  # globs and negations
    assert best_anchor({}, []) is None


def test_only_the_anchored_triggers_are_checked() -> None:
    triggers = [
        EventTrigger(match={RID: "prefect.flow-run.*"},
                     match_related={ROLE: "deployment", RID: f"prefect.deployment.{i}"})
        for i in range(100)
    ] + [EventTrigger(match={RID: "prefect.flow-run.*"})]
    sieve = ResourceSieve(triggers, compiled)
    resource = {RID: "prefect.flow-run.9"}
    related: list[Labels] = [{ROLE: "deployment", RID: "prefect.deployment.7"},
                             {ROLE: "tag", RID: "prefect.tag.prod"}]
    assert sieve.candidates(resource, related) == (7, 100)
    assert sieve.covering(resource, related) == [triggers[7], triggers[100]]
    assert sieve.covering({RID: "other"}, related) == []


def test_repeated_values_and_several_hits_stay_ordered_and_unique() -> None:
    triggers = [EventTrigger(match_related={RID: ["x", "y"]}), EventTrigger(match={"env": "x"}),
                EventTrigger(match_related={RID: "y"})]
    sieve = ResourceSieve(triggers, compiled)
    related: list[Labels] = [{RID: "x"}, {RID: "y"}, {RID: "y"}]
    assert sieve.candidates({"env": "x"}, related) == (0, 1, 2)
    assert sieve.covering({"env": "x"}, related) == triggers


def test_an_empty_pattern_list_never_matches() -> None:
    triggers = [EventTrigger(match={"env": []}), EventTrigger()]
    sieve = ResourceSieve(triggers, compiled)
    assert sieve.covering({"env": "a"}, []) == [triggers[1]]


patterns = st.one_of(st.sampled_from(PATTERNS),
                     st.lists(st.sampled_from(PATTERNS), max_size=3))
specs = st.dictionaries(st.sampled_from(LABELS), patterns, max_size=2)
resources = st.dictionaries(st.sampled_from(LABELS), st.sampled_from(VALUES), max_size=3)


@st.composite
def event_triggers(draw: st.DrawFn) -> EventTrigger:
    related: Any = draw(st.one_of(specs, st.lists(specs, max_size=2)))
    return EventTrigger(match=draw(specs), match_related=related)


@settings(max_examples=400, deadline=None)
@given(triggers=st.lists(event_triggers(), max_size=12),
       events=st.lists(st.tuples(resources, st.lists(resources, max_size=3)), min_size=1,
                       max_size=6))
def test_sieve_equals_the_full_scan(
    triggers: list[EventTrigger], events: list[tuple[Labels, list[Labels]]]
) -> None:
    sieve = ResourceSieve(triggers, compiled)
    for resource, related in events:
        candidates = sieve.candidates(resource, related)
        assert list(candidates) == sorted(set(candidates))
        assert sieve.covering(resource, related) == full_scan(triggers, resource, related)
