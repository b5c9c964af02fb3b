"""Deployment files: YAML, JSON or Python, checked before anything is stored.

A YAML/JSON file holds ``deployments: [...]`` (or a list, or one deployment). A Python file
defines ``deployments`` (a list of ``Deployment`` or dicts). Relative entrypoint paths and
``working_dir`` resolve against the file's directory. Every deployment's entrypoint is loaded
and its default parameters are checked against the function's signature; all problems are
reported at once, each with its place (``deployments[1].schedules[0].cron: ...``).
"""

from __future__ import annotations

import runpy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from automations.errors import AutomationsError
from automations.events import format_validation_error
from automations.runtime.deployments import Deployment
from automations.runtime.entrypoints import (
    EntrypointError,
    check_parameters,
    flow_name_of,
    schema_of,
)
from automations.runtime.entrypoints import load_entrypoint as load_target
from automations.runtime.parameter_schema import parameter_problems


class InvalidDeployment(AutomationsError, ValueError):
    """A deployment file or definition is invalid; the message lists every problem."""


def _read(path: Path) -> Any:
    if not path.is_file():
        raise InvalidDeployment(f"{path}: no such file")
    try:
        if path.suffix == ".py":
            return runpy.run_path(str(path)).get("deployments")
        text = path.read_text()
        return orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise InvalidDeployment(f"{path}: cannot parse: {exc}") from None
    except SystemExit as exc:  # exit() in a definitions file must not end the CLI
        raise InvalidDeployment(f"{path}: the file raised SystemExit({exc.code!r}) while "
                                "loading; it must define deployments, not exit") from None
    except Exception as exc:  # a Python file that fails to run
        raise InvalidDeployment(f"{path}: {type(exc).__name__}: {exc}") from None


def _untagged(problem: str) -> str:
    """``schedules[0].CronSchedule.cron: ...`` -> ``schedules[0].cron: ...``."""
    return problem.replace(".CronSchedule", "").replace(".IntervalSchedule", "")


def _items(data: Any, path: Path) -> list[Any]:
    if isinstance(data, dict) and "deployments" in data:
        data = data["deployments"]
    elif isinstance(data, dict | Deployment):
        data = [data]
    if not isinstance(data, list):
        raise InvalidDeployment(f"{path}: expected 'deployments: [...]', a list or one deployment")
    return data


def load_file(path: Path, *, check_entrypoints: bool = True) -> list[Deployment]:
    base = path.resolve().parent
    items = _items(_read(path), path)
    found: list[Deployment] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        where = f"deployments[{i}]"
        try:
            data = item.model_dump() if isinstance(item, Deployment) else dict(item)
            working_dir = Path(str(data.get("working_dir") or base))
            data["working_dir"] = str(working_dir if working_dir.is_absolute()
                                      else (base / working_dir).resolve())
            dep = Deployment.model_validate(data)
        except ValidationError as exc:
            errors.extend(f"{where}.{_untagged(p)}"
                          for p in format_validation_error(exc).split("; "))
            continue
        except (TypeError, ValueError) as exc:
            errors.append(f"{where}: {exc}")
            continue
        if check_entrypoints:
            try:
                dep = check_entrypoint(dep)
            except EntrypointError as exc:
                errors.append(f"{where} ({dep.name}): {exc}")
                continue
        found.append(dep)
    names = [d.name for d in found]
    errors.extend(f"deployment name {n!r} is used more than once"
                  for n in sorted({n for n in names if names.count(n) > 1}))
    if errors:
        raise InvalidDeployment(f"{path}: " + "\n  ".join(["invalid deployments:", *errors]))
    return found


def check_entrypoint(dep: Deployment) -> Deployment:
    """Load the entrypoint, check the default parameters, fill in ``flow_name`` and the
    parameter schema that runs are checked against."""
    target = load_target(dep.entrypoint, dep.working_dir)
    parameters = check_parameters(target, dep.parameters, complete=False)
    del parameters  # coerced values are for running; store what the user wrote
    update: dict[str, Any] = {"parameter_openapi_schema": schema_of(target)}
    if not dep.flow_name:
        update["flow_name"] = flow_name_of(target)
    return dep.model_copy(update=update)


def check_run_parameters(dep: Deployment, given: Mapping[str, Any]) -> str | None:
    """Refuse (``InvalidDeployment``) parameters that do not fit the deployment's flow, before a
    run is created. A deployment applied by an older version has no stored schema: its flow is
    loaded to read the signature; when that fails the returned note says nothing was checked."""
    schema = dep.parameter_openapi_schema
    if schema is None:
        try:
            schema = schema_of(load_target(dep.entrypoint, dep.working_dir))
        except EntrypointError as exc:
            return f"parameters not checked against the flow (cannot load it: {exc})"
    problems = parameter_problems(schema, dep.parameters, given)
    if problems:
        raise InvalidDeployment(f"invalid parameters for deployment {dep.name!r}: "
                                + "; ".join(problems))
    return None
