"""The engine's hot-path lookups, precomputed: per event name, the triggers it may interest,
and per (trigger, ``for_each`` key), the arguments of its bucket operation.

``TriggerIndex.candidates`` and the name half of ``covers`` depend on the event name only, so
they run once per distinct name (``steps``) instead of once per event. What is left per event
is the resource check, of only the steps a ``ResourceSieve`` finds by the event's label values
(``match``), and, for triggers with ``for_each``, building the bucket key (``OpTemplate``,
see ``window``). Everything here is derived from the loaded
automations: the owner calls ``clear()`` whenever they change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from automations.engine.specs import WindowSpec
from automations.engine.window import OpTemplate
from automations.events import Event
from automations.keys import Keys
from triggers.compiled import CompiledTrigger
from triggers.index import TriggerIndex
from triggers.sieve import ResourceSieve

NAME_CACHE = 10_000  # distinct event names remembered
KEY_CACHE = 100_000  # distinct (for_each labels, key) encodings remembered

SpecOf = Callable[[int], WindowSpec]  # id(event trigger) -> its spec


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """One trigger an event name may interest, with what does not depend on the event."""

    spec: WindowSpec
    compiled: CompiledTrigger
    template: OpTemplate | None  # the whole op template when the trigger has no for_each
    prefixes: tuple[str, str, str]  # bucket, held and unresolved keys without the key part
    after: bool  # the name opens a window
    expect: bool  # the name is counted

    def keyed(self, key_str: str, labels: str) -> OpTemplate:
        bucket, held, unresolved = self.prefixes
        return (  # in ``OpTemplate`` order
            self.spec.ref, bucket + key_str, labels, held + key_str if held else "",
            self.after, self.expect, unresolved + key_str if unresolved else "",
        )


def _compiled(step: Step) -> CompiledTrigger:
    return step.compiled


@dataclass(frozen=True, slots=True)
class NamePlan:
    """The steps of one event name, in index order; ``ordered`` when a composite child is
    among them (the engine then sorts an event's ops by automation and trigger walk);
    ``sieve`` finds the steps an event's resources may interest without checking them all."""

    steps: tuple[Step, ...]
    ordered: bool
    sieve: ResourceSieve[Step]

    @classmethod
    def of(cls, steps: tuple[Step, ...]) -> NamePlan:
        return cls(steps, not all(s.spec.top_level for s in steps),
                   ResourceSieve(steps, _compiled))


EMPTY = NamePlan.of(())


class Planner:
    """Per-name plans and key encodings of one engine (not shared, not thread-safe)."""

    def __init__(self, keys: Keys, index: TriggerIndex, spec_of: SpecOf) -> None:
        self.keys = keys
        self.index = index
        self.spec_of = spec_of
        self._plans: dict[str, NamePlan] = {}
        self._encoded: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"Planner(names={len(self._plans)}, keys={len(self._encoded)})"

    def clear(self) -> None:
        """Forget every plan (the loaded automations changed)."""
        self._plans.clear()

    def candidates(self, name: str) -> tuple[Step, ...]:
        """The triggers an event called ``name`` may interest (empty: none)."""
        return self.plan(name).steps

    def match(self, event: Event) -> tuple[NamePlan, list[Step]]:
        """The event's name plan and, of its steps, those whose resources the event covers
        (in index order)."""
        plan = self.plan(event.event)
        if not plan.steps:
            return plan, []
        return plan, plan.sieve.covering(event.resource, event.related)

    def plan(self, name: str) -> NamePlan:
        plan = self._plans.get(name)
        if plan is None:
            if len(self._plans) >= NAME_CACHE:
                self._plans.clear()
            plan = self._plans[name] = self._build(name)
        return plan

    def _build(self, name: str) -> NamePlan:
        steps: list[Step] = []
        for candidate in self.index.candidates(name):
            compiled = candidate.trigger.compiled
            if compiled.name_covered(name):
                steps.append(self._step(self.spec_of(id(candidate.trigger)), compiled, name))
        return NamePlan.of(tuple(steps)) if steps else EMPTY

    def _step(self, spec: WindowSpec, compiled: CompiledTrigger, name: str) -> Step:
        keys = self.keys.partition(spec.partition)
        aid, tid = spec.automation_id, spec.trigger_id
        after, expect = compiled.starts_after(name), compiled.expects(name)
        prefixes = (
            keys.bucket(aid, tid, ""),
            keys.held_expect(aid, tid, "") if spec.has_after else "",
            keys.unresolved(aid, tid, "") if spec.proactive and spec.top_level else "",
        )
        step = Step(spec, compiled, None, prefixes, after, expect)
        if compiled.for_each:
            return step
        return Step(spec, compiled, step.keyed("", "{}"), prefixes, after, expect)

    def encode(self, compiled: CompiledTrigger, key: tuple[str, ...]) -> tuple[str, str]:
        """The bucket key suffix and the triggering labels JSON of a ``for_each`` key."""
        memo = (compiled.labels, key)
        found = self._encoded.get(memo)
        if found is None:
            if len(self._encoded) >= KEY_CACHE:
                self._encoded.clear()
            found = self._encoded[memo] = (
                orjson.dumps(key).decode(),
                orjson.dumps(compiled.triggering_labels(key)).decode(),
            )
        return found
