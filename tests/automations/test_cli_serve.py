"""``automations serve`` argument errors and start-up timeout, ``automations settings``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automations.cli.app import app
from automations.connection import EMBEDDED_PORT, EMBEDDED_STATE
from bench.redis_server import free_port

EXE = str(Path(sys.executable).with_name("automations"))


def test_serve_refuses_an_unknown_service_before_starting() -> None:
    result = CliRunner().invoke(app, ["serve", "--only", "engine,enigne"],
                                env={"AUTOMATIONS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert "unknown service enigne; choose from engine, timer, dispatcher, scheduler, bridge" in (
        result.stderr)


def test_serve_refuses_a_bad_log_level() -> None:
    result = CliRunner().invoke(app, ["serve"], env={"AUTOMATIONS_REDIS_URL": "redis://x:1/0",
                                                     "AUTOMATIONS_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 2
    assert "invalid AUTOMATIONS_LOG_LEVEL 'LOUD'" in result.stderr


def test_settings_shows_effective_values_without_the_password() -> None:
    result = CliRunner().invoke(app, ["settings"], env={
        "AUTOMATIONS_REDIS_URL": "redis://user:s3cret@db:6380/2", "AUTOMATIONS_BATCH_SIZE": "7"})
    assert result.exit_code == 0
    assert "AUTOMATIONS_REDIS_URL=redis://user:***@db:6380/2" in result.stdout
    assert "AUTOMATIONS_BATCH_SIZE=7" in result.stdout
    assert "s3cret" not in result.stdout


def test_settings_markdown_is_the_readme_table() -> None:
    result = CliRunner().invoke(app, ["settings", "--markdown"])
    assert result.stdout.startswith("| Variable | Default | Description |")


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    result = CliRunner().invoke(app, ["ls"], env={"AUTOMATIONS_BLOCK_MS": "-5",
                                                  "AUTOMATIONS_BATCH_SIZE": "many"})
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid setting AUTOMATIONS_BATCH_SIZE: Input should be a valid integer, unable "
        "to parse string as an integer; AUTOMATIONS_BLOCK_MS: Input should be greater than or "
        "equal to 1"]


def test_a_redis_url_without_a_redis_scheme_is_refused_without_a_traceback() -> None:
    result = CliRunner().invoke(app, ["emit", "x", "--resource", "r"],
                                env={"AUTOMATIONS_REDIS_URL": "http://user:s3cret@db:6379"})
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "AUTOMATIONS_REDIS_URL: must start with redis://, rediss://, unix://" in result.stderr
    assert "s3cret" not in result.stderr


def test_settings_shows_the_configured_redis_in_use_masked() -> None:
    env = {"AUTOMATIONS_REDIS_URL": "redis://user:s3cret@db:6380/2"}
    result = CliRunner().invoke(app, ["settings"], env=env)
    assert result.stdout.splitlines()[-1] == (
        "Redis in use: redis://user:***@db:6380/2 (AUTOMATIONS_REDIS_URL)")
    data = json.loads(CliRunner().invoke(app, ["settings", "--json"], env=env).stdout)
    assert data["redis"] == {"url": "redis://user:***@db:6380/2", "source": "configured",
                             "detail": "AUTOMATIONS_REDIS_URL"}
    assert data["settings"]["redis_url"] == "redis://user:***@db:6380/2"
    assert data["settings"]["startup_timeout_s"] == 30.0
    assert "s3cret" not in result.stdout


def test_settings_without_any_redis_says_serve_would_start_one(tmp_path: Path) -> None:
    env = {"AUTOMATIONS_DATA_DIR": str(tmp_path), "AUTOMATIONS_PROBE_LOCALHOST": "false"}
    result = CliRunner().invoke(app, ["settings", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["redis"] == {
        "url": None, "source": "none",
        "detail": f"`automations serve` would start an embedded Redis in {tmp_path}"}
    (tmp_path / EMBEDDED_PORT).write_text("23456\n")
    text = CliRunner().invoke(app, ["settings"], env=env).stdout
    assert text.splitlines()[-1] == (
        "Redis in use: none (`automations serve` would start an embedded Redis at "
        f"redis://127.0.0.1:23456/0 in {tmp_path})")
    both = CliRunner().invoke(app, ["settings", "--json", "--markdown"])
    assert both.exit_code == 2


@pytest.mark.parametrize("command", [["serve"], ["worker"]])
def test_an_unreachable_explicit_url_exits_4_after_the_startup_timeout(
    command: list[str], tmp_path: Path
) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATIONS_")}
    env.update({"AUTOMATIONS_REDIS_URL": url, "AUTOMATIONS_STARTUP_TIMEOUT_S": "1",
                "AUTOMATIONS_DATA_DIR": str(tmp_path),
                "AUTOMATIONS_METRICS_PORT": str(free_port())})  # one more task group around
    started = time.monotonic()
    proc = subprocess.run([EXE, *command], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 4, proc.stderr
    assert time.monotonic() - started < 20
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach Redis at redis://user:***@127.0.0.1:")
    assert "within 1 s" in last
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    assert not (tmp_path / EMBEDDED_STATE).exists()  # an explicit URL never embeds one
