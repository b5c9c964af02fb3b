"""``TriggerIndex``: from an event name to the event triggers that may care about it.

The cost of a lookup grows with the number of distinct patterns that could match the name,
not with the number of automations (Prefect scanned every trigger: issue #21976):

- exact names: one dict lookup;
- ``prefix*`` patterns: one dict per distinct prefix length, probed with ``name[:length]``
  (so the cost is the number of distinct prefix lengths, a few dozen at most);
- other globs (``*.Failed``, ``?``, classes): a list of distinct compiled patterns;
- triggers with an empty ``expect`` count every event: the match-all set.

Both ``expect`` and ``after`` patterns are indexed (an ``after`` event opens windows). The
candidates still need ``covers()`` (resources); ``interested()`` does both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple
from uuid import UUID

from automations.events import Event
from triggers.matching import StringTest, compile_glob, is_glob, is_prefix_glob
from triggers.models import CompositeTrigger, EventTrigger, Trigger, all_event_triggers

EntryKey = tuple[UUID, UUID]


class Candidate(NamedTuple):
    """An event trigger of an automation (unpacks as ``automation_id, trigger``)."""

    automation_id: UUID
    trigger: EventTrigger


class _Registered(NamedTuple):
    candidate: Candidate
    parents: tuple[CompositeTrigger, ...]
    patterns: frozenset[str]  # empty = match-all


class TriggerIndex:
    """Owned by one engine (or evaluator); not shared between processes."""

    def __init__(self) -> None:
        self._entries: dict[EntryKey, _Registered] = {}
        self._by_automation: dict[UUID, list[EntryKey]] = {}
        self._exact: dict[str, dict[EntryKey, Candidate]] = {}
        self._prefix: dict[int, dict[str, dict[EntryKey, Candidate]]] = {}
        self._globs: dict[str, tuple[StringTest, dict[EntryKey, Candidate]]] = {}
        self._all: dict[EntryKey, Candidate] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"TriggerIndex(triggers={len(self._entries)}, exact={len(self._exact)}, "
            f"prefix_lengths={len(self._prefix)}, globs={len(self._globs)}, "
            f"match_all={len(self._all)})"
        )

    # -- maintenance -----------------------------------------------------------------
    def add(self, automation_id: UUID, trigger: Trigger) -> None:
        """Index every event trigger inside ``trigger`` (replacing the automation's old ones)."""
        self.remove(automation_id)
        keys: list[EntryKey] = []
        for path in all_event_triggers(trigger):
            event_trigger = path.trigger
            key = (automation_id, event_trigger.id)
            patterns = (
                frozenset(event_trigger.expect | event_trigger.after)
                if event_trigger.expect
                else frozenset()
            )
            candidate = Candidate(automation_id, event_trigger)
            self._entries[key] = _Registered(candidate, path.parents, patterns)
            keys.append(key)
            for slot in self._slots(patterns, create=True):
                slot[key] = candidate
        self._by_automation[automation_id] = keys

    def remove(self, automation_id: UUID) -> None:
        for key in self._by_automation.pop(automation_id, ()):
            registered = self._entries.pop(key)
            for slot in self._slots(registered.patterns, create=False):
                slot.pop(key, None)
            self._prune(registered.patterns)

    def parents(self, automation_id: UUID, trigger_id: UUID) -> tuple[CompositeTrigger, ...]:
        """The composite ancestors (outermost first) of an indexed event trigger."""
        return self._entries[(automation_id, trigger_id)].parents

    # -- lookups ---------------------------------------------------------------------
    def candidates(self, event_name: str) -> list[Candidate]:
        """Triggers whose ``expect`` or ``after`` patterns match the name (or expect all)."""
        found: dict[EntryKey, Candidate] = dict(self._all)
        exact = self._exact.get(event_name)
        if exact:
            found.update(exact)
        size = len(event_name)
        for length, by_prefix in self._prefix.items():
            if length <= size:
                hit = by_prefix.get(event_name[:length])
                if hit:
                    found.update(hit)
        for test, slot in self._globs.values():
            if test(event_name):
                found.update(slot)
        return list(found.values())

    def interested(self, event: Event) -> list[Candidate]:
        """Candidates that also cover the event's resources."""
        return [c for c in self.candidates(event.event) if c.trigger.compiled.covers(event)]

    def lookup_cost(self, event_name: str) -> int:
        """How many pattern probes ``candidates`` makes for a name (for tests and benchmarks)."""
        size = len(event_name)
        return 1 + sum(1 for length in self._prefix if length <= size) + len(self._globs)

    # -- internals -------------------------------------------------------------------
    def _slots(self, patterns: Iterable[str], *, create: bool) -> list[dict[EntryKey, Candidate]]:
        patterns = list(patterns)
        if not patterns:
            return [self._all]
        slots: list[dict[EntryKey, Candidate]] = []
        for pattern in patterns:
            slot = self._slot(pattern, create)
            if slot is not None:
                slots.append(slot)
        return slots

    def _slot(self, pattern: str, create: bool) -> dict[EntryKey, Candidate] | None:
        if not is_glob(pattern):
            return self._exact.setdefault(pattern, {}) if create else self._exact.get(pattern)
        if is_prefix_glob(pattern):
            prefix = pattern[:-1]
            if create:
                return self._prefix.setdefault(len(prefix), {}).setdefault(prefix, {})
            return self._prefix.get(len(prefix), {}).get(prefix)
        if create and pattern not in self._globs:
            self._globs[pattern] = (compile_glob(pattern), {})
        glob = self._globs.get(pattern)
        return None if glob is None else glob[1]

    def _prune(self, patterns: Iterable[str]) -> None:
        """Drop emptied slots so lookups never probe patterns nobody uses."""
        for pattern in patterns:
            if not is_glob(pattern):
                if not self._exact.get(pattern, True):
                    del self._exact[pattern]
            elif is_prefix_glob(pattern):
                prefix = pattern[:-1]
                by_prefix = self._prefix.get(len(prefix))
                if by_prefix is not None and not by_prefix.get(prefix, True):
                    del by_prefix[prefix]
                    if not by_prefix:
                        del self._prefix[len(prefix)]
            elif pattern in self._globs and not self._globs[pattern][1]:
                del self._globs[pattern]
