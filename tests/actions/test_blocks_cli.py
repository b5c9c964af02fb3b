"""``automations blocks set|ls|delete``: values are stored and never printed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import redis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.keys import Keys
from automations.settings import Settings

SECRET = "slack://T000AAAA/B000BBBB/XyzSecretTokenValue"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Settings]:
    monkeypatch.setenv("AUTOMATIONS_REDIS_URL", str(settings.redis_url))
    monkeypatch.setenv("AUTOMATIONS_PREFIX", settings.prefix)
    for name in [n for n in os.environ if n.startswith("AUTOMATIONS_BLOCK_")]:
        monkeypatch.delenv(name)
    yield settings
    client = redis.Redis.from_url(str(settings.redis_url))
    client.delete(Keys.from_settings(settings).blocks)
    client.close()


def test_set_ls_delete_never_print_the_value(env: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cli = CliRunner()
    outputs = []
    result = cli.invoke(app, ["blocks", "set", "ops-slack", SECRET])
    outputs.append(result.output)
    assert result.exit_code == 0 and "stored block ops-slack" in result.output
    from_stdin = cli.invoke(app, ["blocks", "set", "pager"], input=SECRET + "\n")
    outputs.append(from_stdin.output)
    assert from_stdin.exit_code == 0
    monkeypatch.setenv("AUTOMATIONS_BLOCK_FROM_ENV", SECRET)
    listed = cli.invoke(app, ["blocks", "ls"])
    outputs.append(listed.output)
    assert listed.output.split("\n")[:3] == ["ops-slack", "pager",
                                             "AUTOMATIONS_BLOCK_FROM_ENV (environment)"]
    client = redis.Redis.from_url(str(env.redis_url))
    assert client.hget(Keys(env.prefix).blocks, "pager") == SECRET.encode()
    client.close()
    deleted = cli.invoke(app, ["blocks", "delete", "pager"])
    assert deleted.exit_code == 0
    missing = cli.invoke(app, ["blocks", "delete", "pager"])
    outputs.append(missing.output)
    assert missing.exit_code == 3 and "no block named 'pager'" in missing.output
    bad = cli.invoke(app, ["blocks", "set", "x", "not a url XyzSecretTokenValue"])
    outputs.append(bad.output)
    assert bad.exit_code == 2
    assert all("XyzSecretTokenValue" not in out for out in outputs)


def test_set_and_delete_json_name_the_block_never_the_value(env: Settings) -> None:
    cli = CliRunner()
    stored = cli.invoke(app, ["blocks", "set", "ops-slack", SECRET, "--json"])
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.stdout) == {"block": "ops-slack", "stored": True}
    piped = cli.invoke(app, ["blocks", "set", "pager", "--json"], input=SECRET + "\n")
    assert json.loads(piped.stdout) == {"block": "pager", "stored": True}
    deleted = cli.invoke(app, ["blocks", "delete", "pager", "--json"])
    assert deleted.exit_code == 0
    assert json.loads(deleted.stdout) == {"block": "pager", "deleted": True}
    missing = cli.invoke(app, ["blocks", "delete", "pager", "--json"])
    assert missing.exit_code == 3 and missing.stdout == ""
    bad = cli.invoke(app, ["blocks", "set", "x", "not a url XyzSecretTokenValue", "--json"])
    assert bad.exit_code == 2 and bad.stdout == ""
    listed = [json.loads(line) for line in
              cli.invoke(app, ["blocks", "ls", "--json"]).stdout.splitlines()]
    assert listed == [{"name": "ops-slack", "source": "stored"}]
    outputs = [r.output for r in (stored, piped, deleted, missing, bad)]
    assert all("XyzSecretTokenValue" not in out for out in outputs)
