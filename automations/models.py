"""The ``Automation``: a trigger and the actions it runs (reference section 4.1)."""

from __future__ import annotations

from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from actions.models import Action
from triggers.models import Trigger


class Automation(BaseModel):
    """Unknown top-level keys are refused; Prefect's server-assigned ``created``/``updated``
    are accepted and dropped so ``prefect automation inspect --json`` output loads."""

    model_config = ConfigDict(extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)
    trigger: Trigger
    actions: list[Action]
    actions_on_trigger: list[Action] = Field(default_factory=list)
    actions_on_resolve: list[Action] = Field(default_factory=list)
