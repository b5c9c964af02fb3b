"""``automations deployments ...``: apply, ls, inspect, run, pause, resume, errors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from typer.testing import CliRunner

from automations.cli.app import app
from automations.keys import Keys
from automations.runtime.flow_runs import FlowRun
from automations.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def cli(runtime_env: Settings) -> CliRunner:
    return CliRunner()


@pytest.fixture
def sync_redis(runtime_env: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(str(runtime_env.redis_url))
    yield client
    keys = list(client.scan_iter(match=f"{runtime_env.prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_apply_ls_inspect_run_pause_resume(
    cli: CliRunner, sync_redis: redis.Redis, runtime_env: Settings, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "flows.py", tmp_path / "flows.py")
    shutil.copy(EXAMPLES / "deployments.yaml", tmp_path / "deployments.yaml")
    result = cli.invoke(app, ["deployments", "apply", str(tmp_path / "deployments.yaml")])
    assert result.exit_code == 0, result.output
    assert "created   extract-hourly" in result.output
    again = cli.invoke(app, ["deployments", "apply", str(tmp_path / "deployments.yaml")])
    assert "unchanged extract-hourly" in again.output

    listed = cli.invoke(app, ["deployments", "ls"])
    assert "extract-hourly" in listed.output and "report" in listed.output
    # the id column folds on an 80-column terminal instead of squeezing the others to "ac…"
    assert "│ extract │" in listed.output and "│ active │" in listed.output

    inspected = cli.invoke(app, ["deployments", "inspect", "report"])
    assert inspected.exit_code == 0
    data = orjson.loads(inspected.output)
    assert data["flow_name"] == "report" and data["parameters"] == {"audience": "team"}

    ran = cli.invoke(app, ["deployments", "run", "report", "--param", "upstream=x",
                           "-p", "audience=\"ops\""])
    assert ran.exit_code == 0, ran.output
    keys = Keys(runtime_env.prefix)
    [raw] = sync_redis.hvals(keys.flow_runs)
    run = FlowRun.model_validate_json(raw)
    assert run.parameters == {"audience": "ops", "upstream": "x"}
    assert sync_redis.xlen(keys.runs) == 1

    assert cli.invoke(app, ["deployments", "pause", "extract-hourly"]).exit_code == 0
    assert orjson.loads(cli.invoke(app, ["deployments", "inspect",
                                         "extract-hourly"]).output)["paused"] is True
    assert cli.invoke(app, ["deployments", "resume", "extract-hourly"]).exit_code == 0
    assert orjson.loads(cli.invoke(app, ["deployments", "inspect",
                                         "extract-hourly"]).output)["paused"] is False


def test_errors_are_one_line_with_exit_codes(
    cli: CliRunner, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    missing = cli.invoke(app, ["deployments", "run", "nope"])
    assert missing.exit_code == 3
    assert "no deployment named or with id 'nope'" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: not-an-entrypoint\n")
    invalid = cli.invoke(app, ["deployments", "apply", str(bad)])
    assert invalid.exit_code == 2
    assert "deployments[0].entrypoint" in invalid.output
    assert "Traceback" not in invalid.output
    param = cli.invoke(app, ["deployments", "run", "x", "--param", "novalue"])
    assert param.exit_code == 2
