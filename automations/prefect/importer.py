"""Import a Prefect server's automations into the store, keyed by Prefect's ids.

Prefect's automation JSON is already our format (``automations.models``), so each one is
validated and applied as it is, by name with Prefect's id: a re-run updates or leaves them
unchanged. Block references (``block_document_id``) of send-notification and call-webhook are
resolved where the server lets us read the block with its secrets and the block holds a URL
the action can use (call-webhook: http(s); send-notification: one Apprise recognises, such as
a slack-webhook block's): the URL is stored as our block named by that id, which is how our
executors resolve ``block_document_id``. What could not be mapped is reported, never guessed.

``take_over`` disables each imported automation on Prefect's side (``PATCH enabled:false``), and
records first that we did it (``prefect:taken-over``): a later import, which then sees the
Prefect copy disabled, keeps ours as it is instead of copying the ``enabled: false`` echo.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from actions.outcome import ActionError
from automations.blocks import BlockStore
from automations.dispatch.notifiers import NotifierPool
from automations.errors import AutomationsError
from automations.events import utcnow
from automations.keys import Keys
from automations.models import Automation
from automations.prefect.client import PrefectClient, PrefectError
from automations.store import AutomationStore

ACTION_LISTS = ("actions", "actions_on_trigger", "actions_on_resolve")
BLOCK_ACTIONS = ("send-notification", "call-webhook")
URL_FIELDS = ("url", "webhook_url")


@dataclass(slots=True)
class ImportReport:
    """What one import did, per Prefect automation."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    taken_over: list[str] = field(default_factory=list)
    kept_enabled: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {name: list(getattr(self, name)) for name in self.__slots__}

    def lines(self) -> Iterator[str]:
        for name in self.__slots__:
            items = getattr(self, name)
            if items:
                yield f"{name.replace('_', ' ')} ({len(items)}):"
                for item in items:
                    yield f"  {item}"
        yield (f"{len(self.created)} created, {len(self.updated)} updated, "
               f"{len(self.unchanged)} unchanged, {len(self.refused)} refused")


def _label(raw: Mapping[str, Any]) -> str:
    return f"{raw.get('name')!r} ({raw.get('id')})"


def _block_url(document: Mapping[str, Any]) -> str | None:
    data = document.get("data")
    if not isinstance(data, Mapping):
        return None
    for name in URL_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    return None


def _block_type(document: Mapping[str, Any]) -> str:
    block_type = document.get("block_type")
    slug = block_type.get("slug") if isinstance(block_type, Mapping) else None
    return str(slug or document.get("block_type_name") or "unknown")


async def _usable(action_type: str, document: Mapping[str, Any], url: str | None,
                  notifiers: NotifierPool) -> str | None:
    """Why this action cannot use the block's URL in this engine, or None when it can."""
    kind = _block_type(document)
    if url is None:
        return f"a {kind} block holds no URL this engine can use"
    if action_type == "send-notification":
        try:
            await notifiers.aget(url)
        except ActionError:
            return f"Apprise does not recognise the URL of this {kind} block"
    return None


def _dropped(action_type: str, document: Mapping[str, Any]) -> str:
    """What a call-webhook loses: the block's method and headers, which Prefect would send."""
    data = document.get("data")
    if action_type != "call-webhook" or not isinstance(data, Mapping):
        return ""
    lost = []
    if str(data.get("method") or "POST").upper() != "POST":
        lost.append(f"method {data['method']}")
    if data.get("headers"):
        lost.append("headers")
    return f" (URL only: set its {' and '.join(lost)} on the action)" if lost else ""


def _store(block_id: str) -> str:
    return f"; store a URL for it with `automations blocks set {block_id} <url>`"


async def _map_blocks(client: PrefectClient, blocks: BlockStore, raw: Mapping[str, Any],
                      report: ImportReport, cache: dict[str, dict[str, Any]],
                      notifiers: NotifierPool) -> None:
    """Store, under its id, the URL of each block the automation's actions reference and can
    use here (call-webhook: an http(s) URL; send-notification: one Apprise recognises)."""
    for list_name in ACTION_LISTS:
        for i, action in enumerate(raw.get(list_name) or []):
            block_id, action_type = action.get("block_document_id"), action.get("type")
            if action_type not in BLOCK_ACTIONS or not block_id:
                continue
            where = f"{_label(raw)} {list_name}[{i}] {action_type} block {block_id}"
            if block_id not in cache:
                try:
                    cache[block_id] = await client.block_document_secrets(block_id)
                except PrefectError as exc:
                    report.unmapped.append(f"{where}: cannot read it ({exc}){_store(block_id)}")
                    continue
            document = cache[block_id]
            url = _block_url(document)
            why = await _usable(str(action_type), document, url, notifiers)
            if why is not None or url is None:
                report.unmapped.append(f"{where}: {why}{_store(block_id)}")
                continue
            await blocks.set(str(block_id), url)
            report.mapped.append(f"{where}: {_block_type(document)} block "
                                 f"{document.get('name')!r} stored as block {block_id}"
                                 f"{_dropped(str(action_type), document)}")


async def import_automations(client: PrefectClient, redis: aioredis.Redis, keys: Keys, *,
                             take_over: bool = False) -> ImportReport:
    """Copy every automation of the server into the store (module docstring)."""
    report = ImportReport()
    store, blocks = AutomationStore(redis, keys), BlockStore(redis, keys)
    taken: Mapping[Any, Any] = await redis.hgetall(keys.prefect_taken_over)
    cache: dict[str, dict[str, Any]] = {}
    notifiers = NotifierPool()
    for raw in await client.automations():
        label = _label(raw)
        body = dict(raw)
        if raw["id"].encode() in taken:  # we disabled it there: Prefect's `enabled` is our echo
            current = await store.get(raw["id"])
            body["enabled"] = current.enabled if current is not None else True
            report.kept_enabled.append(label)
        try:
            automation = Automation.model_validate(body)
            await _map_blocks(client, blocks, raw, report, cache, notifiers)
            result = await store.apply([automation])
        except (ValidationError, AutomationsError) as exc:
            report.refused.append(f"{label}: {exc}".replace("\n", " "))
            continue
        for kind in ("created", "updated", "unchanged"):
            if getattr(result, kind):
                getattr(report, kind).append(label)
        if take_over and raw.get("enabled"):
            await redis.hset(keys.prefect_taken_over, raw["id"], utcnow().isoformat())
            await client.set_automation_enabled(raw["id"], False)
            report.taken_over.append(label)
    return report
