"""The console's write side: each mutation calls what the CLI calls (``store.apply`` after the
loader's validation, ``set_enabled``, the dead-letter re-drive, a deployment run) and returns
JSON. Validation errors are ``InvalidAutomations``: the API answers 422 with every error."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from actions.targets import KnownBlocks
from automations.action_targets import known_blocks
from automations.cli.automations_cmd import error_json
from automations.console.context import Console
from automations.console.queries import Json, find_automation, summary
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.insight.dead_letters import dead_keys, find, purge, purge_all, redrive
from automations.insight.runs import run_json
from automations.loader import parse_document
from automations.runtime.deployment_files import check_run_parameters
from automations.runtime.flow_runs import build_flow_run
from triggers.models import never_fires

SOURCE = "<request>"
"""The ``file`` of an error in a request body (the CLI names the file there)."""


def errors_json(exc: InvalidAutomation) -> list[Json]:
    errors = exc.errors if isinstance(exc, InvalidAutomations) else [exc]
    return [error_json(e) for e in errors]


async def apply_document(c: Console, document: Any, *, name: str | None = None,
                         dry_run: bool = False) -> Json:
    """Validate ``document`` exactly as ``automations apply`` validates a file (loader, block
    names from Redis, then the store's own checks) and apply it; with ``name`` (PUT) it must
    hold that one automation."""
    known = await known_blocks(c.redis, c.keys)

    def check_blocks(_: Collection[str]) -> KnownBlocks:
        return known

    automations = parse_document(document, file=SOURCE, check_blocks=check_blocks)
    if name is not None and [a.name for a in automations] != [name]:
        given = ", ".join(repr(a.name) for a in automations) or "none"
        raise InvalidAutomations([InvalidAutomation(
            f"the body must hold one automation named {name!r} (got {given})", file=SOURCE,
            field_path="name")])
    result = await c.store.apply(automations, dry_run=dry_run)
    await c.automations.refresh()
    return {"created": result.created, "updated": result.updated,
            "unchanged": result.unchanged, "deleted": result.deleted,
            "trigger_reset": result.trigger_reset, "dry_run": result.dry_run,
            "warnings": [{"automation": a.name, "path": "trigger", "message": w}
                         for a in automations if (w := never_fires(a.trigger))]}


async def set_enabled(c: Console, name_or_id: str, enabled: bool) -> Json:
    current = await find_automation(c, name_or_id)
    updated = await c.store.set_enabled(current.id, enabled)
    await c.automations.refresh()
    return {**summary(updated, None, 0), "changed": current.enabled != enabled}


async def delete_automation(c: Console, name_or_id: str) -> Json:
    target = await find_automation(c, name_or_id)
    deleted = await c.store.delete(str(target.id))
    await c.automations.refresh()
    return {"automation": deleted.name, "id": str(deleted.id), "deleted": True}


async def retry_letter(c: Console, stream: str, entry_id: str) -> Json:
    letter = await find(c.redis, c.keys, entry_id, stream)
    outcome = await redrive(c.redis, c.keys, letter, now=time.time())
    return {"id": entry_id, "stream": stream, "retried": True, "outcome": outcome}


async def purge_letter(c: Console, stream: str, entry_id: str) -> Json:
    letter = await find(c.redis, c.keys, entry_id, stream)
    return {"id": entry_id, "stream": stream, "purged": await purge(c.redis, [letter])}


async def purge_stream(c: Console, stream: str) -> Json:
    purged = sum([await purge_all(c.redis, key) for key in dead_keys(c.keys, stream)])
    return {"stream": stream, "purged": purged}


async def run_deployment(c: Console, name_or_id: str, parameters: dict[str, Any]) -> Json:
    """A flow run now (parameters checked against the flow's schema first:
    ``InvalidDeployment``)."""
    dep = await c.deployments.resolve(name_or_id)
    note = check_run_parameters(dep, parameters)
    flow_run = build_flow_run(dep, parameters, message="Created from the web console")
    await c.runs.create(flow_run)
    return {**run_json(flow_run), "note": note}


async def set_paused(c: Console, name_or_id: str, paused: bool) -> Json:
    dep = await c.deployments.resolve(name_or_id)
    changed = dep.paused != paused
    if changed:
        dep = await c.deployments.set_paused(dep.id, paused)
    return {"deployment": dep.name, "id": str(dep.id), "paused": dep.paused,
            "changed": changed}
