"""``ResourceSieve``: of the triggers an event NAME matched, the few its resources may interest.

A user's triggers mostly pin resources by exact label values (the related deployment
``prefect.deployment.<id>``, a tag ``prefect.tag.<tag>``, one flow's id), so with thousands of
automations an event's name matches hundreds of triggers of which a handful can cover it.
Checking each costs a microsecond; the sieve looks the event's label values up instead.

Each trigger gets at most one ``Anchor``: a label of ``match`` (the primary resource) or of
one ``match_related`` spec (some related resource) whose patterns are all exact strings. A
trigger covers an event only if the event has that label with one of those values, so a
trigger is a candidate exactly when a lookup of the event's values finds it; triggers without
an anchor (globs, negations, no labels) are always candidates. Candidates still go through
``CompiledTrigger.resources_covered``: the sieve only skips triggers that cannot match, so
``covering`` equals checking every trigger, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

from automations.events import RESOURCE_ID, RESOURCE_ROLE
from triggers.matching import Labels, SpecLike, is_glob

T = TypeVar("T")


class Anchor(NamedTuple):
    """A trigger covers an event only if ``label`` has one of ``values`` on the primary
    resource (``related`` False) or on some related resource (``related`` True)."""

    related: bool
    label: str
    values: frozenset[str]


def _exact_values(patterns: str | Sequence[str]) -> frozenset[str] | None:
    """The values a label must take, or ``None`` when a glob or negation allows others."""
    values = [patterns] if isinstance(patterns, str) else list(patterns)
    if any(v.startswith("!") or is_glob(v) for v in values):
        return None
    return frozenset(values)


def _rank(anchor: Anchor) -> tuple[int, int, bool, str]:
    """Most selective first: resource ids, then other labels, roles last (a role is shared
    by every resource of its kind); fewer values; the primary resource (one lookup)."""
    label = anchor.label
    kind = 0 if label == RESOURCE_ID else 2 if label == RESOURCE_ROLE else 1
    return (kind, len(anchor.values), anchor.related, label)


def anchors(match: SpecLike, match_related: Sequence[SpecLike]) -> list[Anchor]:
    """Every exact-valued label a trigger needs, primary then related."""
    found: list[Anchor] = []
    for related, spec in ((False, match), *((True, s) for s in match_related)):
        for label, patterns in spec.items():
            values = _exact_values(patterns)
            if values is not None:
                found.append(Anchor(related, label, values))
    return found


def best_anchor(match: SpecLike, match_related: Sequence[SpecLike]) -> Anchor | None:
    """The anchor the sieve files a trigger under (``None``: it is always a candidate)."""
    found = anchors(match, match_related)
    return min(found, key=_rank) if found else None


class CompiledLike(Protocol):
    """What the sieve asks of a compiled trigger (``CompiledTrigger`` provides it)."""

    @property
    def anchor(self) -> Anchor | None: ...

    def resources_covered(self, resource: Labels, related: Sequence[Labels], /) -> bool: ...


Table = dict[str, dict[str, list[int]]]  # label -> value -> positions
FrozenTable = tuple[tuple[str, Mapping[str, tuple[int, ...]]], ...]


class ResourceSieve(Generic[T]):
    """Items (each with a compiled trigger) filed by their anchors; immutable once built."""

    __slots__ = ("_always", "_compiled", "_items", "_primary", "_related")

    def __init__(self, items: Sequence[T], compiled: Callable[[T], CompiledLike]) -> None:
        self._items = tuple(items)
        self._compiled = tuple(compiled(item) for item in self._items)
        always: list[int] = []
        primary: Table = {}
        related: Table = {}
        for position, one in enumerate(self._compiled):
            anchor = one.anchor
            if anchor is None:
                always.append(position)
                continue
            table = related if anchor.related else primary
            by_value = table.setdefault(anchor.label, {})
            for value in anchor.values:
                by_value.setdefault(value, []).append(position)
        self._always = tuple(always)
        self._primary = _frozen(primary)
        self._related = _frozen(related)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (f"ResourceSieve(items={len(self._items)}, always={len(self._always)}, "
                f"primary={[label for label, _ in self._primary]}, "
                f"related={[label for label, _ in self._related]})")

    def candidates(self, resource: Labels, related: Sequence[Labels]) -> tuple[int, ...]:
        """Positions (ascending) of the items whose anchor the event satisfies, or that have
        none: a superset of those covering it."""
        found: list[tuple[int, ...]] = [self._always] if self._always else []
        for label, by_value in self._primary:
            value = resource.get(label)
            if value is not None:
                hit = by_value.get(value)
                if hit is not None:
                    found.append(hit)
        for label, by_value in self._related:
            for one in related:
                value = one.get(label)
                if value is not None:
                    hit = by_value.get(value)
                    if hit is not None:
                        found.append(hit)
        if len(found) == 1:
            return found[0]
        if not found:
            return ()
        return tuple(sorted({p for hit in found for p in hit}))

    def covering(self, resource: Labels, related: Sequence[Labels]) -> list[T]:
        """The items whose trigger covers these resources, in item order (exactly what
        checking every item's ``resources_covered`` gives)."""
        items, compiled = self._items, self._compiled
        return [items[p] for p in self.candidates(resource, related)
                if compiled[p].resources_covered(resource, related)]


def _frozen(table: Table) -> FrozenTable:
    return tuple((label, {v: tuple(p) for v, p in by_value.items()})
                 for label, by_value in sorted(table.items()))
