"""Run one test: its events through ``automations.dry_run`` (the reference evaluator with
event time as the clock, as ``automations test --events`` runs), then match the firings
against the expectations.

Every firing must be expected and every expectation met. Matching is a maximum matching
(an expectation with fewer keys cannot steal the firing a stricter one needs); what is left
is paired up by automation to show differences (``at``, labels, state, action fields), and
the rest is reported as missing or unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from actions.templating import TemplateEngine
from automations.dry_run import DryRun, Fired, Numbered
from automations.durations import format_duration
from automations.events import Event
from automations.testing.load import LoadedTests
from automations.testing.model import AutomationTestCase, ExpectedAction, ExpectedFiring
from automations.testing.render import RenderedAction, render_actions


@dataclass(slots=True)
class Got:
    """One firing of the run: when (``offset`` from ``start``), and its rendered actions
    (rendered only for automations whose expectations check actions)."""

    fired: Fired
    offset: timedelta
    actions: list[RenderedAction] | None = None

    @property
    def automation(self) -> str:
        return self.fired.automation.name

    @property
    def state(self) -> str:
        return self.fired.firing.trigger_states[0].value

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.fired.firing.triggering_labels)

    @property
    def event(self) -> str | None:
        event = self.fired.firing.triggering_event
        return None if event is None else str(event.get("event"))


@dataclass(frozen=True, slots=True)
class Difference:
    """An expectation and the firing of its automation that came closest, with what differs."""

    index: int
    expected: ExpectedFiring
    got: Got
    problems: list[str]


@dataclass(slots=True)
class CaseResult:
    file: str
    index: int
    name: str
    got: list[Got]
    missing: list[tuple[int, ExpectedFiring]] = field(default_factory=list)
    unexpected: list[Got] = field(default_factory=list)
    different: list[Difference] = field(default_factory=list)
    held_followers: int = 0
    truncated_chains: int = 0

    @property
    def passed(self) -> bool:
        return not (self.missing or self.unexpected or self.different)


async def run_file(loaded: LoadedTests) -> list[CaseResult]:
    """Every test of one file, in order."""
    engine = TemplateEngine()
    return [await run_case(loaded, i, test, engine) for i, test in enumerate(loaded.spec.tests)]


def case_events(loaded: LoadedTests, index: int, test: AutomationTestCase) -> list[Event]:
    """The test's events at absolute times, in time order (ties: as written)."""
    start = loaded.spec.start
    events = [e for j, item in enumerate(test.events)
              for e in item.events(start, f"{loaded.file}:{index}:{test.name}:{j}")]
    return sorted(events, key=lambda e: e.occurred)


async def run_case(
    loaded: LoadedTests, index: int, test: AutomationTestCase, engine: TemplateEngine
) -> CaseResult:
    start = loaded.spec.start
    events = case_events(loaded, index, test)
    run = DryRun(loaded.automations, follows_wait=loaded.spec.follows_wait)
    result = run.run([Numbered(n, e) for n, e in enumerate(events, start=1)],
                     until=None if test.until is None else start + test.until)
    got = [Got(f, f.firing.triggered - start) for f in result.fired]
    checked = {e.automation for e in test.expect if e.actions}
    for item in got:
        if item.automation in checked:
            item.actions = await render_actions(item.fired.automation, item.fired.firing, engine)
    case = CaseResult(loaded.file, index, test.name, got,
                      held_followers=result.held_followers,
                      truncated_chains=result.truncated_chains)
    _match(case, test.expect)
    return case


def _match(case: CaseResult, expected: list[ExpectedFiring]) -> None:
    edges = [[g for g, item in enumerate(case.got) if not problems(e, item)] for e in expected]
    owner: dict[int, int] = {}  # got index -> expectation index

    def augment(e: int, visited: set[int]) -> bool:
        for g in edges[e]:
            if g in visited:
                continue
            visited.add(g)
            if g not in owner or augment(owner[g], visited):
                owner[g] = e
                return True
        return False

    for e in range(len(expected)):
        augment(e, set())
    matched = set(owner.values())
    free = [g for g in range(len(case.got)) if g not in owner]
    for e, wanted in enumerate(expected):
        if e in matched:
            continue
        near = [g for g in free if case.got[g].automation == wanted.automation]
        if not near:
            case.missing.append((e, wanted))
            continue
        best = min(near, key=lambda g: (len(problems(wanted, case.got[g])),
                                        _distance(wanted, case.got[g])))
        free.remove(best)
        case.different.append(Difference(e, wanted, case.got[best],
                                         problems(wanted, case.got[best])))
    case.unexpected = [case.got[g] for g in free]


