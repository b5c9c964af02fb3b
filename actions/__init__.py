"""Action models (re-exported); executors and the dispatcher live in submodules."""

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
