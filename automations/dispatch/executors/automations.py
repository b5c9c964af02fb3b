"""do-nothing and pause-/resume-automation (``source: selected | inferred``).

A selected automation is named by ``automation_id`` or by ``automation`` (its name, looked up
when the action runs: a name that matches nothing fails the action at once, not after retries).
"""

from __future__ import annotations

from uuid import UUID

from actions.models import DoNothing, PauseAutomation, ResumeAutomation
from actions.outcome import PermanentError, Reason
from automations.dispatch.invocation import infer_id
from automations.dispatch.ports import ActionContext, ActionResult
from automations.errors import AutomationsError, NotFound

AUTOMATION_KIND = "prefect.automation"


async def do_nothing(action: DoNothing, ctx: ActionContext) -> ActionResult:
    """Nothing but the action events (useful to test an automation's trigger)."""
    return ActionResult()


async def pause_automation(action: PauseAutomation, ctx: ActionContext) -> ActionResult:
    selected = await _selected(action.automation_id, action.automation, ctx)
    return await _set_enabled(action.source, selected, False, ctx)


async def resume_automation(action: ResumeAutomation, ctx: ActionContext) -> ActionResult:
    selected = await _selected(action.automation_id, action.automation, ctx)
    return await _set_enabled(action.source, selected, True, ctx)


async def _selected(automation_id: UUID | None, name: str | None,
                    ctx: ActionContext) -> UUID | None:
    """The id given, else the id of the automation called ``name`` (None: neither given)."""
    if automation_id is not None or name is None:
        return automation_id
    try:
        return (await ctx.ports.automations.by_name(name)).id
    except NotFound:
        raise PermanentError(Reason.NOT_FOUND, f"no automation named {name!r}") from None
    except AutomationsError as exc:  # stored but no longer valid
        raise PermanentError(Reason.VALIDATION, str(exc)) from None


def target_automation(source: str, selected: UUID | None, ctx: ActionContext) -> UUID:
    """The selected id, or the first ``prefect.automation.<uuid>`` of the triggering event."""
    if source == "selected" and selected is not None:
        return selected
    if ctx.triggering_event is None:
        raise PermanentError(Reason.MISSING_TARGET, "No event to infer the automation from")
    inferred = infer_id(ctx.triggering_event, AUTOMATION_KIND)
    if inferred is None:
        raise PermanentError(Reason.MISSING_TARGET, "No automation could be inferred")
    return inferred


async def _set_enabled(
    source: str, selected: UUID | None, enabled: bool, ctx: ActionContext
) -> ActionResult:
    automation_id = target_automation(source, selected, ctx)
    try:
        found = await ctx.ports.automations.get(automation_id)
        if found is None:
            raise NotFound(f"automation {automation_id} does not exist")
        await ctx.ports.automations.set_enabled(automation_id, enabled)
    except NotFound as exc:
        raise PermanentError(Reason.NOT_FOUND, str(exc)) from None
    except AutomationsError as exc:  # e.g. resuming would break the loop guard
        raise PermanentError(Reason.VALIDATION, str(exc)) from None
    related = {
        "prefect.resource.id": f"{AUTOMATION_KIND}.{automation_id}",
        "prefect.resource.role": "target",
        "prefect.resource.name": found.name,
    }
    return ActionResult(details={"automation_id": str(automation_id), "enabled": enabled},
                        related=[related])
