"""Trigger models: Prefect 3 JSON loads unchanged, bad values get precise messages."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from automations.events import format_validation_error
from triggers import CompoundTrigger, EventTrigger, Posture, SequenceTrigger, Trigger, never_fires

FIXTURES = Path(__file__).parent.parent / "fixtures" / "triggers"
TRIGGER: TypeAdapter[Trigger] = TypeAdapter(Trigger)


def load(data: Any) -> EventTrigger | CompoundTrigger | SequenceTrigger:
    return TRIGGER.validate_python(data)


def error(data: Any) -> str:
    with pytest.raises(ValidationError) as info:
        load(data)
    return format_validation_error(info.value)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_prefect_fixtures_load_and_round_trip(path: Path) -> None:
    raw = json.loads(path.read_text())
    trigger = load(raw)
    dumped = trigger.model_dump(mode="json")
    assert load(dumped) == trigger
    # the ids Prefect sent are kept
    if "id" in raw:
        assert str(trigger.id) == raw["id"]
    # what we print back is Prefect's shape: float seconds, lists
    assert json.loads(json.dumps(dumped)) == dumped


def test_reference_44_fields() -> None:
    trigger = load(json.loads((FIXTURES / "reference-4.4-event.json").read_text()))
    assert isinstance(trigger, EventTrigger)
    assert trigger.within == timedelta(minutes=10)
    assert trigger.threshold == 3
    assert trigger.for_each == {"related:deployment:prefect.resource.id"}
    assert len(trigger.match_related_specs) == 2
    assert trigger.model_dump(mode="json")["within"] == 600.0


def test_nested_server_ids_and_iso_within() -> None:
    trigger = load(json.loads((FIXTURES / "server-ids-nested.json").read_text()))
    assert isinstance(trigger, CompoundTrigger)
    assert trigger.needed == 2
    seq = trigger.triggers[1]
    assert isinstance(seq, SequenceTrigger)
    assert str(seq.triggers[0].id) == "5b0c7c3e-1d1e-4f7a-9a55-3b1f3c3e0a04"
    proactive = trigger.triggers[2]
    assert isinstance(proactive, EventTrigger)
    assert proactive.within == timedelta(minutes=15)


def test_missing_type_means_event_and_defaults() -> None:
    trigger = load({"expect": ["x"]})
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture is Posture.Reactive
    assert trigger.threshold == 1
    assert trigger.within == timedelta(0)
    assert trigger.immediate


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0), (600, 600), (12.5, 12.5), ("600", 600), ("PT10M", 600), ("P1DT1H", 90000)],
)
def test_within_seconds_or_iso(value: Any, seconds: float) -> None:
    trigger = load({"within": value})
    assert isinstance(trigger, EventTrigger)
    assert trigger.within.total_seconds() == seconds
    composite = load({"type": "sequence", "within": value, "triggers": [{}]})
    assert isinstance(composite, SequenceTrigger)
    assert composite.within == timedelta(seconds=seconds)


def test_proactive_within_zero_or_missing_means_ten_seconds() -> None:
    for data in ({"posture": "Proactive"}, {"posture": "Proactive", "within": 0}):
        trigger = load(data)
        assert isinstance(trigger, EventTrigger)
        assert trigger.within == timedelta(seconds=10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"posture": "Proactive", "within": 5},
            "event.within: a Proactive trigger needs within >= 10 seconds "
            "(or 0, meaning 10); got 5",
        ),
        ({"posture": "Proactive", "within": "PT9S"}, "needs within >= 10 seconds"),
        ({"within": None}, "event.within: within may not be null; use 0 for immediate"),
        ({"within": -1}, "event.within: Input should be greater than or equal to 0 seconds"),
        ({"within": "soon"}, "ISO-8601 duration such as 'PT10M'; got 'soon'"),
        ({"threshold": 0}, "event.threshold: Input should be greater than or equal to 1"),
        ({"posture": "Metric"}, "posture 'Metric' is Prefect Cloud only"),
        ({"posture": "reactive"}, "event.posture: Input should be 'Reactive' or 'Proactive'"),
        ({"within_seconds": 60}, "event.within_seconds: Extra inputs are not permitted"),
        ({"type": "metric"}, "type must be 'event', 'compound' or 'sequence'"),
        (
            {"type": "compound", "require": 3, "triggers": [{}, {}]},
            "compound.require: require must be 'any', 'all' or between 1 and 2 "
            "(the number of triggers); got 3",
        ),
        ({"type": "compound", "require": 0, "triggers": [{}]}, "between 1 and 1"),
        ({"type": "compound", "require": "most", "triggers": [{}]}, "got 'most'"),
        ({"type": "compound", "require": True, "triggers": [{}]}, "got True"),
        ({"type": "compound", "triggers": [{}]}, "compound.require: Field required"),
        ({"type": "sequence", "triggers": []}, "sequence.triggers: List should have at least 1"),
        ({"type": "sequence", "within": -1, "triggers": [{}]}, "sequence.within: Input should be"),
        (
            {"type": "compound", "require": "any", "triggers": [{"within": None}]},
            "compound.triggers[0].event.within: within may not be null",
        ),
        (
            {
                "type": "sequence",
                "triggers": [
                    {"id": "5b0c7c3e-1d1e-4f7a-9a55-3b1f3c3e0a02"},
                    {
                        "type": "compound",
                        "require": "any",
                        "triggers": [{"id": "5b0c7c3e-1d1e-4f7a-9a55-3b1f3c3e0a02"}],
                    },
                ],
            },
            "trigger id 5b0c7c3e-1d1e-4f7a-9a55-3b1f3c3e0a02 is used twice",
        ),
    ],
)
def test_precise_errors(data: dict[str, Any], message: str) -> None:
    assert message in error(data)


def test_serialisation_is_prefect_shape() -> None:
    trigger = load({"expect": ["b", "a"], "for_each": ["z", "y"], "within": "PT1M"})
    dumped = trigger.model_dump(mode="json")
    assert dumped["expect"] == ["a", "b"]
    assert dumped["for_each"] == ["y", "z"]
    assert dumped["within"] == 60.0
    assert dumped["type"] == "event"
    compound = load({"type": "compound", "require": "all", "triggers": [{}]}).model_dump(
        mode="json"
    )
    assert compound["within"] is None


def test_meets_threshold() -> None:
    reactive = EventTrigger(threshold=3)
    assert not reactive.meets_threshold(2)
    assert reactive.meets_threshold(3)
    proactive = EventTrigger(posture=Posture.Proactive, threshold=3)
    assert proactive.meets_threshold(2)
    assert not proactive.meets_threshold(3)


def test_never_fires() -> None:
    dead = {"posture": "Proactive", "for_each": ["prefect.resource.id"], "expect": ["x"]}
    warning = never_fires(load(dead))
    assert warning is not None and "can never fire" in warning
    assert never_fires(load({**dead, "after": ["y"]})) is None
    assert never_fires(load({**dead, "threshold": 2})) is None
    assert never_fires(load({"posture": "Proactive", "expect": ["x"]})) is None
    assert never_fires(load({"expect": ["x"]})) is None
    # a composite is dead only if its dead children keep it from reaching `needed`
    assert never_fires(load({"type": "compound", "require": "any", "triggers": [dead, {}]})) is None
    blocked = never_fires(load({"type": "compound", "require": "all", "triggers": [{}, dead]}))
    assert blocked is not None and blocked.startswith("triggers[1]: ")
    assert never_fires(load({"type": "sequence", "triggers": [dead]})) is not None
    gated = {"after": ["a"], "expect": ["b"], "threshold": 2}
    assert "set 'within'" in (never_fires(load(gated)) or "")
    assert never_fires(load({**gated, "within": 60})) is None
    empty = never_fires(load({"match_related": [{}, {"prefect.resource.role": []}]}))
    assert empty == "match_related[1].prefect.resource.role is an empty list, which matches nothing"


def test_compiled_matcher_follows_model_copy() -> None:
    trigger = EventTrigger(expect={"x"})
    assert trigger.expects("x")
    changed = trigger.model_copy(update={"expect": {"y"}})
    assert changed.expects("y") and not changed.expects("x")
    assert trigger.expects("x") and not trigger.expects("y")


def test_compiled_cache_does_not_affect_equality() -> None:
    trigger = EventTrigger(expect={"x"})
    twin = EventTrigger.model_validate(trigger.model_dump())
    assert trigger.expects("x")  # compiles the first only
    assert trigger == twin
    assert CompoundTrigger(require="any", triggers=[trigger]) != trigger
    assert trigger != EventTrigger(expect={"y"}, id=trigger.id)
