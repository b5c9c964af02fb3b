"""The ``Automation``: a trigger and the actions it runs (reference section 4.1).

Prefect compatibility: ``prefect automation inspect --json`` output loads unchanged. Its
server-assigned ``created``/``updated`` timestamps are accepted and dropped (they are not
ours to keep), and the create-only ``owner_resource`` is accepted and kept (only written out
when set). Any other unknown top-level key is refused, as Prefect's create API does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from actions.models import Action
from automations.loop_guard import find_loop
from triggers.models import Trigger

LOOP_ERROR = "automation_loop"


class Automation(BaseModel):
    """A named trigger with the actions it runs; refused if it would re-trigger itself
    (``automations.loop_guard``)."""

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
    owner_resource: str | None = Field(
        None,
        description="Prefect's create-only owner (e.g. prefect.deployment.<id>); kept as given.",
        exclude_if=lambda value: value is None,
    )
    created: datetime | None = Field(
        None, exclude=True, description="Prefect's server timestamp: accepted and ignored."
    )
    updated: datetime | None = Field(
        None, exclude=True, description="Prefect's server timestamp: accepted and ignored."
    )

    @model_validator(mode="after")
    def _loop_guard(self) -> Automation:
        problem = self.loop_problem()
        if problem is not None:
            raise PydanticCustomError(LOOP_ERROR, "{message}", problem)
        return self

    def loop_problem(self) -> dict[str, Any] | None:
        """``{"path", "message"}`` when this (enabled) automation would re-trigger itself."""
        if not self.enabled:
            return None
        loop = find_loop(self.id, self.name, self.trigger,
                         [*self.actions, *self.actions_on_trigger])
        return None if loop is None else {"path": loop.path, "message": loop.message}

    def all_actions(self) -> list[Action]:
        """``actions``, then ``actions_on_trigger``, then ``actions_on_resolve``."""
        return [*self.actions, *self.actions_on_trigger, *self.actions_on_resolve]
