"""Test files from disk, every error at once with its file and field path.

The test file is checked against its model (``testing.model``), its automation files are
loaded exactly as ``apply`` loads them (``automations.loader``), and every expectation must
name one of those automations (and an action it has). Nothing runs unless all of it is valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from automations.documents import UniqueKeyLoader, yaml_problem
from automations.errors import AutomationsError, InvalidAutomation, InvalidAutomations
from automations.field_errors import validation_errors
from automations.loader import load_files
from automations.models import Automation
from automations.testing.model import AutomationTests, ExpectedFiring

TESTS_KEY = "tests"


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a test file: ``file:field.path: message``."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = ":".join(p for p in (self.file, self.path) if p)
        return f"{where}: {self.message}"


class InvalidTests(AutomationsError):
    """Test files with mistakes; ``problems`` lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedTests:
    """A valid test file and the automations it tests."""

    file: str
    spec: AutomationTests
    automations: list[Automation]


def read_document(path: Path) -> Any:
    """The decoded YAML/JSON document (YAML is a superset; a key given twice is refused)."""
    raw = path.read_bytes()
    if path.suffix.lower() == ".json":
        return json.loads(raw)
    return yaml.load(raw, Loader=UniqueKeyLoader)  # a SafeLoader subclass


def is_test_document(document: Any) -> bool:
    """A test file is a mapping with ``tests:`` (an automations file never has that key)."""
    return isinstance(document, dict) and TESTS_KEY in document


def load_test_files(paths: Iterable[str | Path]) -> list[LoadedTests]:
    """Every test file, or ``InvalidTests`` listing every problem of every file."""
    loaded: list[LoadedTests] = []
    problems: list[Problem] = []
    for given in paths:
        path = Path(given)
        found, errors = _load_one(path)
        problems.extend(errors)
        if found is not None:
            loaded.append(found)
    if problems:
        raise InvalidTests(problems)
    return loaded


def _load_one(path: Path) -> tuple[LoadedTests | None, list[Problem]]:
    file = str(path)
    try:
        document = read_document(path)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(file, "", f"cannot read: {exc}")]
    except json.JSONDecodeError as exc:
        return None, [Problem(file, "", f"invalid JSON: {exc}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, "", f"invalid YAML: {yaml_problem(exc)}")]
    if not is_test_document(document):
        return None, [Problem(file, "", "not a test file (a mapping with `tests:`); for a dry "
                                        "run of automation files over events give --events")]
    try:
        spec = AutomationTests.model_validate(document)
    except ValidationError as exc:
        return None, [Problem(file, e.field_path, e.message)
                      for e in validation_errors(exc, file=file)]
    base = path.parent
    try:
        automations = load_files([p if Path(p).is_absolute() else base / p
                                  for p in spec.automations])
    except InvalidAutomation as exc:
        errors = exc.errors if isinstance(exc, InvalidAutomations) else [exc]
        return None, [Problem(e.file or file, e.field_path, e.message) for e in errors]
    problems = _expectation_problems(file, spec, {a.name: a for a in automations})
    return (None if problems else LoadedTests(file, spec, automations)), problems


def _expectation_problems(
    file: str, spec: AutomationTests, by_name: dict[str, Automation]
) -> list[Problem]:
    problems = []
    for i, test in enumerate(spec.tests):
        for j, expected in enumerate(test.expect):
            path = f"tests[{i}].expect[{j}]"
            automation = by_name.get(expected.automation)
            if automation is None:
                known = ", ".join(repr(n) for n in sorted(by_name)) or "none"
                problems.append(Problem(file, f"{path}.automation",
                                        f"no automation named {expected.automation!r} in the "
                                        f"automation files (they define {known})"))
            elif not automation.enabled:
                problems.append(Problem(file, f"{path}.automation",
                                        f"automation {automation.name!r} is paused (enabled: "
                                        "false) and never fires"))
            else:
                problems.extend(_action_problems(file, path, expected, automation))
    return problems


def _action_problems(
    file: str, path: str, expected: ExpectedFiring, automation: Automation
) -> list[Problem]:
    actions = [*automation.actions, *automation.actions_on_trigger,
               *automation.actions_on_resolve]
    problems = []
    for k, wanted in enumerate(expected.actions):
        where = f"{path}.actions[{k}]"
        if wanted.index is not None and wanted.index >= len(actions):
            problems.append(Problem(file, f"{where}.index",
                                    f"{automation.name!r} has {len(actions)} action(s) "
                                    f"(indexes 0 to {len(actions) - 1})"))
        elif wanted.index is not None and wanted.type not in (None, actions[wanted.index].type):
            problems.append(Problem(file, f"{where}.type",
                                    f"action {wanted.index} of {automation.name!r} is a "
                                    f"{actions[wanted.index].type}"))
        elif wanted.type is not None and wanted.type not in {a.type for a in actions}:
            problems.append(Problem(file, f"{where}.type",
                                    f"{automation.name!r} has no {wanted.type} action"))
    return problems
