"""``automations deployments ...``: apply, ls, inspect, run, pause, resume, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
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
    again = cli.invoke(app, ["deployments", "pause", "extract-hourly"])
    assert again.exit_code == 0 and "extract-hourly is already paused" in again.output
    assert cli.invoke(app, ["deployments", "resume", "extract-hourly"]).exit_code == 0
    assert orjson.loads(cli.invoke(app, ["deployments", "inspect",
                                         "extract-hourly"]).output)["paused"] is False
    active = cli.invoke(app, ["deployments", "resume", "extract-hourly"])
    assert active.exit_code == 0 and "not paused (already active)" in active.output


def test_run_checks_parameters_against_the_flow_before_creating_a_run(
    cli: CliRunner, sync_redis: redis.Redis, runtime_env: Settings, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "flows.py", tmp_path / "flows.py")
    shutil.copy(EXAMPLES / "deployments.yaml", tmp_path / "deployments.yaml")
    assert cli.invoke(app, ["deployments", "apply",
                            str(tmp_path / "deployments.yaml")]).exit_code == 0
    keys = Keys(runtime_env.prefix)
    for params, message in (
        (["-p", "upstream=x", "-p", "audiense=ops"],
         "unknown parameter 'audiense' (the flow takes: upstream, audience)"),
        (["-p", "upstream=[1, 2]"], "parameter 'upstream': [1, 2] is not of type 'string'"),
        ([], "missing required parameter 'upstream'"),
    ):
        refused = cli.invoke(app, ["deployments", "run", "report", *params])
        assert refused.exit_code == 2, refused.output
        assert f"invalid parameters for deployment 'report': {message}" in refused.output
    extract = cli.invoke(app, ["deployments", "run", "extract-hourly", "-p", "minimum=ten"])
    assert extract.exit_code == 2
    assert "parameter 'minimum': 'ten' is not of type 'integer'" in extract.output
    assert sync_redis.hlen(keys.flow_runs) == 0 and sync_redis.xlen(keys.runs) == 0

    ran = cli.invoke(app, ["deployments", "run", "extract-hourly", "-p", "minimum=3",
                           "--json"])
    assert ran.exit_code == 0, ran.output
    created = orjson.loads(ran.output)
    assert created["parameters"] == {"source": "s3://bucket/data.csv", "minimum": 3}
    assert created["state_type"] == "SCHEDULED"
    assert sync_redis.hlen(keys.flow_runs) == 1


def test_ls_json_and_inspect_yaml(
    cli: CliRunner, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "flows.py", tmp_path / "flows.py")
    shutil.copy(EXAMPLES / "deployments.yaml", tmp_path / "deployments.yaml")
    assert cli.invoke(app, ["deployments", "apply",
                            str(tmp_path / "deployments.yaml")]).exit_code == 0
    listed = [orjson.loads(line) for line in
              cli.invoke(app, ["deployments", "ls", "--json"]).output.splitlines()]
    assert [d["name"] for d in listed] == ["extract-hourly", "report"]
    assert listed[1]["parameter_openapi_schema"]["required"] == ["upstream"]
    as_yaml = cli.invoke(app, ["deployments", "inspect", "report", "--yaml"])
    assert as_yaml.exit_code == 0
    assert yaml.safe_load(as_yaml.output) == listed[1]
    assert orjson.loads(cli.invoke(app, ["deployments", "inspect", "report",
                                         "--json"]).output) == listed[1]


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


def test_apply_pause_resume_delete_json(
    cli: CliRunner, sync_redis: redis.Redis, runtime_env: Settings, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "flows.py", tmp_path / "flows.py")
    shutil.copy(EXAMPLES / "deployments.yaml", tmp_path / "deployments.yaml")
    path = str(tmp_path / "deployments.yaml")

    def one(*args: str, code: int = 0) -> dict[str, Any]:
        result = cli.invoke(app, ["deployments", *args, "--json"])
        assert result.exit_code == code, result.output
        [line] = result.stdout.splitlines()
        data: dict[str, Any] = json.loads(line)
        return data

    dry = one("apply", path, "--dry-run")
    assert dry["dry_run"] is True and dry["created"] == []
    assert [(d["name"], d["id"], d["result"]) for d in dry["deployments"]] == [
        ("extract-hourly", None, "valid"), ("report", None, "valid")]
    assert sync_redis.hlen(Keys(runtime_env.prefix).deployments) == 0
    created = one("apply", path)
    assert created["created"] == ["extract-hourly", "report"] and created["dry_run"] is False
    ids = {d["name"]: d["id"] for d in created["deployments"]}
    again = one("apply", path)
    assert again["unchanged"] == ["extract-hourly", "report"] and again["created"] == []
    assert {d["name"]: d["id"] for d in again["deployments"]} == ids

    paused = one("pause", "report")
    assert paused == {"deployment": "report", "id": ids["report"], "paused": True,
                      "changed": True}
    assert one("pause", ids["report"]) == {**paused, "changed": False}
    assert one("resume", "report") == {**paused, "paused": False}
    assert one("resume", "report")["changed"] is False
    assert one("delete", "report") == {"deployment": "report", "id": ids["report"],
                                       "deleted": True}
    missing = cli.invoke(app, ["deployments", "delete", "report", "--json"])
    assert missing.exit_code == 3 and missing.stdout == ""


def test_apply_json_errors_are_objects_on_stdout(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: not-an-entrypoint\n"
                   "  - name: y\n    entrypoint: flows.py:nothing\n  - name: y\n"
                   "    entrypoint: flows.py:nothing\n")
    result = cli.invoke(app, ["deployments", "apply", str(bad), "--json"])
    assert result.exit_code == 2
    errors = json.loads(result.stdout)["errors"]
    assert all(e["file"] == str(bad) for e in errors)
    assert errors[0]["path"] == "deployments[0].entrypoint" and errors[0]["deployment"] is None
    assert errors[1]["path"] == "deployments[1]" and errors[1]["deployment"] == "y"
    assert "invalid deployments:" in result.stderr
    missing = cli.invoke(app, ["deployments", "apply", str(tmp_path / "none.yaml"), "--json"])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout) == {"errors": [{
        "file": str(tmp_path / "none.yaml"), "deployment": None, "path": None,
        "message": "no such file"}]}
