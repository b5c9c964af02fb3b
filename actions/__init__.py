"""Action models (re-exported). Pure: running actions is ``automations.dispatch``."""

from actions.models import (
    Action,
    CallWebhook,
    CancelFlowRun,
    ChangeFlowRunState,
    DoNothing,
    PauseAutomation,
    PauseDeployment,
    ResumeAutomation,
    ResumeDeployment,
    RunDeployment,
    SendNotification,
)

__all__ = [
    "Action",
    "CallWebhook",
    "CancelFlowRun",
    "ChangeFlowRunState",
    "DoNothing",
    "PauseAutomation",
    "PauseDeployment",
    "ResumeAutomation",
    "ResumeDeployment",
    "RunDeployment",
    "SendNotification",
]
