"""Loading a deployment's entrypoint and checking parameters against its signature.

``path/file.py:function`` is loaded from the file (relative paths resolve against the
deployment's ``working_dir``); ``module:function`` is imported with ``working_dir`` on
``sys.path``. A plain function is accepted and run as a flow of the same name.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from automations.runtime.flows import Flow
from automations.runtime.parameter_schema import parameter_schema


class EntrypointError(ValueError):
    """The entrypoint cannot be loaded, or parameters do not fit its signature."""


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise EntrypointError(f"file {path} does not exist")
    name = f"_automations_entry_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.resolve().parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    spec.loader.exec_module(module)
    return module


def load_entrypoint(entrypoint: str, working_dir: str | None = None) -> Callable[..., Any]:
    """The flow (or function) the entrypoint names. Import errors become ``EntrypointError``."""
    target, _, attr = entrypoint.rpartition(":")
    base = Path(working_dir) if working_dir else Path.cwd()
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            module = _load_file(path if path.is_absolute() else base / path)
        else:
            if str(base) not in sys.path:
                sys.path.insert(0, str(base))
            module = importlib.import_module(target)
    except EntrypointError:
        raise
    except (Exception, SystemExit) as exc:  # user code: exit() must not end the caller
        raise EntrypointError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, attr, None)
    if found is None or not callable(found):
        raise EntrypointError(f"{target!r} has no function {attr!r}")
    return found  # type: ignore[no-any-return]


def as_flow(obj: Callable[..., Any]) -> Flow[..., Any]:
    return obj if isinstance(obj, Flow) else Flow(obj, name=None, tags=(), retries=0,
                                                  retry_delay_seconds=0, description=None,
                                                  settings=None)


def flow_name_of(obj: Callable[..., Any]) -> str:
    return as_flow(obj).name


def schema_of(obj: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of the flow's (or function's) parameters."""
    return parameter_schema(obj.fn if isinstance(obj, Flow) else obj)


def check_parameters(fn: Callable[..., Any], params: Mapping[str, Any], *,
                     complete: bool) -> dict[str, Any]:
    """Validate (and coerce, e.g. "3" -> 3 for an ``int``) ``params`` against ``fn``'s
    signature; with ``complete`` every required parameter must be given."""
    target = fn.fn if isinstance(fn, Flow) else fn
    sig = inspect.signature(target)
    try:
        bound = sig.bind(**params) if complete else sig.bind_partial(**params)
    except TypeError as exc:
        raise EntrypointError(f"parameters do not fit {_describe(target, sig)}: {exc}") from None
    try:
        hints = get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks rather than refuse
        hints = {}
    out: dict[str, Any] = {}
    errors = []
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        kind = sig.parameters[name].kind
        if hint is None or kind in (inspect.Parameter.VAR_KEYWORD,
                                    inspect.Parameter.VAR_POSITIONAL):
            out[name] = value
            continue
        try:
            out[name] = TypeAdapter(hint).validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["msg"]
            errors.append(f"{name}: {first} (got {value!r})")
    if errors:
        raise EntrypointError("invalid parameters: " + "; ".join(errors))
    return out


def _describe(fn: Callable[..., Any], sig: inspect.Signature) -> str:
    return f"{getattr(fn, '__name__', 'flow')}{sig}"