def _distance(wanted: ExpectedFiring, got: Got) -> float:
    return 0.0 if wanted.at is None else abs((got.offset - wanted.at).total_seconds())


def problems(wanted: ExpectedFiring, got: Got) -> list[str]:
    """What of ``wanted`` the firing does not meet (empty: it matches)."""
    if wanted.automation != got.automation:
        return [f"automation: expected {wanted.automation!r}, got {got.automation!r}"]
    found = []
    if wanted.at is not None and abs(got.offset - wanted.at) > wanted.within:
        tolerance = f" (within {format_duration(wanted.within)})" if wanted.within else ""
        found.append(f"at: expected {format_duration(wanted.at)}{tolerance}, got "
                     f"{format_duration(got.offset)} ({_signed(got.offset - wanted.at)})")
    if wanted.state is not None and wanted.state != got.state:
        found.append(f"state: expected {wanted.state}, got {got.state}")
    if wanted.event is not None and wanted.event != got.event:
        found.append(f"event: expected {wanted.event!r}, got {got.event!r}")
    if wanted.labels is not None:
        found.extend(subset_problems(wanted.labels, got.labels, "labels"))
    for k, action in enumerate(wanted.actions):
        found.extend(_action_problems(action, got.actions or [], f"actions[{k}]"))
    return found


def _signed(delta: timedelta) -> str:
    text = format_duration(delta)
    return text if text.startswith("-") else f"+{text}"


def _action_problems(wanted: ExpectedAction, actions: list[RenderedAction],
                     path: str) -> list[str]:
    picked = [a for a in actions if (wanted.index is None or a.index == wanted.index)
              and (wanted.type is None or a.type == wanted.type)]
    which = f"index {wanted.index}" if wanted.index is not None else f"type {wanted.type}"
    if not picked:
        return [f"{path}: the firing runs no action with {which}"]
    best: list[str] | None = None
    for action in picked:
        found = subset_problems(wanted.fields(), action.fields, f"{path}")
        if action.error is not None and found:
            found.append(f"{path}: rendering failed: {action.error}")
        if not found:
            return []
        if best is None or len(found) < len(best):
            best = found
    return best or []


def subset_problems(wanted: Any, got: Any, path: str) -> list[str]:
    """Where ``got`` differs from ``wanted``; mappings compare as a subset (keys not in
    ``wanted`` are ignored), everything else by equality."""
    if isinstance(wanted, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected a mapping, got {_show(got)}"]
        found = []
        for key, value in wanted.items():
            where = f"{path}.{key}" if str(key).isidentifier() else f"{path}[{_show(key)}]"
            if key not in got:
                found.append(f"{where}: expected {_show(value)}, got nothing")
            else:
                found.extend(subset_problems(value, got[key], where))
        return found
    if isinstance(wanted, list) and isinstance(got, list) and len(wanted) == len(got):
        return [p for i, (w, g) in enumerate(zip(wanted, got, strict=True))
                for p in subset_problems(w, g, f"{path}[{i}]")]
    if _same(wanted, got):
        return []
    return [f"{path}: expected {_show(wanted)}, got {_show(got)}"]


def _same(wanted: Any, got: Any) -> bool:
    if isinstance(wanted, datetime) and isinstance(got, str):
        return wanted.isoformat() == got  # YAML reads an unquoted timestamp as a datetime
    if isinstance(wanted, bool) or isinstance(got, bool):
        return wanted is got  # True == 1 in Python, not in JSON
    return bool(wanted == got)


def _show(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def firing_json(got: Got) -> dict[str, Any]:
    """A firing as the ``--json`` report shows it."""
    firing = got.fired.firing
    data: dict[str, Any] = {
        "automation": got.automation, "at": format_duration(got.offset),
        "triggered": firing.triggered.isoformat(), "state": got.state, "labels": got.labels,
        "event": got.event,
    }
    if got.actions is not None:
        data["actions"] = [{"index": a.index, "type": a.type, "fields": a.fields,
                            "placeholders": a.placeholders, "error": a.error}
                           for a in got.actions]
    return data


def expected_json(wanted: ExpectedFiring) -> dict[str, Any]:
    return wanted.model_dump(mode="json", exclude_defaults=True)


def case_json(case: CaseResult) -> dict[str, Any]:
    return {
        "file": case.file, "test": case.name, "index": case.index, "passed": case.passed,
        "firings": [firing_json(g) for g in case.got],
        "missing": [{"expect": i, **expected_json(e)} for i, e in case.missing],
        "unexpected": [firing_json(g) for g in case.unexpected],
        "different": [{"expect": d.index, "expected": expected_json(d.expected),
                       "got": firing_json(d.got), "problems": d.problems}
                      for d in case.different],
    }
