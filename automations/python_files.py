"""Automations defined in Python files, imported without harming the caller.

A Python automations file is imported as a throwaway module (its directory briefly on
``sys.path`` so it can import its neighbours); whatever it raises, even ``SystemExit``, becomes
an error naming the failing line, and every module-level ``Automation`` it defines is found.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from automations.errors import InvalidAutomation
from automations.field_errors import validation_errors
from automations.models import Automation

PY_SUFFIXES = frozenset({".py"})


def import_module(path: Path) -> tuple[dict[str, Any] | None, list[InvalidAutomation]]:
    """The module's namespace, or None and why it could not be imported."""
    file = str(path)
    module_name = f"_automations_file_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return None, [InvalidAutomation("cannot import this file", file=file)]
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ValidationError as exc:
        return None, validation_errors(exc, file=_failing_line(exc, path))
    except SystemExit as exc:  # exit() in a user's module must not end the CLI
        return None, [InvalidAutomation(
            f"the file raised SystemExit({exc.code!r}) while loading (sys.exit() or exit()); "
            "an automations file must define automations, not exit",
            file=_failing_line(exc, path))]
    except Exception as exc:  # a user's module can raise anything; report it, do not crash
        return None, [InvalidAutomation(f"import failed: {type(exc).__name__}: {exc}",
                                        file=_failing_line(exc, path))]
    finally:
        sys.modules.pop(module_name, None)
        if directory in sys.path:
            sys.path.remove(directory)
    return vars(module), []


def _failing_line(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame in ``path`` (where the user's mistake is)."""
    target = str(path.resolve())
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if str(Path(frame.filename).resolve()) == target:
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


def collect(namespace: dict[str, Any]) -> list[tuple[str, Automation]]:
    """Module-level automations: plain names, and the items of lists, tuples and dicts."""
    found: dict[int, tuple[str, Automation]] = {}
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        if isinstance(value, Automation):
            found.setdefault(id(value), (name, value))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Automation):
                    found.setdefault(id(item), (f"{name}[{i}]", item))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Automation):
                    found.setdefault(id(item), (f"{name}[{key!r}]", item))
    return list(found.values())

