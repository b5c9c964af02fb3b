"""``automations serve`` argument errors and ``automations settings``."""

from __future__ import annotations

from typer.testing import CliRunner

from automations.cli.app import app


def test_serve_refuses_an_unknown_service_before_starting() -> None:
    result = CliRunner().invoke(app, ["serve", "--only", "engine,enigne"],
                                env={"AUTOMATIONS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert "unknown service enigne; choose from engine, timer, dispatcher, scheduler" in (
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
