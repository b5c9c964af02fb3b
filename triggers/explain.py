"""Why one event trigger does or does not cover one event, criterion by criterion.

For ``automations explain``: the verdict is the compiled trigger's own (``CompiledTrigger``:
``expects``, ``starts_after``, ``resources_covered``), so an explanation can never disagree
with the engine; the per-pattern and per-label detail uses the same matchers as the hot path
(``NameMatcher``, ``ValueMatcher``: ``compile_patterns``), one criterion at a time. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from automations.events import Event
from triggers.matching import Labels, NameMatcher, SpecLike, ValueMatcher
from triggers.models import EventTrigger

NameKind = Literal["expect", "after"]


@dataclass(frozen=True, slots=True)
class NameCheck:
    """The event name against ``expect`` or ``after``: which patterns matched it.
    An empty ``expect`` counts every name (``matches_any``)."""

    kind: NameKind
    patterns: tuple[str, ...]
    matched: tuple[str, ...]
    matches_any: bool = False

    @property
    def ok(self) -> bool:
        return self.matches_any or bool(self.matched)


@dataclass(frozen=True, slots=True)
class LabelCheck:
    """One label of ``match`` or of a ``match_related`` spec against the event's value
    (``None``: the label is missing, which never matches). For a related spec, ``resource``
    is the index in ``related`` of the resource shown: the one that satisfied the spec, else
    the one that came closest (``None`` when the event has no related resource)."""

    where: str  # "match" or "match_related[i]"
    label: str
    patterns: tuple[str, ...]
    value: str | None
    matched: bool
    resource: int | None = None

    def describe(self) -> str:
        shown = "missing" if self.value is None else repr(self.value)
        verb = "matches" if self.matched else "does not match"
        return f"{self.where}.{self.label}: {shown} {verb} {list(self.patterns)}"


@dataclass(frozen=True, slots=True)
class TriggerMatch:
    """One event trigger against one event: the compiled verdict and its detail."""

    expects: bool  # the name is counted
    starts_after: bool  # the name opens a window
    resources_covered: bool
    names: tuple[NameCheck, ...]
    labels: tuple[LabelCheck, ...]

    @property
    def name_covered(self) -> bool:
        return self.expects or self.starts_after

    @property
    def covers(self) -> bool:
        """The engine evaluates this (event, trigger) pair: what ``covers`` answers."""
        return self.name_covered and self.resources_covered

    @property
    def failed_labels(self) -> tuple[LabelCheck, ...]:
        return tuple(check for check in self.labels if not check.matched)

    @property
    def near_miss(self) -> bool:
        """The name matched, a label did not."""
        return self.name_covered and not self.resources_covered

    def reason(self) -> str:
        """One line: why the trigger did or did not take the event."""
        if not self.name_covered:
            wanted = [p for check in self.names for p in check.patterns]
            return f"event name matches none of {wanted}"
        roles = [role for role, on in (("counted (expect)", self.expects),
                                       ("opens a window (after)", self.starts_after)) if on]
        role = " and ".join(roles)
        if self.resources_covered:
            return role
        failed = self.failed_labels
        if failed:
            return "near miss: " + "; ".join(check.describe() for check in failed)
        return "near miss: resources do not match"  # not reached: a failed label is named


def explain_parts(
    trigger: EventTrigger, name: str, resource: Labels, related: Sequence[Labels]
) -> TriggerMatch:
    """``trigger`` against an event given as its parts (name, resource labels, related)."""
    compiled = trigger.compiled
    names = (_name_check("expect", trigger.expect, name, empty_matches=True),
             _name_check("after", trigger.after, name, empty_matches=False))
    labels = [*_spec_checks("match", trigger.match, [resource], primary=True)]
    specs = trigger.match_related_specs
    for i, spec in enumerate(specs):
        where = f"match_related[{i}]" if isinstance(trigger.match_related, list) \
            else "match_related"
        labels.extend(_spec_checks(where, spec, related, primary=False))
    return TriggerMatch(
        expects=compiled.expects(name), starts_after=compiled.starts_after(name),
        resources_covered=compiled.resources_covered(resource, related),
        names=names, labels=tuple(labels),
    )


def explain_match(trigger: EventTrigger, event: Event) -> TriggerMatch:
    """``trigger`` against ``event``, criterion by criterion."""
    return explain_parts(trigger, event.event, event.resource, event.related)


def _name_check(kind: NameKind, patterns: set[str], name: str, *, empty_matches: bool
                ) -> NameCheck:
    ordered = tuple(sorted(patterns))
    if not ordered:
        return NameCheck(kind, (), (), matches_any=empty_matches)
    matched = tuple(p for p in ordered if NameMatcher([p])(name))
    return NameCheck(kind, ordered, matched)


def _patterns(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _checks_against(where: str, spec: SpecLike, labels: Labels, resource: int | None
                    ) -> list[LabelCheck]:
    checks = []
    for label in sorted(spec):
        patterns = _patterns(spec[label])
        value = labels.get(label)
        checks.append(LabelCheck(where, label, patterns, value,
                                 ValueMatcher(patterns)(value), resource))
    return checks


def _spec_checks(where: str, spec: SpecLike, candidates: Sequence[Labels], *, primary: bool
                 ) -> list[LabelCheck]:
    """The labels of one spec against the primary resource, or, for a related spec, against
    the related resource that satisfies it (else the closest: most labels matched, first)."""
    if not spec:
        return []
    if primary:
        return _checks_against(where, spec, candidates[0], None)
    best: list[LabelCheck] | None = None
    for i, candidate in enumerate(candidates):
        checks = _checks_against(where, spec, candidate, i)
        if all(c.matched for c in checks):
            return checks
        if best is None or sum(c.matched for c in checks) > sum(c.matched for c in best):
            best = checks
    return best if best is not None else _checks_against(where, spec, {}, None)
