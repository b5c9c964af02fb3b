"""The dispatcher's automations: validated once per stored version, not once per batch.

Validating an automation (pydantic, triggers, the loop guard) is the expensive part of looking
it up; reading its JSON is not. So each lookup reads the current JSON of the automations it
needs in one HMGET and validates only those whose JSON differs from what was validated
before. Keyed by the stored JSON rather than by following the store's change log: nothing to
tail or resync after the log is trimmed, and a lookup never answers with a stale version.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from automations.models import Automation
from automations.store import AutomationStore
from automations.store_parse import InvalidStoredAutomation, parse_stored

Found = Automation | InvalidStoredAutomation | None
"""A lookup's answer for one id: the automation, why its stored JSON is no longer valid, or
None when nothing is stored under that id."""


class AutomationCache:
    """Validated automations by id, each with the JSON it was validated from."""

    def __init__(self, store: AutomationStore) -> None:
        self._store = store
        self._validated: dict[UUID, tuple[bytes, Automation | InvalidStoredAutomation]] = {}

    async def lookup(self, automation_ids: Iterable[UUID]) -> dict[UUID, Found]:
        """The current version of each automation, in one round trip."""
        wanted = list(dict.fromkeys(automation_ids))
        found: dict[UUID, Found] = {}
        for automation_id, raw in zip(wanted, await self._store.stored_json(wanted),
                                      strict=True):
            if raw is None:
                self._validated.pop(automation_id, None)
                found[automation_id] = None
                continue
            cached = self._validated.get(automation_id)
            if cached is None or cached[0] != raw:
                cached = raw, _validate(raw, automation_id)
                self._validated[automation_id] = cached
            found[automation_id] = cached[1]
        return found


def _validate(raw: bytes, automation_id: UUID) -> Automation | InvalidStoredAutomation:
    try:
        return parse_stored(raw, str(automation_id))
    except InvalidStoredAutomation as exc:
        return exc
