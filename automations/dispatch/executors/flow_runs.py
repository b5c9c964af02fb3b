"""cancel-flow-run and change-flow-run-state, through the runtime's ``FlowRunsPort``.

The flow run is always inferred (reference 5.2): ``triggering_labels['prefect.resource.id']``
first (so a proactive trigger with ``for_each: [prefect.resource.id]`` works without an event),
then the first ``prefect.flow-run.<uuid>`` resource of the triggering event.
"""

from __future__ import annotations

from uuid import UUID

from actions.models import CancelFlowRun, ChangeFlowRunState
from actions.outcome import PermanentError, Reason
from automations.dispatch.invocation import infer_id
from automations.dispatch.ports import ActionContext, ActionResult, FlowRunsPort
from automations.errors import NotFound

FLOW_RUN_KIND = "prefect.flow-run"


def _port(ctx: ActionContext) -> FlowRunsPort:
    if ctx.ports.flow_runs is None:
        raise PermanentError(Reason.UNSUPPORTED, "flow runs are not available here")
    return ctx.ports.flow_runs


def target_flow_run(ctx: ActionContext) -> UUID:
    found = infer_id(ctx.triggering_event, FLOW_RUN_KIND, ctx.labels)
    if found is None:
        raise PermanentError(Reason.MISSING_TARGET, "No flow run could be inferred")
    return found


async def _set_state(ctx: ActionContext, state: str, name: str | None, message: str,
                     force: bool) -> ActionResult:
    port = _port(ctx)
    run_id = target_flow_run(ctx)
    try:
        if await port.get(run_id) is None:
            raise NotFound(f"flow run {run_id} does not exist")
        run = await port.set_state(run_id, state, name, message, force)
    except NotFound as exc:
        raise PermanentError(Reason.NOT_FOUND, str(exc)) from None
    related = {"prefect.resource.id": f"{FLOW_RUN_KIND}.{run_id}",
               "prefect.resource.role": "target", "prefect.resource.name": str(run.get("name"))}
    return ActionResult(
        details={"flow_run_id": str(run_id), "state_type": run.get("state_type"),
                 "state_name": run.get("state_name")},
        related=[related],
    )


async def cancel_flow_run(action: CancelFlowRun, ctx: ActionContext) -> ActionResult:
    message = f"Cancelled by Automation {ctx.automation.id}"
    return await _set_state(ctx, "CANCELLED", None, message, False)


async def change_flow_run_state(action: ChangeFlowRunState, ctx: ActionContext) -> ActionResult:
    message = action.message or f"State changed by Automation {ctx.automation.id}"
    return await _set_state(ctx, action.state, action.name, message, action.force)
