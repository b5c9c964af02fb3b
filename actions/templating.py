"""Jinja2 templating of action fields, sandboxed and bounded (reference section 5.3).

``ImmutableSandboxedEnvironment`` with ``ChainableUndefined`` (an unknown name renders empty,
as in Prefect), at most ``MAX_FOR_LOOPS`` ``for`` loops nested at most ``MAX_LOOP_NESTING``
deep, ``range()`` of at most ``MAX_RANGE`` items, string/list repetition and ``**`` bounded, and
the output cut off at ``MAX_OUTPUT_CHARS``. A string is only rendered when it contains ``{{``
or ``{%``. ``check_templates`` runs the same parse and limits at apply time; a render error
fails the action at once (``Reason.TEMPLATE``) with the error and the source in the event.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jinja2 import ChainableUndefined, TemplateError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from actions.models import Action, CallWebhook, SendNotification
from actions.outcome import PermanentError, Reason
from actions.template_filters import FILTERS

MAX_FOR_LOOPS = 10
MAX_LOOP_NESTING = 2
MAX_RANGE = 100
MAX_OUTPUT_CHARS = 100_000
MAX_SOURCE_CHARS = 50_000
MAX_EXPONENT = 100

TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "send-notification": ("subject", "body"),
    "call-webhook": ("payload",),
    "run-deployment": ("parameters",),
}
"""Fields checked at apply time; notify and webhook fields are rendered by the dispatcher,
run-deployment parameters by its executor (Prefect's placeholder rules)."""

LAZY_NAMES = ("flow_run", "deployment", "flow")
"""Context names fetched only when a template mentions them (through the runtime's ports)."""


def is_template(source: str) -> bool:
    return "{{" in source or "{%" in source


def _limited_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise SecurityError(f"range() of {len(result)} items; at most {MAX_RANGE} are allowed")
    return result


def _tojson(value: Any, indent: int | None = None) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, default=_json_default, option=option).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, ResourceView):
        return dict(value)
    if isinstance(value, EventView):
        return value.as_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox plus bounds on ``*`` and ``**`` (``'x' * 10**9`` would exhaust memory)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and (
                    len(seq) * times > MAX_OUTPUT_CHARS
                ):
                    raise SecurityError("repetition result is over the output limit")
        return super().call_binop(context, op, left, right)


def _loop_depth(node: nodes.Node, depth: int = 0) -> int:
    deepest = depth
    for child in node.iter_child_nodes():
        inner = depth + 1 if isinstance(child, nodes.For) else depth
        deepest = max(deepest, _loop_depth(child, inner))
    return deepest


class TemplateEngine:
    """Owned by a dispatcher: the environment and a cache of compiled templates."""

    def __init__(self, cache_size: int = 512) -> None:
        self.env = _Environment(undefined=ChainableUndefined, autoescape=False)
        self.env.globals["range"] = _limited_range
        self.env.filters.update(FILTERS)
        self.env.filters["tojson"] = _tojson
        self._cache: OrderedDict[str, tuple[Template, frozenset[str]]] = OrderedDict()
        self._cache_size = cache_size

    def compile(self, source: str) -> tuple[Template, frozenset[str]]:
        """The template and the names it reads; raises ``TemplateError`` / ``SecurityError``."""
        found = self._cache.get(source)
        if found is not None:
            return found
        if len(source) > MAX_SOURCE_CHARS:
            raise SecurityError(f"template is {len(source)} characters; at most "
                                f"{MAX_SOURCE_CHARS} are allowed")
        tree = self.env.parse(source)
        loops = sum(1 for _ in tree.find_all(nodes.For))
        if loops > MAX_FOR_LOOPS:
            raise SecurityError(f"{loops} for loops; at most {MAX_FOR_LOOPS} are allowed")
        if _loop_depth(tree) > MAX_LOOP_NESTING:
            raise SecurityError(f"loops nested deeper than {MAX_LOOP_NESTING}")
        names = frozenset(meta.find_undeclared_variables(tree))
        compiled = (self.env.from_string(tree), names)
        self._cache[source] = compiled
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled

    def render_sync(self, template: Template, context: Mapping[str, Any]) -> str:
        size = 0
        chunks: list[str] = []
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"rendered output is over {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)

    def check(self, source: str) -> str | None:
        """The error a template would raise at compile time, or None."""
        try:
            self.compile(source)
        except (TemplateError, SecurityError) as exc:
            return _describe(exc)
        return None


