"""Prefect as the action backend: the deployment, flow-run, work-pool and work-queue actions
carried out on a Prefect 3 server over its REST API (docs/prefect.md).

``PrefectDeployments`` and ``PrefectFlowRuns`` implement the executors' ports
(``automations.dispatch.ports``), so run-/pause-/resume-deployment and the template loaders
(``deployment``, ``flow_run``) work unchanged against Prefect; the actions the runtime has no
equivalent for take the client itself. Every Prefect failure becomes a classified action error
whose message and details carry Prefect's own error detail, so the failed event shows it.
A flow run is created with our idempotency key as Prefect's ``idempotency_key`` (a repeat
returns the first run) and the automation as its creator (Prefect's provenance headers).
``set_state`` is judged by the response's ``status`` (ACCEPT), never by the HTTP code.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn
from uuid import UUID

from actions.outcome import PermanentError, Reason, TransientError, classify_http
from automations.events import utcnow
from automations.prefect.client import PrefectClient, PrefectError

SUSPEND_TIMEOUT = timedelta(hours=1)  # Prefect's suspend-flow-run default


def action_error(exc: PrefectError) -> NoReturn:
    """Raise ``exc`` as the classified action error (transient when Prefect was unreachable or
    answered 5xx/429), with Prefect's detail in its message and details."""
    details = {"prefect_status": exc.status, "prefect_detail": exc.detail}
    if exc.status is None:
        raise TransientError(Reason.CONNECTION, str(exc), details=details) from None
    classified = classify_http(exc.status, exc.headers, what="Prefect")
    reason = classified.reason if classified is not None else Reason.HTTP_CLIENT_ERROR
    if classified is not None and classified.transient:
        raise TransientError(reason, str(exc), getattr(classified, "retry_after", None),
                             details=details) from None
    raise PermanentError(reason, str(exc), details=details) from None


async def _call(client: PrefectClient, method: str, path: str, *, json: Any = None,
                headers: Mapping[str, str] | None = None, missing_ok: bool = False) -> Any:
    """The JSON body (None for an empty one, or for a 404 when ``missing_ok``)."""
    try:
        response = await client.request(method, path, json=json, headers=headers,
                                         ok=(404,) if missing_ok else ())
    except PrefectError as exc:
        action_error(exc)
    if response.status_code == 404 or not response.content:
        return None
    return response.json()


def creator_headers(creator: Mapping[str, str] | None) -> dict[str, str]:
    """Prefect's provenance headers: the run's ``created_by`` and its ``creator`` resource."""
    if not creator or creator.get("kind") != "automation":
        return {}
    name = base64.b64encode(str(creator.get("name", "")).encode()).decode()
    return {"Prefect-Automation-ID": str(creator["id"]), "Prefect-Automation-Name": name}


