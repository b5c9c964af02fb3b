"""The CLI against the test's Redis: its environment (keys removed afterwards) and an
invoker that checks the exit code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner, Result

from automations.cli.app import app

Invoke = Callable[..., Result]


@pytest.fixture
def env(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {"AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix,
           "AUTOMATIONS_DATA_DIR": str(tmp_path / "data")}
    client = redis.Redis.from_url(redis_url)
    found = list(client.scan_iter(match=f"{prefix}:*"))
    if found:
        client.delete(*found)
    client.close()


@pytest.fixture
def cli(env: dict[str, str]) -> Invoke:
    """``cli("apply", path, code=2, stdin=...)``: the result, after checking the exit code."""

    def invoke(*args: str | Path, code: int = 0, stdin: str | None = None) -> Result:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env, input=stdin)
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return invoke
