"""The explicit map from action ``type`` to its executor (no import-path plugins).

Adding an action type is one small module with ``async def execute(action, ctx) ->
ActionResult`` plus one line here. An executor raises ``actions.outcome.TransientError`` or
``PermanentError`` on failure; anything else it raises is treated as a transient bug
(``Reason.INTERNAL``). It never retries or sleeps, and never touches Redis: it reaches
everything through ``ctx`` (the ports, the ledger, the shared clients). The action's own
idempotency (at most one effect per ``ctx.idempotency_key``) is the dispatcher's pipeline
(``automations/dispatch/attempt.py``); an executor with several effects per action records
each one in ``ctx.ledger`` (send-notification's targets).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from automations.dispatch.executors import (
    automations,
    deployments,
    flow_runs,
    notify,
    prefect,
    webhook,
)
from automations.dispatch.ports import ActionContext, ActionResult

Executor = Callable[[Any, ActionContext], Awaitable[ActionResult]]
"""``execute(action, ctx)``; the action is the model of the type it is registered under."""

EXECUTORS: dict[str, Executor] = {
    "do-nothing": automations.do_nothing,
    "pause-automation": automations.pause_automation,
    "resume-automation": automations.resume_automation,
    "send-notification": notify.execute,
    "call-webhook": webhook.execute,
    "run-deployment": deployments.run_deployment,
    "pause-deployment": deployments.pause_deployment,
    "resume-deployment": deployments.resume_deployment,
    "cancel-flow-run": flow_runs.cancel_flow_run,
    "change-flow-run-state": flow_runs.change_flow_run_state,
}
EXECUTORS.update(prefect.EXECUTORS)  # on a Prefect server when one is configured (docs/prefect.md)
