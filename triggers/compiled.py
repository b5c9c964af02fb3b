"""``CompiledTrigger``: everything the hot path asks of an ``EventTrigger``, compiled once.

Built by ``EventTrigger.compiled`` from the trigger's fields (so this module needs no
models). It works on the ``Event`` model or, for an engine that skips model validation, on
the raw parts (name, resource labels, related resources).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from automations.events import Event
from triggers.matching import LabelRef, Labels, NameMatcher, ResourceMatcher, SpecLike
from triggers.sieve import Anchor, best_anchor


class CompiledTrigger:
    """Everything the hot path asks of an ``EventTrigger``, precompiled once."""

    __slots__ = (
        "_after",
        "_expect",
        "_expect_all",
        "_match",
        "_related",
        "anchor",
        "for_each",
        "labels",
        "trigger",
    )

    def __init__(
        self, trigger: object, *, match: SpecLike, match_related: Sequence[SpecLike],
        expect: Iterable[str], after: Iterable[str], for_each: Iterable[str],
    ) -> None:
        self.trigger = trigger  # the model it was compiled from (a cache check)
        self._match = ResourceMatcher(match)
        self._related = tuple(ResourceMatcher(s) for s in match_related)
        # the exact label value the resources must have, for ``ResourceSieve`` (None: any)
        self.anchor: Anchor | None = best_anchor(match, match_related)
        self._expect = NameMatcher(expect)
        self._expect_all = not self._expect
        self._after = NameMatcher(after)
        self.labels: tuple[str, ...] = tuple(sorted(for_each))
        self.for_each = tuple(LabelRef.parse(name) for name in self.labels)

    # -- event names ---------------------------------------------------------------
    def expects(self, name: str) -> bool:
        """Is an event with this name counted? (an empty ``expect`` counts every name)"""
        return self._expect_all or self._expect(name)

    def starts_after(self, name: str) -> bool:
        """Does an event with this name open a window (``after``)?"""
        return self._after(name)

    def name_covered(self, name: str) -> bool:
        return self.expects(name) or self._after(name)

    # -- resources -----------------------------------------------------------------
    def resources_covered(self, resource: Labels, related: Sequence[Labels]) -> bool:
        if not self._match(resource):
            return False
        for spec in self._related:
            if not spec.includes(related):
                break
        else:
            return True
        return False

    def covers_parts(self, name: str, resource: Labels, related: Sequence[Labels]) -> bool:
        """``covers`` on raw parts (event name, resource labels, related resources)."""
        return self.name_covered(name) and self.resources_covered(resource, related)

    def covers(self, event: Event) -> bool:
        """Is ``event`` relevant to this trigger at all (name in expect or after, resources)?"""
        return self.covers_parts(event.event, event.resource, event.related)

    # -- buckets -------------------------------------------------------------------
    def bucketing_key_parts(self, resource: Labels, related: Sequence[Labels]) -> tuple[str, ...]:
        return tuple(ref.value(resource, related) for ref in self.for_each)

    def bucketing_key(self, event: Event) -> tuple[str, ...]:
        """One value per ``for_each`` label, labels sorted by name; missing -> ``""``."""
        if not self.for_each:
            return ()
        return self.bucketing_key_parts(event.resource, event.related)

    def triggering_labels(self, key: Sequence[str]) -> dict[str, str]:
        """``{label: value}`` zipping the sorted ``for_each`` labels with ``key``."""
        return dict(zip(self.labels, key, strict=True))
