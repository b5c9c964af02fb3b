"""Planning an ``apply``: what it creates, updates, leaves unchanged or deletes, and whether
it may (unique names and ids, every validator and template run again). Pure, no Redis: the
store reads, plans here, then writes the plan atomically or plans again.

An update keeps the automation's id; when its trigger is unchanged (compared as JSON without
trigger ids) the stored trigger ids are kept too, so the engine keeps its window state; a
changed trigger resets it (``trigger_changed``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from actions.templating import TemplateEngine
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.field_errors import template_errors, validation_errors
from automations.models import Automation
from automations.store_parse import parse_or_skip
from triggers.models import Trigger


@dataclass(slots=True)
class ApplyResult:
    """What ``apply`` did (or, with ``dry_run``, would do), by automation name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    trigger_reset: list[str] = field(default_factory=list)
    automations: list[Automation] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def summary(self) -> str:
        counts = (f"{len(self.created)} created, {len(self.updated)} updated, "
                  f"{len(self.unchanged)} unchanged, {len(self.deleted)} deleted")
        return f"{counts} (dry run: nothing written)" if self.dry_run else counts


@dataclass(slots=True)
class _Plan:
    result: ApplyResult
    upserts: list[tuple[Automation, bool, str | None]] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)


def trigger_shape(trigger: Trigger) -> dict[str, Any]:
    """The trigger as JSON without its ids: what decides whether window state survives."""
    return _without_ids(trigger.model_dump(mode="json"))


def _without_ids(data: dict[str, Any]) -> dict[str, Any]:
    shape = {k: v for k, v in data.items() if k != "id"}
    if isinstance(shape.get("triggers"), list):
        shape["triggers"] = [_without_ids(child) for child in shape["triggers"]]
    return shape


def plan_apply(
    automations: Sequence[Automation],
    names: Mapping[str, str],
    stored: Mapping[str, str],
    *,
    prune: bool,
) -> _Plan:
    plan = _Plan(ApplyResult())
    errors: list[InvalidAutomation] = []
    owners = {automation_id: name for name, automation_id in names.items()}
    for automation in automations:
        try:
            _plan_one(plan, automation, names, stored, owners)
        except InvalidAutomations as exc:
            errors.extend(exc.errors)
        except InvalidAutomation as exc:
            errors.append(exc)
    templates = TemplateEngine()
    for automation in plan.result.automations:
        if automation.name not in plan.result.unchanged:
            errors.extend(template_errors(automation, prefix=repr(automation.name),
                                          engine=templates))
    if errors:
        raise InvalidAutomations(errors)
    if prune:
        wanted = {a.name for a in automations}
        for name, automation_id in sorted(names.items()):
            if name not in wanted:
                plan.deletes.append((automation_id, name))
                plan.result.deleted.append(name)
    return plan


def _plan_one(
    plan: _Plan,
    automation: Automation,
    names: Mapping[str, str],
    stored: Mapping[str, str],
    owners: Mapping[str, str],
) -> None:
    result, name = plan.result, automation.name
    existing_id = names.get(name)
    if existing_id is None:
        taken_by = owners.get(str(automation.id))
        if "id" in automation.model_fields_set and taken_by is not None:
            raise InvalidAutomation(
                f"id {automation.id} already belongs to automation {taken_by!r}; remove "
                "the id to create a new automation", field_path=f"{name!r}.id")
        final = revalidate(automation)
        plan.upserts.append((final, True, None))
        result.created.append(name)
        result.automations.append(final)
        return
    current = parse_or_skip(stored[existing_id], existing_id) if existing_id in stored else None
    same_trigger = current is not None and (
        trigger_shape(current.trigger) == trigger_shape(automation.trigger))
    trigger = current.trigger if current is not None and same_trigger else automation.trigger
    final = revalidate(automation, id=UUID(existing_id), trigger=trigger)
    result.automations.append(final)
    if current is not None and current.model_dump(mode="json") == final.model_dump(mode="json"):
        result.unchanged.append(name)
        return
    plan.upserts.append((final, not same_trigger, None))
    result.updated.append(name)
    if not same_trigger:
        result.trigger_reset.append(name)


def revalidate(automation: Automation, **update: Any) -> Automation:
    """``automation`` with ``update`` applied and every validator (the loop guard: the id and
    name are part of the rule) run again; refusals become ``InvalidAutomation``."""
    data = automation.model_dump(mode="json")
    data.update({k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v
                 for k, v in update.items()})
    if "id" in update:
        data["id"] = str(update["id"])
    try:
        return Automation.model_validate(data)
    except ValidationError as exc:
        raise InvalidAutomations(
            validation_errors(exc, prefix=repr(automation.name))) from None


def check_unique(automations: Sequence[Automation]) -> None:
    errors: list[InvalidAutomation] = []
    seen_names: set[str] = set()
    seen_ids: set[UUID] = set()
    for automation in automations:
        if automation.name in seen_names:
            errors.append(InvalidAutomation(f"duplicate name {automation.name!r}",
                                            field_path=f"{automation.name!r}.name"))
        seen_names.add(automation.name)
        if "id" in automation.model_fields_set:
            if automation.id in seen_ids:
                errors.append(InvalidAutomation(f"duplicate id {automation.id}",
                                                field_path=f"{automation.name!r}.id"))
            seen_ids.add(automation.id)
    if errors:
        raise InvalidAutomations(errors)
