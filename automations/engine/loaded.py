"""The automations an engine evaluates, in the shapes its batch loop reads: the trigger index
and the planner over it, each trigger's window spec, each automation's resource JSON (for the
announcer) and each partition's global proactive windows. Kept apart from the loop so a
change of the loaded automations is one place: every change clears the planner's per-name
plans and moves ``generation``, which tells a batch matched ahead of time that it is stale."""

from __future__ import annotations

from uuid import UUID

import orjson

from automations.engine.outbox import automation_resource
from automations.engine.plan import Planner
from automations.engine.specs import WindowSpec, window_specs
from automations.keys import Keys
from automations.models import Automation
from triggers.index import TriggerIndex


class Loaded:
    """The engine's loaded automations (enabled ones only: the engine forgets the others)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self._index = TriggerIndex()
        self._specs: dict[tuple[UUID, UUID], WindowSpec] = {}
        self._automations: dict[UUID, list[WindowSpec]] = {}
        self._spec_of: dict[int, WindowSpec] = {}  # id(event trigger) -> its spec
        self.resources: dict[str, bytes] = {}  # automation id -> its events' resource JSON
        # partition -> the keys of its global proactive windows (which the first event opens)
        self.global_keys: dict[int, tuple[str, ...]] = {}
        self.planner = Planner(keys, self._index, self._spec_of.__getitem__)
        self.generation = 0  # moves on each change

    def __repr__(self) -> str:
        return f"automations={len(self._automations)}, triggers={len(self._specs)}"

    def ids(self) -> list[UUID]:
        return list(self._automations)

    def remember(self, automation: Automation) -> list[WindowSpec]:
        """Add (or replace: ``forget`` it first) one automation; returns its specs."""
        specs = window_specs(automation.id, automation.trigger, self.keys)
        self.resources[str(automation.id)] = orjson.dumps(
            automation_resource(automation.id, automation.name, automation.trigger))
        self._index.add(automation.id, automation.trigger)
        self._automations[automation.id] = specs
        self.planner.clear()
        self.generation += 1
        for spec in specs:
            self._specs[(automation.id, spec.trigger.id)] = spec
            self._spec_of[id(spec.trigger)] = spec
        self._globals_changed()
        return specs

    def forget(self, automation_id: UUID) -> list[WindowSpec]:
        """Drop one automation; returns the specs it had (none if it was not loaded)."""
        self._index.remove(automation_id)
        self.resources.pop(str(automation_id), None)
        specs = self._automations.pop(automation_id, [])
        self.planner.clear()
        self.generation += 1
        for spec in specs:
            self._specs.pop((automation_id, spec.trigger.id), None)
            self._spec_of.pop(id(spec.trigger), None)
        self._globals_changed()
        return specs

    def _globals_changed(self) -> None:
        found: dict[int, list[str]] = {}
        for spec in self._specs.values():
            if spec.global_key:
                found.setdefault(spec.partition, []).extend(spec.state_keys)
        self.global_keys = {part: tuple(keys) for part, keys in found.items()}
