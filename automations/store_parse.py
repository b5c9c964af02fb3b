"""A stored automation's JSON back into an ``Automation``, or a clear refusal.

Its own module because the store's reads, the apply planner (``automations.store_plan``) and
the dispatcher's automation cache all parse stored JSON the same way: an entry that no longer
validates is ``InvalidStoredAutomation``, not a missing automation.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from automations.errors import AutomationsError
from automations.field_errors import validation_errors
from automations.models import Automation

# Logged under the store's name: it is the store's reads that skip an invalid entry.
log = logging.getLogger("automations.store")


class InvalidStoredAutomation(AutomationsError):
    """An automation is stored but its JSON no longer validates; re-applying it fixes that."""

    def __init__(self, automation_id: str, problems: str) -> None:
        self.automation_id = automation_id
        self.problems = problems
        super().__init__(f"automation {automation_id} is stored but no longer valid: {problems}")


def parse_stored(raw: bytes | str, automation_id: str) -> Automation:
    """Validate one stored automation (raises ``InvalidStoredAutomation``)."""
    try:
        return Automation.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(str(error) for error in validation_errors(exc))
        raise InvalidStoredAutomation(automation_id, problems) from None


def parse_or_skip(raw: bytes | str, automation_id: str) -> Automation | None:
    """The automation, or None (logged) where an invalid one is skipped."""
    try:
        return parse_stored(raw, automation_id)
    except InvalidStoredAutomation as exc:
        log.error("%s (skipped)", exc)
        return None
