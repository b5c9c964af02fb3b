"""Action definitions: a discriminated union on ``type``, Prefect 3 JSON compatible.

Models only (no I/O). Executors live in ``actions/executors``; this is what files and the
store hold. Prefect's ``block_document_id`` is accepted as a reference to a stored block.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

Source = Literal["selected", "inferred"]


class _ActionBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def describe(self) -> str:
        """A short human summary for tables."""
        return str(getattr(self, "type", "action"))


class _Sourced(_ActionBase):
    """Actions that target an object either explicitly (selected) or from the event (inferred)."""

    source: Source = "selected"
    _target_field: str = ""

    def _check_source(self, value: Any, field: str, *, also: Any = None) -> None:
        given = value is not None or also is not None
        if self.source == "selected" and not given:
            raise ValueError(f"{field} is required when source is 'selected'")
        if self.source == "inferred" and given:
            raise ValueError(f"{field} is not allowed when source is 'inferred'")


class _PrefectBacked(BaseModel):
    """Actions a Prefect server can carry out: ``prefect_api_url`` sends this one to that
    server (credentials may ride in the URL as ``user:pass@``) instead of the configured one."""

    prefect_api_url: str | None = Field(
        None, description="Act on this Prefect server (default: AUTOMATIONS_PREFECT_API_URL; "
        "neither: this engine's runtime).", exclude_if=lambda value: value is None)


class DoNothing(_ActionBase):
    type: Literal["do-nothing"] = "do-nothing"


class SendNotification(_ActionBase):
    """Notify through Apprise: inline ``urls``, a stored ``block`` name, or Prefect's
    ``block_document_id``."""

    type: Literal["send-notification"] = "send-notification"
    subject: str = "Prefect automated notification"
    body: str
    urls: list[str] | None = None
    block: str | None = None
    block_document_id: UUID | str | None = None
    cooldown_seconds: float | None = Field(
        None, ge=0, description="At most one notification per target per this many seconds."
    )
    retry_on_timeout: bool = Field(
        False, description="Send again after a timed-out send (at least once: the receiver may "
        "get it twice). Off: a timed-out send may have been delivered, so it is reported failed "
        "and never sent again (at most once)."
    )

    @model_validator(mode="after")
    def _one_target(self) -> SendNotification:
        given = [n for n in ("urls", "block", "block_document_id") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one target: 'urls', 'block' or 'block_document_id'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class CallWebhook(_ActionBase):
    type: Literal["call-webhook"] = "call-webhook"
    url: str | None = None
    block: str | None = None
    block_document_id: UUID | str | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    payload: dict[str, Any] | str = ""
    timeout_seconds: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> CallWebhook:
        given = [n for n in ("url", "block", "block_document_id") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one target: 'url', 'block' or 'block_document_id'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class RunDeployment(_Sourced, _PrefectBacked):
    type: Literal["run-deployment"] = "run-deployment"
    deployment_id: UUID | None = None
    deployment: str | None = Field(None, description="Deployment name (instead of its id).")
    parameters: dict[str, Any] | None = None
    job_variables: dict[str, Any] | None = None
    schedule_after: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _target(self) -> RunDeployment:
        self._check_source(self.deployment_id, "deployment_id (or deployment)",
                           also=self.deployment)
        return self


class PauseDeployment(_Sourced, _PrefectBacked):
    type: Literal["pause-deployment"] = "pause-deployment"
    deployment_id: UUID | None = None
    deployment: str | None = None

    @model_validator(mode="after")
    def _target(self) -> PauseDeployment:
        self._check_source(self.deployment_id, "deployment_id (or deployment)",
                           also=self.deployment)
        return self


class ResumeDeployment(_Sourced, _PrefectBacked):
    type: Literal["resume-deployment"] = "resume-deployment"
    deployment_id: UUID | None = None
    deployment: str | None = None

    @model_validator(mode="after")
    def _target(self) -> ResumeDeployment:
        self._check_source(self.deployment_id, "deployment_id (or deployment)",
                           also=self.deployment)
        return self


class PauseAutomation(_Sourced):
    type: Literal["pause-automation"] = "pause-automation"
    automation_id: UUID | None = None
    automation: str | None = Field(
        None, min_length=1, description="Automation name (instead of its id), resolved when the "
        "action runs.")

    @model_validator(mode="after")
    def _target(self) -> PauseAutomation:
        self._check_source(self.automation_id, "automation_id (or automation)",
                           also=self.automation)
        return self


class ResumeAutomation(_Sourced):
    type: Literal["resume-automation"] = "resume-automation"
    automation_id: UUID | None = None
    automation: str | None = Field(
        None, min_length=1, description="Automation name (instead of its id), resolved when the "
        "action runs.")

    @model_validator(mode="after")
    def _target(self) -> ResumeAutomation:
        self._check_source(self.automation_id, "automation_id (or automation)",
                           also=self.automation)
        return self


class CancelFlowRun(_ActionBase, _PrefectBacked):
    type: Literal["cancel-flow-run"] = "cancel-flow-run"


StateType = Literal[
    "SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED",
    "PAUSED", "CANCELLING",
]


class ChangeFlowRunState(_ActionBase, _PrefectBacked):
    type: Literal["change-flow-run-state"] = "change-flow-run-state"
    state: StateType
    name: str | None = None
    message: str | None = None
    force: bool = False


class SuspendFlowRun(_ActionBase, _PrefectBacked):
    """Prefect only: the inferred flow run to ``Suspended`` (PAUSED) for an hour."""

    type: Literal["suspend-flow-run"] = "suspend-flow-run"


class ResumeFlowRun(_ActionBase, _PrefectBacked):
    """Prefect only: resume the inferred paused or suspended flow run."""

    type: Literal["resume-flow-run"] = "resume-flow-run"


class _WorkPoolAction(_Sourced, _PrefectBacked):
    work_pool_id: UUID | None = None

    @model_validator(mode="after")
    def _target(self) -> _WorkPoolAction:
        self._check_source(self.work_pool_id, "work_pool_id")
        return self


class PauseWorkPool(_WorkPoolAction):
    type: Literal["pause-work-pool"] = "pause-work-pool"


class ResumeWorkPool(_WorkPoolAction):
    type: Literal["resume-work-pool"] = "resume-work-pool"


class _WorkQueueAction(_Sourced, _PrefectBacked):
    work_queue_id: UUID | None = None

    @model_validator(mode="after")
    def _target(self) -> _WorkQueueAction:
        self._check_source(self.work_queue_id, "work_queue_id")
        return self


class PauseWorkQueue(_WorkQueueAction):
    type: Literal["pause-work-queue"] = "pause-work-queue"


class ResumeWorkQueue(_WorkQueueAction):
    type: Literal["resume-work-queue"] = "resume-work-queue"


Action = Annotated[
    DoNothing
    | SendNotification
    | CallWebhook
    | RunDeployment
    | PauseDeployment
    | ResumeDeployment
    | PauseAutomation
    | ResumeAutomation
    | CancelFlowRun
    | ChangeFlowRunState
    | SuspendFlowRun
    | ResumeFlowRun
    | PauseWorkPool
    | ResumeWorkPool
    | PauseWorkQueue
    | ResumeWorkQueue,
    Field(discriminator="type"),
]

ACTION_TYPES: tuple[type[BaseModel], ...] = (
    DoNothing, SendNotification, CallWebhook, RunDeployment, PauseDeployment, ResumeDeployment,
    PauseAutomation, ResumeAutomation, CancelFlowRun, ChangeFlowRunState, SuspendFlowRun,
    ResumeFlowRun, PauseWorkPool, ResumeWorkPool, PauseWorkQueue, ResumeWorkQueue,
)
