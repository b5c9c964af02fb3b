"""``automations import prefect`` maps the notification and webhook blocks that imported
actions reference (``block_document_id``) to our stored blocks, against a real Prefect 3.8.8
server: a webhook block's URL is read with its secrets and our imported call-webhook then
reaches it; a slack-webhook block maps for send-notification; a block with no usable URL and
an unreadable one are reported, not guessed."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import redis.asyncio as aioredis
from typer.testing import CliRunner

from automations.blocks import BlockStore
from automations.cli.app import app
from automations.keys import Keys
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import aemit
from tests.prefect.conftest import rest
from tests.prefect.test_import import run_import
from tests.sinks import HttpSink

SLACK = "https://hooks.slack.com/services/T000/B000/XXXXXXXX"


async def make_block(api: str, slug: str, name: str, data: dict[str, Any]) -> str:
    """A block document of Prefect's ``slug`` block type (its registered schema); its id."""
    block_type = await rest(api, "GET", f"/block_types/slug/{slug}")
    schemas = await rest(api, "POST", "/block_schemas/filter", {
        "block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1})
    created = await rest(api, "POST", "/block_documents/", {
        "name": name, "block_type_id": block_type["id"], "block_schema_id": schemas[0]["id"],
        "data": data})
    return str(created["id"])


def import_text(api: str, settings: Settings) -> str:
    env = {"AUTOMATIONS_REDIS_URL": str(settings.redis_url), "AUTOMATIONS_PREFIX": settings.prefix}
    result = CliRunner().invoke(app, ["import", "prefect", "--api-url", api], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def mine(lines: list[str], *needles: str) -> list[str]:
    return [line for line in lines if all(n in line for n in needles)]


async def test_import_maps_webhook_and_notification_blocks(
    prefect_api: str, redis: aioredis.Redis, settings: Settings, keys: Keys,
    http_sink: HttpSink,
) -> None:
    tag = uuid.uuid4().hex[:6]
    hook_url = http_sink.url("/hook")
    hook = await make_block(prefect_api, "webhook", f"hook-{tag}", {
        "url": hook_url, "method": "POST", "headers": {"X-Token": "t0ken"}})
    slack = await make_block(prefect_api, "slack-webhook", f"slack-{tag}", {"url": SLACK})
    secret = await make_block(prefect_api, "secret", f"secret-{tag}", {"value": "s3cr3t"})
    unknown = str(uuid.uuid4())
    webhooked = await rest(prefect_api, "POST", "/automations/", {
        "name": f"hooked-{tag}", "description": "", "enabled": True, "tags": [],
        "trigger": {"type": "event", "posture": "Reactive", "expect": [f"blk.{tag}"],
                    "threshold": 1, "within": 0},
        "actions": [{"type": "call-webhook", "block_document_id": hook,
                     "payload": '{"from": "{{ event.event }}"}'}],
        "actions_on_trigger": [], "actions_on_resolve": []})
    notified = await rest(prefect_api, "POST", "/automations/", {
        "name": f"notified-{tag}", "description": "", "enabled": True, "tags": [],
        "trigger": {"type": "event", "posture": "Reactive", "expect": [f"never.{tag}"],
                    "threshold": 1, "within": 0},
        "actions": [
            {"type": "send-notification", "block_document_id": slack, "body": "b"},
            {"type": "send-notification", "block_document_id": secret, "body": "b"},
            {"type": "send-notification", "block_document_id": unknown, "body": "b"}],
        "actions_on_trigger": [], "actions_on_resolve": []})

    report = await anyio.to_thread.run_sync(run_import, prefect_api, settings)
    assert len(mine(report["created"], tag)) == 2, report
    mapped, unmapped = mine(report["mapped"], tag), mine(report["unmapped"], tag)
    assert len(mapped) == 2 and len(unmapped) == 2, report
    [webhook_line] = mine(mapped, hook)
    assert "call-webhook" in webhook_line and "webhook block" in webhook_line
    assert "headers" in webhook_line  # what the mapping leaves out is said
    assert mine(mapped, slack, "send-notification", "slack-webhook block")
    assert mine(unmapped, secret, "a secret block holds no URL")
    assert mine(unmapped, unknown, "cannot read it", "404")
    assert all(f"automations blocks set {b} <url>" in " ".join(unmapped)
               for b in (secret, unknown))
    assert "s3cr3t" not in str(report) and "t0ken" not in str(report)

    blocks = BlockStore(redis, keys)
    assert await blocks.get(hook) == hook_url
    assert await blocks.get(slack) == SLACK
    assert await blocks.get(secret) is None and await blocks.get(unknown) is None
    stored = await AutomationStore(redis, keys).get(notified["id"])
    assert stored is not None
    assert [str(a.block_document_id) for a in stored.actions] == [  # type: ignore[union-attr]
        slack, secret, unknown]

    text = await anyio.to_thread.run_sync(import_text, prefect_api, settings)
    assert "mapped (" in text and "unmapped (" in text and hook in text and secret in text

    # the imported call-webhook resolves its block_document_id to the stored URL
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(settings, ["engine", "dispatcher"], stopping=stopping))
        await aemit(f"blk.{tag}", resource="test.blocks", redis=redis, settings=settings)
        received = await http_sink.wait_for(1, "/hook", timeout=60)
        stopping.set()
    assert received[0].json() == {"from": f"blk.{tag}"}
    assert webhooked["id"]
