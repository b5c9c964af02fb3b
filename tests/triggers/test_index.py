"""TriggerIndex: candidates by event name, cost bounded by distinct patterns, not automations."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

from automations.events import Event
from triggers.index import TriggerIndex
from triggers.matching import NameMatcher
from triggers.models import CompoundTrigger, EventTrigger, SequenceTrigger


def ids(index: TriggerIndex, name: str) -> set[UUID]:
    return {c.trigger.id for c in index.candidates(name)}


def test_exact_prefix_glob_and_match_all() -> None:
    index = TriggerIndex()
    exact = EventTrigger(expect={"prefect.flow-run.Failed"})
    prefix = EventTrigger(expect={"prefect.flow-run.*"})
    suffix = EventTrigger(expect={"*.Failed"})
    single = EventTrigger(expect={"prefect.flow-run.Fail?d"})
    everything = EventTrigger()
    after = EventTrigger(after={"prefect.flow-run.Running"}, expect={"prefect.flow-run.Completed"})
    for trigger in (exact, prefix, suffix, single, everything, after):
        index.add(uuid4(), trigger)
    assert ids(index, "prefect.flow-run.Failed") == {
        exact.id,
        prefix.id,
        suffix.id,
        single.id,
        everything.id,
    }
    assert ids(index, "prefect.flow-run.Running") == {prefix.id, everything.id, after.id}
    assert ids(index, "prefect.task-run.Failed") == {suffix.id, everything.id}
    assert ids(index, "other") == {everything.id}
    assert ids(index, "prefect.flow") == {everything.id}  # shorter than the prefix


def test_candidates_unpack_as_pairs_and_are_deduplicated() -> None:
    index = TriggerIndex()
    automation = uuid4()
    trigger = EventTrigger(after={"a.*"}, expect={"a.b", "a.*"})
    index.add(automation, trigger)
    found = index.candidates("a.b")
    assert len(found) == 1
    automation_id, event_trigger = found[0]
    assert (automation_id, event_trigger) == (automation, trigger)


def test_composites_index_every_child_with_parents() -> None:
    index = TriggerIndex()
    a, b = EventTrigger(expect={"a"}), EventTrigger(expect={"b"})
    seq = SequenceTrigger(triggers=[a, b])
    top = CompoundTrigger(require="any", triggers=[seq, EventTrigger(expect={"c"})])
    automation = uuid4()
    index.add(automation, top)
    assert len(index) == 3
    assert ids(index, "b") == {b.id}
    assert [p.id for p in index.parents(automation, b.id)] == [top.id, seq.id]


def test_remove_and_replace() -> None:
    index = TriggerIndex()
    automation = uuid4()
    index.add(automation, EventTrigger(expect={"x.*", "y", "*z"}))
    replacement = EventTrigger(expect={"w"})
    index.add(automation, replacement)  # replaces the automation's triggers
    assert index.candidates("x.1") == [] and index.candidates("y") == []
    assert ids(index, "w") == {replacement.id}
    index.remove(automation)
    assert len(index) == 0
    assert index.lookup_cost("x.1") == 1  # emptied slots are pruned
    assert "exact=0" in repr(index) and "globs=0" in repr(index)
    index.remove(uuid4())  # unknown: no error


def test_shared_patterns_survive_partial_removal() -> None:
    index = TriggerIndex()
    first, second = uuid4(), uuid4()
    t1, t2 = EventTrigger(expect={"p.*", "*.q"}), EventTrigger(expect={"p.*", "*.q"})
    index.add(first, t1)
    index.add(second, t2)
    index.remove(first)
    assert ids(index, "p.1") == {t2.id}
    assert ids(index, "x.q") == {t2.id}


def test_ten_thousand_exact_names_cost_one_probe() -> None:
    index = TriggerIndex()
    for i in range(10_000):
        index.add(uuid4(), EventTrigger(expect={f"service.{i}.done"}))
    for i in range(100):  # plus a hundred automations sharing two prefixes
        index.add(uuid4(), EventTrigger(expect={f"group.{i % 2}.*"}))
    assert index.lookup_cost("service.42.done") == 2  # exact dict + one prefix length
    found = index.candidates("service.42.done")
    assert len(found) == 1
    assert found[0].trigger.expect == {"service.42.done"}
    assert len(index.candidates("group.1.x")) == 50


def test_index_agrees_with_brute_force() -> None:
    rng = random.Random(7)
    parts = ["a", "b", "ab", "*", "?", "[ab]"]
    names = [
        ".".join(rng.choice("ab") * rng.randint(1, 2) for _ in range(rng.randint(1, 3)))
        for _ in range(60)
    ]
    index = TriggerIndex()
    triggers: list[EventTrigger] = []
    for _ in range(300):
        patterns = {
            ".".join(rng.choice(parts) for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(0, 2))
        }
        after = {rng.choice(names)} if rng.random() < 0.3 else set()
        trigger = EventTrigger(expect=patterns, after=after)
        triggers.append(trigger)
        index.add(uuid4(), trigger)
    for name in names:
        expected = {
            t.id
            for t in triggers
            if not t.expect or NameMatcher(t.expect)(name) or NameMatcher(t.after)(name)
        }
        assert ids(index, name) == expected, name


def test_interested_filters_resources() -> None:
    index = TriggerIndex()
    wanted = EventTrigger(expect={"e"}, match={"prefect.resource.id": "r.1"})
    other = EventTrigger(expect={"e"}, match={"prefect.resource.id": "r.2"})
    index.add(uuid4(), wanted)
    index.add(uuid4(), other)
    event = Event(event="e", resource={"prefect.resource.id": "r.1"})
    assert [c.trigger for c in index.interested(event)] == [wanted]