def _record(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """A deployment as the executors read it. Its parameter schema is left out: Prefect
    checks parameters itself (409 with its detail), with its own coercion rules."""
    return {k: v for k, v in deployment.items() if k != "parameter_openapi_schema"}


class PrefectDeployments:
    """``DeploymentsPort`` on a Prefect server. Names are ``flow/deployment`` (Prefect's);
    a bare name is looked up with the deployments filter and must be unique."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"PrefectDeployments({self.client.api_url!r})"

    async def get(self, deployment_id: UUID, /) -> Mapping[str, Any] | None:
        found = await _call(self.client, "GET", f"/deployments/{deployment_id}",
                            missing_ok=True)
        return None if found is None else _record(found)

    async def by_name(self, name: str, /) -> Mapping[str, Any] | None:
        if "/" in name:
            flow, _, deployment = name.partition("/")
            found = await _call(self.client, "GET", f"/deployments/name/{flow}/{deployment}",
                                missing_ok=True)
            return None if found is None else _record(found)
        body = {"deployments": {"name": {"any_": [name]}}, "limit": 2}
        matches = await _call(self.client, "POST", "/deployments/filter", json=body) or []
        if len(matches) > 1:
            raise PermanentError(Reason.VALIDATION, f"several Prefect deployments are named "
                                 f"{name!r}: name it as 'flow/deployment'")
        return _record(matches[0]) if matches else None

    async def create_flow_run(
        self, deployment_id: UUID, parameters: Mapping[str, Any] | None,
        job_variables: Mapping[str, Any] | None, scheduled_start: datetime,
        idempotency_key: str, creator: Mapping[str, str] | None = None, /,
    ) -> Mapping[str, Any]:
        body: dict[str, Any] = {"parameters": dict(parameters or {}),
                                "idempotency_key": idempotency_key}
        if job_variables:
            body["job_variables"] = dict(job_variables)
        if scheduled_start > utcnow() + timedelta(seconds=1):
            body["state"] = {"type": "SCHEDULED", "name": "Scheduled", "state_details": {
                "scheduled_time": scheduled_start.isoformat()}}
        run = await _call(self.client, "POST", f"/deployments/{deployment_id}/create_flow_run",
                          json=body, headers=creator_headers(creator))
        return dict(run)

    async def set_paused(self, deployment_id: UUID, paused: bool, /) -> object:
        """``PATCH paused``, which Prefect announces as ``prefect.deployment.updated``."""
        return await _call(self.client, "PATCH", f"/deployments/{deployment_id}",
                           json={"paused": paused})


class PrefectFlowRuns:
    """``FlowRunsPort`` on a Prefect server, plus suspend and resume."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"PrefectFlowRuns({self.client.api_url!r})"

    async def get(self, flow_run_id: UUID, /) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = await _call(
            self.client, "GET", f"/flow_runs/{flow_run_id}", missing_ok=True)
        return found

    async def propose(self, flow_run_id: UUID, state: Mapping[str, Any], force: bool,
                      *, cancelling: bool = False) -> dict[str, Any]:
        """``set_state``; the resulting state when Prefect ACCEPTed (or, for a cancel, when
        the run ended Cancelled anyway: a REJECT of a run with nothing to stop)."""
        reply = await _call(self.client, "POST", f"/flow_runs/{flow_run_id}/set_state",
                            json={"state": dict(state), "force": force})
        if reply is None:
            raise PermanentError(Reason.NOT_FOUND, f"flow run {flow_run_id} does not exist")
        status = str(reply.get("status"))
        result: dict[str, Any] = dict(reply.get("state") or {})
        if status == "ACCEPT" or (cancelling and result.get("type") == "CANCELLED"):
            return result
        detail = reply.get("details") or {}
        raise PermanentError(Reason.VALIDATION, f"Prefect answered {status} to "
                             f"{state.get('type')}: {detail.get('reason') or detail}",
                             details={"prefect_status": status, "prefect_detail": detail})

    async def set_state(self, flow_run_id: UUID, state: str, name: str | None,
                        message: str | None, force: bool, /) -> Mapping[str, Any]:
        """The port's form (change-flow-run-state); the run with the resulting state."""
        proposed = {"type": state, "name": name, "message": message}
        result = await self.propose(flow_run_id, {k: v for k, v in proposed.items() if v},
                                    force)
        run = dict(await self.get(flow_run_id) or {"id": str(flow_run_id)})
        return {**run, "state_type": result.get("type"), "state_name": result.get("name")}

    async def suspend(self, flow_run_id: UUID, message: str) -> dict[str, Any]:
        details = {"pause_timeout": (utcnow() + SUSPEND_TIMEOUT).isoformat(),
                   "pause_reschedule": True}
        return await self.propose(flow_run_id, {"type": "PAUSED", "name": "Suspended",
                                                "message": message, "state_details": details},
                                  False)

    async def resume(self, flow_run_id: UUID) -> dict[str, Any]:
        reply = await _call(self.client, "POST", f"/flow_runs/{flow_run_id}/resume")
        if reply is None or reply.get("status") != "ACCEPT":
            status = (reply or {}).get("status")
            detail = (reply or {}).get("details") or {}
            raise PermanentError(Reason.VALIDATION, f"Prefect answered {status} to resuming "
                                 f"flow run {flow_run_id}: {detail.get('reason') or detail}",
                                 details={"prefect_status": status, "prefect_detail": detail})
        return dict(reply.get("state") or {})


async def work_pool(client: PrefectClient, work_pool_id: UUID) -> Mapping[str, Any]:
    body = {"work_pools": {"id": {"any_": [str(work_pool_id)]}}, "limit": 1}
    found = await _call(client, "POST", "/work_pools/filter", json=body) or []
    if not found:
        raise PermanentError(Reason.NOT_FOUND, f"Prefect work pool {work_pool_id} does not exist")
    pool: Mapping[str, Any] = found[0]
    return pool


async def set_work_pool_paused(client: PrefectClient, name: str, paused: bool) -> None:
    await _call(client, "PATCH", f"/work_pools/{name}", json={"is_paused": paused})


async def work_queue(client: PrefectClient, work_queue_id: UUID) -> Mapping[str, Any]:
    found = await _call(client, "GET", f"/work_queues/{work_queue_id}", missing_ok=True)
    if found is None:
        raise PermanentError(Reason.NOT_FOUND,
                             f"Prefect work queue {work_queue_id} does not exist")
    queue: Mapping[str, Any] = found
    return queue


async def set_work_queue_paused(client: PrefectClient, work_queue_id: UUID,
                                paused: bool) -> None:
    await _call(client, "PATCH", f"/work_queues/{work_queue_id}", json={"is_paused": paused})
