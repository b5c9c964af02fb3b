"""run-deployment and pause-/resume-deployment, through the runtime's ``DeploymentsPort``.

run-deployment renders ``parameters`` with Prefect's placeholder rules (reference 5.3): a
string that is a single ``{{ expr }}`` keeps its type, other templated strings render to text,
and ``{"__prefect_kind": "jinja" | "json" | "none"}`` placeholders work. It creates at most one
flow run per idempotency key (firing + action), even when the action is redelivered, and the run
carries the automation as its ``creator``. Rendered parameters that do not fit the flow's
signature (the schema ``deployments apply`` stored) fail the action at once, with no run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

import orjson

from actions.models import PauseDeployment, ResumeDeployment, RunDeployment
from actions.outcome import PermanentError, Reason
from actions.templating import Templates
from automations.dispatch.invocation import infer_id
from automations.dispatch.ports import ActionContext, ActionResult, DeploymentsPort
from automations.errors import NotFound
from automations.runtime.parameter_schema import parameter_problems

DEPLOYMENT_KIND = "prefect.deployment"
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)


def _port(ctx: ActionContext) -> DeploymentsPort:
    if ctx.ports.deployments is None:
        raise PermanentError(Reason.UNSUPPORTED, "deployments are not available here")
    return ctx.ports.deployments


async def target_deployment(
    port: DeploymentsPort, source: str, deployment_id: UUID | None, name: str | None,
    ctx: ActionContext,
) -> Mapping[str, Any]:
    """The selected deployment (by id or name) or the first one of the triggering event."""
    if source == "selected" and name is not None and deployment_id is None:
        found = await port.by_name(name)
        if found is None:
            raise PermanentError(Reason.NOT_FOUND, f"no deployment named {name!r}")
        return found
    if source == "selected" and deployment_id is not None:
        target = deployment_id
    else:
        if ctx.triggering_event is None:
            raise PermanentError(Reason.MISSING_TARGET, "No event to infer the deployment from")
        inferred = infer_id(ctx.triggering_event, DEPLOYMENT_KIND)
        if inferred is None:
            raise PermanentError(Reason.MISSING_TARGET, "No deployment could be inferred")
        target = inferred
    found = await port.get(target)
    if found is None:
        raise PermanentError(Reason.NOT_FOUND, f"deployment {target} does not exist")
    return found


def _deployment_ref(dep: Mapping[str, Any]) -> dict[str, str]:
    return {"prefect.resource.id": f"{DEPLOYMENT_KIND}.{dep['id']}",
            "prefect.resource.role": "target", "prefect.resource.name": str(dep["name"])}


async def render_parameters(value: Any, templates: Templates, field: str = "parameters") -> Any:
    """Prefect's parameter hydration over a JSON-like value."""
    if isinstance(value, Mapping):
        kind = value.get("__prefect_kind")
        if kind is not None:
            return await _placeholder(str(kind), value, templates, field)
        return {k: await render_parameters(v, templates, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [await render_parameters(v, templates, f"{field}[{i}]")
                for i, v in enumerate(value)]
    if isinstance(value, str):
        match = _SINGLE_EXPRESSION.match(value)
        if match and "{{" not in match["expr"] and "{%" not in value:
            rendered = await templates.render(f"{{{{ ({match['expr']}) | tojson }}}}",
                                              field=field)
            return _loads(rendered, field)
        return await templates.render(value, field=field)
    return value


async def _placeholder(kind: str, value: Mapping[str, Any], templates: Templates,
                       field: str) -> Any:
    if kind == "none":
        return value.get("value")
    if kind == "jinja":
        return await templates.render(str(value.get("template", "")), field=field)
    if kind == "json":
        inner = await render_parameters(value.get("value"), templates, field)
        return _loads(inner, field) if isinstance(inner, str) else inner
    raise PermanentError(Reason.TEMPLATE, f"{field}: placeholder kind {kind!r} is not supported")


def _loads(text: str, field: str) -> Any:
    if text == "":
        return None  # an undefined name renders empty: no value
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PermanentError(Reason.TEMPLATE, f"{field}: rendered value is not JSON: {exc}",
                             details={"template_field": field}) from None


async def run_deployment(action: RunDeployment, ctx: ActionContext) -> ActionResult:
    port = _port(ctx)
    dep = await target_deployment(port, action.source, action.deployment_id, action.deployment,
                                  ctx)
    parameters = None
    if action.parameters is not None:
        parameters = await render_parameters(action.parameters, ctx.templates)
    _check_parameters(dep, parameters)
    creator = {"kind": "automation", "id": str(ctx.automation.id),
               "name": ctx.automation.name}
    try:
        run = await port.create_flow_run(
            UUID(str(dep["id"])), parameters, action.job_variables,
            ctx.now + timedelta(seconds=action.schedule_after), ctx.idempotency_key, creator,
        )
    except NotFound as exc:
        raise PermanentError(Reason.NOT_FOUND, str(exc)) from None
    flow_run = {"prefect.resource.id": f"prefect.flow-run.{run['id']}",
                "prefect.resource.role": "flow-run", "prefect.resource.name": str(run["name"])}
    return ActionResult(
        details={"deployment_id": str(dep["id"]), "flow_run_id": str(run["id"]),
                 "flow_run_name": str(run["name"]), "parameters": run.get("parameters")},
        related=[_deployment_ref(dep), flow_run],
    )


def _check_parameters(dep: Mapping[str, Any], parameters: Any) -> None:
    """Refuse parameters that do not fit the deployment's flow (when its schema is known)."""
    schema = dep.get("parameter_openapi_schema")
    if not isinstance(schema, Mapping):
        return  # applied by an older version: the worker checks when it runs the flow
    given = parameters if isinstance(parameters, Mapping) else {}
    problems = parameter_problems(schema, dep.get("parameters") or {}, given)
    if problems:
        raise PermanentError(Reason.VALIDATION, f"invalid parameters for deployment "
                             f"{dep.get('name')!r}: " + "; ".join(problems),
                             details={"deployment_id": str(dep.get("id"))})


async def _set_paused(source: str, deployment_id: UUID | None, name: str | None, paused: bool,
                      ctx: ActionContext) -> ActionResult:
    port = _port(ctx)
    dep = await target_deployment(port, source, deployment_id, name, ctx)
    try:
        await port.set_paused(UUID(str(dep["id"])), paused)
    except NotFound as exc:
        raise PermanentError(Reason.NOT_FOUND, str(exc)) from None
    return ActionResult(details={"deployment_id": str(dep["id"]), "paused": paused},
                        related=[_deployment_ref(dep)])


async def pause_deployment(action: PauseDeployment, ctx: ActionContext) -> ActionResult:
    return await _set_paused(action.source, action.deployment_id, action.deployment, True, ctx)


async def resume_deployment(action: ResumeDeployment, ctx: ActionContext) -> ActionResult:
    return await _set_paused(action.source, action.deployment_id, action.deployment, False, ctx)