def _describe(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    text = str(exc) or type(exc).__name__
    return f"{text} (line {line})" if line else text


def iter_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string leaf of a JSON-like value with its dotted path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_strings(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from iter_strings(item, f"{path}[{i}]")


def check_templates(action: Action, engine: TemplateEngine | None = None) -> list[str]:
    """Apply-time check: ``"<field path>: <error>"`` for every template that cannot run."""
    engine = engine or TemplateEngine()
    errors = []
    for name in TEMPLATE_FIELDS.get(action.type, ()):
        for path, source in iter_strings(getattr(action, name, None), name):
            if is_template(source):
                problem = engine.check(source)
                if problem:
                    errors.append(f"{path}: {problem}")
    return errors


# -- render-time context ------------------------------------------------------------------


class ResourceView(dict[str, str]):
    """A resource's labels with Prefect's ``.id`` / ``.name`` / ``.role`` shortcuts."""

    @property
    def id(self) -> str:
        return self.get("prefect.resource.id", "")

    @property
    def name(self) -> str | None:
        return self.get("prefect.resource.name")

    @property
    def role(self) -> str | None:
        return self.get("prefect.resource.role")


@dataclass(frozen=True, slots=True)
class EventView:
    """The event as templates see it (``event.resource.id`` works as in Prefect)."""

    id: Any
    occurred: Any
    event: str
    resource: ResourceView
    related: list[ResourceView]
    payload: dict[str, Any]
    follows: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "occurred": self.occurred.isoformat(), "event": self.event,
            "resource": dict(self.resource), "related": [dict(r) for r in self.related],
            "payload": self.payload, "follows": str(self.follows) if self.follows else None,
        }

    def resource_in_role(self, role: str) -> ResourceView | None:
        return next((r for r in self.related if r.role == role), None)


Loader = Callable[[], Awaitable[Any]]


class Templates:
    """Renders one action's strings with its context; lazy names are fetched once, and only
    when a template mentions them."""

    def __init__(self, engine: TemplateEngine, context: dict[str, Any],
                 loaders: Mapping[str, Loader] | None = None) -> None:
        self._engine = engine
        self._context = context
        self._loaders = dict(loaders or {})

    @property
    def context(self) -> Mapping[str, Any]:
        return self._context

    async def render(self, source: str, *, field: str) -> str:
        """The rendered string; any failure is a ``PermanentError(Reason.TEMPLATE)``."""
        if not is_template(source):
            return source
        try:
            template, names = self._engine.compile(source)
            for name in names & self._loaders.keys():
                self._context[name] = await self._loaders.pop(name)()
            return self._engine.render_sync(template, self._context)
        except PermanentError:
            raise
        except Exception as exc:  # any template failure, including a TypeError in an expression
            raise PermanentError(
                Reason.TEMPLATE,
                f"Template rendering failed: {field}: {_describe(exc)}",
                details={"template_error": _describe(exc), "template_source": source,
                         "template_field": field},
            ) from None

    async def render_value(self, value: Any, *, field: str) -> Any:
        """A JSON-like value with every string leaf rendered (keys are kept as written)."""
        if isinstance(value, str):
            return await self.render(value, field=field)
        if isinstance(value, Mapping):
            return {k: await self.render_value(v, field=f"{field}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [await self.render_value(v, field=f"{field}[{i}]")
                    for i, v in enumerate(value)]
        return value


async def render_action(action: Action, templates: Templates) -> Action:
    """A copy of ``action`` with its templated fields rendered (notify and webhook; other types
    render in their executors)."""
    if isinstance(action, SendNotification):
        return action.model_copy(update={
            "subject": await templates.render(action.subject, field="subject"),
            "body": await templates.render(action.body, field="body"),
        })
    if isinstance(action, CallWebhook):
        payload = await templates.render_value(action.payload, field="payload")
        return action.model_copy(update={"payload": payload})
    return action
