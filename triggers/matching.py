"""Pure matching (reference section 2), compiled once per trigger for the hot path.

Semantics, shared by this module, ``triggers.reference`` and the Redis engine:

- A label pattern is a case-sensitive, full-string shell glob (``fnmatchcase``): ``*`` any
  run of characters (including none), ``?`` one character, ``[...]`` a class. A pattern
  without glob characters is compared as a plain string; ``prefix*`` as ``startswith``.
- A leading ``!`` negates the rest of the pattern. A missing label never matches, for
  positive and negated patterns alike.
- ``{label: [p1, p2]}``: the patterns of one label are OR-ed; an empty list never matches.
  The labels of one spec are AND-ed; an empty spec matches every resource.
- ``match`` applies to the primary resource. Each spec of ``match_related`` must be satisfied
  by some related resource (possibly a different one per spec); an empty spec is satisfied
  even with no related resources.
- Event names (``expect``, ``after``) use the same glob; an empty ``expect`` counts every
  event name, an empty ``after`` gates nothing. (Prefect's regex pre-filter makes ``*`` need
  one character in event names; we use the plain glob everywhere, so ``prefect.flow-run.*``
  also matches the literal ``prefect.flow-run.``, which no real event is named.)
- ``for_each`` labels are sorted by name; ``related:<role>:<label>`` reads ``<label>`` of the
  FIRST related resource with that role (Prefect parses the label after the LAST ``:``);
  a missing label or role gives ``""``.

``triggers.compiled.CompiledTrigger`` puts these together for one ``EventTrigger``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import translate
from typing import NamedTuple

from automations.events import RESOURCE_ROLE

Labels = Mapping[str, str]
SpecLike = Mapping[str, str | Sequence[str]]
StringTest = Callable[[str], bool]

GLOB_CHARS = frozenset("*?[")
RELATED_PREFIX = "related:"


def is_glob(pattern: str) -> bool:
    """True when ``pattern`` holds a glob character (else it is an exact string)."""
    return not GLOB_CHARS.isdisjoint(pattern)


def is_prefix_glob(pattern: str) -> bool:
    """True for ``literal*`` (one trailing ``*`` and no other glob character)."""
    return pattern.endswith("*") and not is_glob(pattern[:-1])


def compile_glob(pattern: str) -> StringTest:
    """A fast full-string test for one positive glob pattern."""
    if not is_glob(pattern):
        return pattern.__eq__
    if is_prefix_glob(pattern):
        prefix = pattern[:-1]
        return lambda value: value.startswith(prefix)
    regex = re.compile(translate(pattern), re.DOTALL)
    return lambda value: regex.match(value) is not None


def glob_match(pattern: str, value: str | None) -> bool:
    """One label pattern (with ``!`` negation) against one value; ``None`` never matches."""
    if value is None:
        return False
    if pattern.startswith("!"):
        return not compile_glob(pattern[1:])(value)
    return compile_glob(pattern)(value)


def _negated(test: StringTest) -> StringTest:
    return lambda value: not test(value)


def compile_patterns(patterns: str | Sequence[str]) -> StringTest:
    """One test for the OR of a label's patterns (the value must be present: not None)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    exact = frozenset(p for p in patterns if not p.startswith("!") and not is_glob(p))
    tests = tuple(
        _negated(compile_glob(p[1:])) if p.startswith("!") else compile_glob(p)
        for p in patterns
        if p.startswith("!") or is_glob(p)
    )
    if not tests:
        if len(exact) == 1:
            return next(iter(exact)).__eq__
        return exact.__contains__
    if not exact and len(tests) == 1:
        return tests[0]

    def test(value: str) -> bool:
        if value in exact:
            return True
        for one in tests:  # a plain loop: no generator on the hot path
            if one(value):
                break
        else:
            return False
        return True

    return test


class ValueMatcher:
    """The OR of a label's patterns; a missing value (``None``) never matches."""

    __slots__ = ("_test",)

    def __init__(self, patterns: str | Sequence[str]) -> None:
        self._test = compile_patterns(patterns)

    def __call__(self, value: str | None) -> bool:
        return value is not None and self._test(value)


def _selective_first(item: tuple[str, str | Sequence[str]]) -> tuple[int, str]:
    """Check exact roles, then exact values, then globs: cheap and selective tests first."""
    label, patterns = item
    values = [patterns] if isinstance(patterns, str) else patterns
    exact = all(not v.startswith("!") and not is_glob(v) for v in values)
    return (0 if label == RESOURCE_ROLE and exact else 1 if exact else 2, label)


class ResourceMatcher:
    """A compiled ``ResourceSpec``: every label must match (AND); empty matches all."""

    __slots__ = ("_labels",)

    def __init__(self, spec: SpecLike) -> None:
        self._labels = tuple(
            (label, compile_patterns(p)) for label, p in sorted(spec.items(), key=_selective_first)
        )

    @property
    def empty(self) -> bool:
        return not self._labels

    def __call__(self, labels: Labels) -> bool:
        for label, test in self._labels:
            value = labels.get(label)
            if value is None or not test(value):
                return False
        return True

    def includes(self, candidates: Iterable[Labels]) -> bool:
        """True if ONE candidate satisfies every label (always true for an empty spec)."""
        specs = self._labels
        if not specs:
            return True
        for candidate in candidates:
            for label, test in specs:
                value = candidate.get(label)
                if value is None or not test(value):
                    break
            else:
                return True
        return False


class NameMatcher:
    """Event-name patterns (``expect`` or ``after``); an empty set matches nothing."""

    __slots__ = ("_exact", "_tests", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = frozenset(patterns)
        self._exact = frozenset(p for p in self.patterns if not is_glob(p))
        self._tests = tuple(compile_glob(p) for p in sorted(self.patterns) if is_glob(p))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __call__(self, name: str) -> bool:
        if name in self._exact:
            return True
        for test in self._tests:
            if test(name):
                break
        else:
            return False
        return True


def resource_matches(spec: SpecLike, labels: Labels) -> bool:
    """``spec`` against one resource (compiles the spec; prefer ``ResourceMatcher`` in loops)."""
    return ResourceMatcher(spec)(labels)


def related_match(specs: SpecLike | Sequence[SpecLike], related: Sequence[Labels]) -> bool:
    """AND across ``specs``; each must be satisfied by some related resource."""
    if isinstance(specs, Mapping):
        specs = [specs] if specs else []
    return all(ResourceMatcher(spec).includes(related) for spec in specs)


class LabelRef(NamedTuple):
    """A parsed ``for_each`` label: plain (``role`` None) or ``related:<role>:<label>``."""

    name: str
    role: str | None
    label: str

    @classmethod
    def parse(cls, name: str) -> LabelRef:
        if name.startswith(RELATED_PREFIX):
            directive, _, label = name.rpartition(":")
            _, _, role = directive.partition(":")
            return cls(name, role, label)
        return cls(name, None, name)

    def value(self, resource: Labels, related: Sequence[Labels]) -> str:
        if self.role is None:
            return resource.get(self.label, "")
        for candidate in related:
            if candidate.get(RESOURCE_ROLE) == self.role:
                return candidate.get(self.label, "")
        return ""
