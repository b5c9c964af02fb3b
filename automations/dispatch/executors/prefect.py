"""The deployment, flow-run, work-pool and work-queue actions, on a Prefect server when one is
configured (``AUTOMATIONS_PREFECT_API_URL``, wired into the ports by ``build_ports``) or named
by the action's own ``prefect_api_url``; otherwise on this engine's runtime (the native
executors). Prefect's action type names and shapes are accepted unchanged.

run-/pause-/resume-deployment reuse the native executors with Prefect's ports, so parameter
templating, inference and the creator are the same. The flow-run actions follow Prefect's own:
cancel proposes CANCELLING (a REJECT that still ends Cancelled, a run with no infrastructure,
counts as done), suspend proposes ``Suspended`` for an hour, resume calls ``/resume``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from uuid import UUID

from actions.models import (
    CancelFlowRun,
    ChangeFlowRunState,
    PauseDeployment,
    PauseWorkPool,
    PauseWorkQueue,
    ResumeDeployment,
    ResumeFlowRun,
    ResumeWorkPool,
    ResumeWorkQueue,
    RunDeployment,
    SuspendFlowRun,
)
from actions.outcome import PermanentError, Reason
from automations.dispatch.executors import deployments, flow_runs
from automations.dispatch.invocation import infer_id
from automations.dispatch.ports import ActionContext, ActionResult
from automations.errors import AutomationsError
from automations.prefect.backend import (
    PrefectDeployments,
    PrefectFlowRuns,
    set_work_pool_paused,
    set_work_queue_paused,
    work_pool,
    work_queue,
)
from automations.prefect.client import PrefectClient

NO_PREFECT = ("needs a Prefect server: set AUTOMATIONS_PREFECT_API_URL or the action's "
              "prefect_api_url")


@asynccontextmanager
async def prefect_ports(
    action: Any, ctx: ActionContext
) -> AsyncIterator[tuple[PrefectDeployments, PrefectFlowRuns] | None]:
    """The Prefect ports this action goes to: its own server, the configured one, or None."""
    url = getattr(action, "prefect_api_url", None)
    if url:
        try:
            client = PrefectClient(url, timeout=ctx.action_timeout_s)
        except AutomationsError as exc:
            raise PermanentError(Reason.INVALID_TARGET, str(exc)) from None
        if client.auth_string:
            ctx.redactor.add(client.auth_string, url=False)
        try:
            yield PrefectDeployments(client), PrefectFlowRuns(client)
        finally:
            await client.aclose()
        return
    deps, runs = ctx.ports.deployments, ctx.ports.flow_runs
    if isinstance(deps, PrefectDeployments) and isinstance(runs, PrefectFlowRuns):
        yield deps, runs
        return
    yield None


def _on(ctx: ActionContext, ports: tuple[PrefectDeployments, PrefectFlowRuns]) -> ActionContext:
    return replace(ctx, ports=replace(ctx.ports, deployments=ports[0], flow_runs=ports[1]))


async def run_deployment(action: RunDeployment, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        return await deployments.run_deployment(action, ctx if ports is None else _on(ctx, ports))


async def pause_deployment(action: PauseDeployment, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        return await deployments.pause_deployment(action,
                                                  ctx if ports is None else _on(ctx, ports))


async def resume_deployment(action: ResumeDeployment, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        return await deployments.resume_deployment(action,
                                                   ctx if ports is None else _on(ctx, ports))


def _run_result(run_id: UUID, state: dict[str, Any]) -> ActionResult:
    target = {"prefect.resource.id": f"prefect.flow-run.{run_id}",
              "prefect.resource.role": "target"}
    return ActionResult(details={"flow_run_id": str(run_id), "state_type": state.get("type"),
                                 "state_name": state.get("name")}, related=[target])


async def cancel_flow_run(action: CancelFlowRun, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        if ports is None:
            return await flow_runs.cancel_flow_run(action, ctx)
        run_id = flow_runs.target_flow_run(ctx)
        state = await ports[1].propose(run_id, {
            "type": "CANCELLING", "message": f"Cancelled by Automation {ctx.automation.id}"},
            False, cancelling=True)
        return _run_result(run_id, state)


async def change_flow_run_state(action: ChangeFlowRunState, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        if ports is None:
            return await flow_runs.change_flow_run_state(action, ctx)
        run_id = flow_runs.target_flow_run(ctx)
        proposed = {"type": action.state, "name": action.name,
                    "message": action.message
                    or f"State changed by Automation {ctx.automation.id}"}
        state = await ports[1].propose(run_id, {k: v for k, v in proposed.items() if v},
                                       action.force)
        return _run_result(run_id, state)


async def suspend_flow_run(action: SuspendFlowRun, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        if ports is None:
            raise PermanentError(Reason.UNSUPPORTED, f"suspend-flow-run {NO_PREFECT}")
        run_id = flow_runs.target_flow_run(ctx)
        state = await ports[1].suspend(run_id, f"Suspended by Automation {ctx.automation.id}")
        return _run_result(run_id, state)


async def resume_flow_run(action: ResumeFlowRun, ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        if ports is None:
            raise PermanentError(Reason.UNSUPPORTED, f"resume-flow-run {NO_PREFECT}")
        run_id = flow_runs.target_flow_run(ctx)
        return _run_result(run_id, await ports[1].resume(run_id))


def _target(source: str, selected: UUID | None, kind: str, ctx: ActionContext) -> UUID:
    if source == "selected" and selected is not None:
        return selected
    found = infer_id(ctx.triggering_event, kind)
    if found is None:
        raise PermanentError(Reason.MISSING_TARGET, f"No {kind.removeprefix('prefect.')} "
                             "could be inferred")
    return found


async def _work_pool(action: PauseWorkPool | ResumeWorkPool, paused: bool,
                     ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        if ports is None:
            raise PermanentError(Reason.UNSUPPORTED, f"{action.type} {NO_PREFECT}")
        client = ports[0].client
        pool_id = _target(action.source, action.work_pool_id, "prefect.work-pool", ctx)
        pool = await work_pool(client, pool_id)
        await set_work_pool_paused(client, str(pool["name"]), paused)
        return ActionResult(
            details={"work_pool_id": str(pool_id), "paused": paused},
            related=[{"prefect.resource.id": f"prefect.work-pool.{pool_id}",
                      "prefect.resource.role": "target",
                      "prefect.resource.name": str(pool["name"])}])


async def _work_queue(action: PauseWorkQueue | ResumeWorkQueue, paused: bool,
                      ctx: ActionContext) -> ActionResult:
    async with prefect_ports(action, ctx) as ports:
        if ports is None:
            raise PermanentError(Reason.UNSUPPORTED, f"{action.type} {NO_PREFECT}")
        client = ports[0].client
        queue_id = _target(action.source, action.work_queue_id, "prefect.work-queue", ctx)
        queue = await work_queue(client, queue_id)
        await set_work_queue_paused(client, queue_id, paused)
        return ActionResult(
            details={"work_queue_id": str(queue_id), "paused": paused},
            related=[{"prefect.resource.id": f"prefect.work-queue.{queue_id}",
                      "prefect.resource.role": "target",
                      "prefect.resource.name": str(queue["name"])}])


async def pause_work_pool(action: PauseWorkPool, ctx: ActionContext) -> ActionResult:
    return await _work_pool(action, True, ctx)


async def resume_work_pool(action: ResumeWorkPool, ctx: ActionContext) -> ActionResult:
    return await _work_pool(action, False, ctx)


async def pause_work_queue(action: PauseWorkQueue, ctx: ActionContext) -> ActionResult:
    return await _work_queue(action, True, ctx)


async def resume_work_queue(action: ResumeWorkQueue, ctx: ActionContext) -> ActionResult:
    return await _work_queue(action, False, ctx)


EXECUTORS: dict[str, Callable[[Any, ActionContext], Awaitable[ActionResult]]] = {
    "run-deployment": run_deployment,
    "pause-deployment": pause_deployment,
    "resume-deployment": resume_deployment,
    "cancel-flow-run": cancel_flow_run,
    "change-flow-run-state": change_flow_run_state,
    "suspend-flow-run": suspend_flow_run,
    "resume-flow-run": resume_flow_run,
    "pause-work-pool": pause_work_pool,
    "resume-work-pool": resume_work_pool,
    "pause-work-queue": pause_work_queue,
    "resume-work-queue": resume_work_queue,
}
"""Registered over the native executors of the same types (they fall back to them)."""
