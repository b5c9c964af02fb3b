"""Action targets checked by ``validate``/``apply`` (Apprise URLs, webhook URLs, block names),
every mistake of every automation at once, and a non-HTTP webhook failing at fire time."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml
from typer.testing import CliRunner, Result

from actions.models import CallWebhook, SendNotification
from actions.targets import KnownBlocks, webhook_url_problem
from automations.action_targets import apprise_url_problem, block_refs, target_problems
from automations.blocks import BlockStore
from automations.cli.app import app
from automations.cli.common import EXIT_USER_ERROR
from automations.dispatch.dispatcher import Dispatcher
from automations.errors import InvalidAutomations
from automations.keys import Keys
from automations.loader import load_files
from automations.service import build_ports
from automations.settings import Settings
from automations.store import AutomationStore
from bench.redis_server import free_port
from tests.actions.stories import action_events, automation, dead_letters, disk_event, fire, stored

TRIGGER = {"expect": ["disk.full"]}


def write(tmp_path: Path, *automations: dict[str, Any], name: str = "alerts.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"automations": list(automations)}))
    return path


@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/x?token=1", None),
    ("http://127.0.0.1:8080/", None),
    ("ftp://example.com/x", "not ftp://"),
    ("file:///etc/passwd", "not file://"),
    ("example.com/hook", "write it as https://host/path"),
    ("localhost:8080/x", "write it as https://host/path"),
    ("https:///path-only", "no host"),
])
def test_webhook_urls_must_be_http(url: str, problem: str | None) -> None:
    found = webhook_url_problem(url)
    assert found is None if problem is None else (found is not None and problem in found)


def test_apprise_urls_are_parsed_quietly_and_never_echoed(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    assert apprise_url_problem("json://127.0.0.1:9/") is None
    with caplog.at_level(logging.DEBUG):
        problem = apprise_url_problem("nosuchservice://secret-token-123/x")
    assert problem is not None and "nosuchservice://..." in problem
    assert "secret-token-123" not in problem
    assert "secret-token-123" not in caplog.text + str(capsys.readouterr())
    http = apprise_url_problem("https://example.com/hook")
    assert http is not None and "json://" in http  # the hint for an HTTP endpoint


def test_targets_and_block_references_of_actions() -> None:
    notify = SendNotification(body="x", urls=["json://127.0.0.1:9/", "bogus://x"])
    assert [p for p, _ in target_problems(notify)] == ["urls[1]"]
    hook = CallWebhook(url="ftp://example.com/")
    assert [p for p, _ in target_problems(hook)] == ["url"]
    assert block_refs(CallWebhook(block="hook")) == [("block", "hook")]
    known = KnownBlocks.of({"stored"}, {"AUTOMATIONS_BLOCK_FROM_ENV"})
    assert "stored" in known and "from-env" in known and "other" not in known
    problem = known.block_problem("other")
    assert problem is not None and "AUTOMATIONS_BLOCK_OTHER" in problem


def test_one_file_reports_every_mistake_of_every_automation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"name": "x", "trigger": TRIGGER, "actions": [
            {"type": "send-notification", "urls": ["json://127.0.0.1:9/"], "body": "{{ oops }"},
            {"type": "call-webhook", "url": "ftp://example.com/drop"},
            {"type": "call-webhook", "block": "missing"},
        ]},
        {"name": "x", "trigger": TRIGGER, "actions": [{"type": "do-nothing"}]},
        # invalid as a whole (threshold), yet its valid actions are still checked
        {"name": "y", "trigger": {**TRIGGER, "threshold": 0}, "actions": [
            {"type": "send-notification", "urls": ["bogus://x"], "body": "hi"}]},
        {"name": "y", "trigger": TRIGGER, "actions": []},
    )
    checked: list[list[str]] = []

    def known(names: Any) -> KnownBlocks:
        checked.append(list(names))
        return KnownBlocks.of(set(), set())

    with pytest.raises(InvalidAutomations) as info:
        load_files([path], check_blocks=known)
    errors = [str(e) for e in info.value.errors]
    where = f"{path}:automations"
    expected = [
        f"{where}[0].actions[0].body: template error:",
        f"{where}[0].actions[1].url: webhooks need an http:// or https:// URL, not ftp://",
        f"{where}[2].trigger.threshold:",
        f"{where}[2].actions[0].urls[0]: Apprise cannot use this notification URL (bogus://",
        f"{where}[0].actions[2].block: unknown block 'missing'",
        f"{where}[1].name: duplicate name 'x'",
        f"{where}[3].name: duplicate name 'y'",
    ]
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), (error, start)
    assert "(automation 'x')" in errors[0]
    assert checked == [["missing"]]


def test_block_names_are_not_asked_for_when_no_action_names_one(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "x", "trigger": TRIGGER, "actions": [{"type": "do-nothing"}]})

    def never(names: Any) -> KnownBlocks:
        raise AssertionError("no block is named")

    assert [a.name for a in load_files([path], check_blocks=never)] == ["x"]


# -- the CLI against a real Redis ------------------------------------------------------


def invoke(env: dict[str, str], *args: str | Path, code: int = 0) -> Result:
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_validate_and_apply_check_block_names_when_redis_answers(
    env: dict[str, str], tmp_path: Path, redis_url: str, prefix: str,
) -> None:
    path = write(tmp_path, {"name": "x", "trigger": TRIGGER, "actions": [
        {"type": "call-webhook", "block": "hook"},
        {"type": "send-notification", "block": "from-env", "body": "hi"}]})
    refused = invoke(env, "validate", path, code=EXIT_USER_ERROR)
    assert "actions[0].block: unknown block 'hook'" in refused.stderr
    assert "actions[1].block: unknown block 'from-env'" in refused.stderr
    refused = invoke(env, "apply", path, code=EXIT_USER_ERROR)
    assert "2 error(s); nothing was stored" in refused.stderr
    assert not redis.Redis.from_url(redis_url).exists(Keys(prefix).automations)

    invoke(env, "blocks", "set", "hook", "https://127.0.0.1:9/hook")
    with_env = {**env, "AUTOMATIONS_BLOCK_FROM_ENV": "json://127.0.0.1:9/"}
    listed = [json.loads(line) for line in
              invoke(with_env, "blocks", "ls", "--json").stdout.splitlines()]
    assert listed == [{"name": "hook", "source": "stored"},
                      {"variable": "AUTOMATIONS_BLOCK_FROM_ENV", "source": "environment"}]
    assert "are valid" in invoke(with_env, "validate", path).stdout
    assert "1 created" in invoke(with_env, "apply", path).stdout


def test_validate_without_redis_notes_that_blocks_were_not_checked(
    env: dict[str, str], tmp_path: Path,
) -> None:
    away = {**env, "AUTOMATIONS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    path = write(tmp_path, {"name": "x", "trigger": TRIGGER, "actions": [
        {"type": "call-webhook", "block": "hook"}]})
    ok = invoke(away, "validate", path)
    assert "1 automation(s) in 1 file(s) are valid" in ok.stdout
    assert "note: block names were not checked: cannot reach Redis" in ok.stderr
    # other errors still count (and the note is still given)
    bad = write(tmp_path, {"name": "x", "trigger": TRIGGER, "actions": [
        {"type": "call-webhook", "block": "hook"}, {"type": "call-webhook", "url": "ftp://a"}]},
        name="bad.yaml")
    refused = invoke(away, "validate", bad, code=EXIT_USER_ERROR)
    assert "actions[1].url: webhooks need an http:// or https:// URL" in refused.stderr
    assert "block names were not checked" in refused.stderr


# -- fire time: a non-HTTP URL from a block fails at once --------------------------------


@pytest.fixture
async def dispatcher(
    redis: aioredis.Redis, settings: Settings, keys: Keys
) -> AsyncIterator[Dispatcher]:
    fast = settings.model_copy(update={
        "action_retry_base_s": 0.05, "action_retry_max_s": 0.2, "action_max_attempts": 5,
        "action_retry_poll_s": 0.05})
    async with Dispatcher(redis, fast, ports=build_ports(redis, fast, keys), keys=keys) as d:
        yield d


async def test_a_non_http_webhook_url_is_a_permanent_failure(
    redis: aioredis.Redis, keys: Keys, dispatcher: Dispatcher,
) -> None:
    secret = "ftp://user:hunter2@files.example.com/drop"
    await BlockStore(redis, keys).set("drop", secret)
    [a] = await stored(AutomationStore(redis, keys), automation(CallWebhook(block="drop")))
    await fire(redis, keys, a, disk_event())
    await dispatcher.drain()
    failed = [e for e in await action_events(redis, keys) if e["event"].endswith(".failed")]
    assert len(failed) == 1  # not five attempts
    payload = failed[0]["payload"]
    assert payload["reason"] == "invalid-target" and payload["will_retry"] is False
    assert "webhooks need an http:// or https:// URL, not ftp://" in payload["message"]
    [dead] = await dead_letters(redis, keys)
    assert dead["attempts"] == "1"
    assert "hunter2" not in str(failed) + str(dead)
    assert await dispatcher.retries.pending() == 0
