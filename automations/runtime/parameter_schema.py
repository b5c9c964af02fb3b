"""A flow's parameters as JSON Schema (Prefect's ``parameter_openapi_schema``), and the check
of a new run's parameters against it.

``deployments apply`` computes the schema from the flow function's signature and stores it with
the deployment, so ``deployments run`` and run-deployment actions can refuse an unknown name, a
missing required parameter or a value of the wrong JSON type before a run exists, without
importing the flow's code (the worker would only fail the run later). A type hint pydantic
cannot describe is left open (any value), as is an unresolvable annotation.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_type_hints

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import ConfigDict, Field, TypeAdapter, create_model
from pydantic.json_schema import PydanticJsonSchemaWarning

MAX_VALUE_CHARS = 200
"""Longer error messages (they repeat the value) are cut here."""


def parameter_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of ``fn``'s keyword parameters: one property per parameter, the ones
    without a default required, no others allowed unless ``fn`` takes ``**kwargs``."""
    sig = inspect.signature(fn)
    hints = _hints(fn, sig)
    try:
        return _schema(sig, hints)
    except Exception:  # pydantic refuses the combination: keep the names, leave types open
        return _schema(sig, {})


def _schema(sig: inspect.Signature, hints: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    takes_kwargs = False
    for i, (name, param) in enumerate(sig.parameters.items()):
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_kwargs = True
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        hint = hints.get(name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        # Field names are p0, p1...: a parameter may be called "model_config" or "json".
        fields[f"p{i}"] = (hint if _describable(hint) else Any,
                           Field(default, alias=name, title=name))
    config = ConfigDict(extra="allow" if takes_kwargs else "forbid",
                        arbitrary_types_allowed=True)
    model = create_model("Parameters", __config__=config, **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)  # unserialisable defaults
        schema = model.model_json_schema(by_alias=True)
    if not takes_kwargs:
        schema["additionalProperties"] = False
    return schema


def _hints(fn: Callable[..., Any], sig: inspect.Signature) -> dict[str, Any]:
    """The parameters' type hints; when one cannot be resolved (a name local to a function, a
    typo), the others still count and that one is left open."""
    try:
        return get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    namespace = getattr(fn, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, param in sig.parameters.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:  # what get_type_hints does, one annotation at a time
                annotation = eval(annotation, dict(namespace))
            except Exception:
                continue
        hints[name] = annotation
    return hints


def _describable(hint: Any) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            TypeAdapter(hint).json_schema()
    except Exception:  # arbitrary classes, callables...: pydantic has no schema for them
        return False
    return True


def parameter_problems(
    schema: Mapping[str, Any], defaults: Mapping[str, Any], given: Mapping[str, Any]
) -> list[str]:
    """What is wrong with a run of ``given`` parameters over a deployment's ``defaults``:
    unknown and missing names, and values of ``given`` that do not fit (the defaults were
    checked by ``deployments apply`` with the worker's own coercion, so are not judged again)."""
    merged = {**defaults, **given}
    known = list(schema.get("properties", {}))
    problems: list[str] = []
    errors: Iterable[SchemaError] = Draft202012Validator(dict(schema)).iter_errors(merged)
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if not path and error.validator == "additionalProperties":
            takes = ", ".join(known) or "no parameters"
            problems.extend(f"unknown parameter {name!r} (the flow takes: {takes})"
                            for name in merged if name not in known)
        elif not path and error.validator == "required":
            problems.extend(f"missing required parameter {name!r}"
                            for name in schema.get("required", []) if name not in merged)
        elif path and path[0] in given:
            error = _deepest(error)
            path = list(error.absolute_path)
            message = error.message
            if len(message) > MAX_VALUE_CHARS:
                message = message[:MAX_VALUE_CHARS] + "..."
            problems.append(f"parameter {_path(path)!r}: {message}")
    return list(dict.fromkeys(problems))


def _deepest(error: SchemaError) -> SchemaError:
    """For a union (``anyOf``), the member's error that got furthest into the value (a
    field of a nested model), else the union's own."""
    if not error.context:
        return error
    deepest = max(error.context, key=lambda e: len(e.absolute_path))
    return _deepest(deepest) if len(deepest.absolute_path) > len(error.absolute_path) else error


def _path(parts: list[Any]) -> str:
    text = str(parts[0])
    for part in parts[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
