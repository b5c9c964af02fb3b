"""The real CLI (typer's CliRunner) against the session Redis: apply, ls, inspect, pause,
resume, delete, validate, schema, and their error exits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
import yaml
from typer.testing import CliRunner

from automations.cli.app import app
from automations.cli.common import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USER_ERROR
from automations.keys import Keys
from bench.redis_server import free_port
from tests.automations.documents import write

FIXTURES = Path(__file__).parent.parent / "fixtures" / "prefect"


def automation(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "trigger": {"expect": ["prefect.flow-run.Failed"], "threshold": 3,
                                      "within": 600, "for_each": ["prefect.resource.id"]},
            "actions": [{"type": "do-nothing"}], **extra}


def test_apply_prints_a_summary_and_is_idempotent(cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", [automation("one"), automation("two")])
    first = cli("apply", path)
    assert "created  one" in first.stdout and "2 created, 0 updated, 0 unchanged, 0 deleted" \
        in first.stdout
    again = cli("apply", path)
    assert "0 created, 0 updated, 2 unchanged, 0 deleted" in again.stdout


def test_apply_updates_prunes_and_dry_runs(cli: Any, tmp_path: Path) -> None:
    cli("apply", write(tmp_path / "a.json", [automation("one"), automation("two")]))
    changed = write(tmp_path / "b.json", [automation("one", description="new")])
    dry = cli("apply", changed, "--prune", "--dry-run")
    assert "1 updated" in dry.stdout and "1 deleted" in dry.stdout and "dry run" in dry.stdout
    assert "two" in cli("ls").stdout
    real = cli("apply", changed, "--prune")
    assert "updated  one" in real.stdout and "deleted  two" in real.stdout
    trigger = write(tmp_path / "c.json", [{**automation("one"), "trigger": {"expect": ["x"]}}])
    assert "window state reset" in cli("apply", trigger).stdout
    assert "two" not in cli("ls").stdout


def test_ls_shows_name_enabled_trigger_actions_and_last_fired(
    cli: Any, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    cli("apply", FIXTURES / "reference-4.5.json", write(tmp_path / "a.json", automation("one")))
    empty = cli("ls")
    assert "never" in empty.stdout
    client = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    ident = client.hget(keys.automation_names, "one")
    client.hset(keys.last_fired, ident, "2026-11-24T23:59:00+00:00")
    client.close()
    table = CliRunner().invoke(app, ["ls"], env={
        "AUTOMATIONS_REDIS_URL": redis_url, "AUTOMATIONS_PREFIX": prefix, "COLUMNS": "250"})
    out = table.stdout
    assert "3x prefect.flow-run.Failed in 10m per prefect.resource.id" in out
    assert "all of 2 within 1h" in out and "run-deployment" in out and "do-nothing" in out
    assert "2026-11-24T23:59:00+00:00" in out
    lines = [json.loads(line) for line in cli("ls", "--json").stdout.splitlines()]
    one = next(line for line in lines if line["name"] == "one")
    assert one == {"id": ident.decode() if isinstance(ident, bytes) else ident,
                   "name": "one", "enabled": True,
                   "trigger": "3x prefect.flow-run.Failed in 10m per prefect.resource.id",
                   "actions": ["do-nothing"], "last_fired": "2026-11-24T23:59:00+00:00"}
    assert len(lines) == 2


def test_inspect_json_and_yaml_apply_again_unchanged(cli: Any, tmp_path: Path) -> None:
    # the export's send-notification names a block (Prefect's block_document_id): apply
    # refuses it until the block exists
    export = FIXTURES / "inspect-by-name-proactive.json"
    refused = cli("apply", export, code=EXIT_USER_ERROR)
    assert "actions[1].block_document_id: unknown block" in refused.stderr
    cli("blocks", "set", "11111111-2222-4333-8444-555555555555", "json://127.0.0.1:9/")
    cli("apply", export)
    name = "flow run stuck in Running for 1h"
    as_json = cli("inspect", name, "--json").stdout
    assert json.loads(as_json)["trigger"]["within"] == 3600.0
    as_yaml = cli("inspect", name, "--yaml").stdout
    assert yaml.safe_load(as_yaml) == json.loads(as_json)
    for suffix, text in ((".json", as_json), (".yaml", as_yaml)):
        path = tmp_path / f"again{suffix}"
        path.write_text(text)
        assert "1 unchanged" in cli("apply", path).stdout
    pretty = cli("inspect", name).stdout
    assert name in pretty and "fewer than 1" in pretty


def test_pause_resume_delete(cli: Any, tmp_path: Path) -> None:
    cli("apply", write(tmp_path / "a.json", automation("one")))
    assert "paused 'one'" in cli("pause", "one").stdout
    assert "'one' was already paused" in cli("pause", "one").stdout
    assert "paused" in cli("ls").stdout
    assert "resumed 'one'" in cli("resume", "one").stdout
    assert "deleted 'one'" in cli("delete", "one").stdout
    missing = cli("delete", "one", code=EXIT_NOT_FOUND)
    assert "no automation named" in missing.stderr
    cli("pause", "ghost", code=EXIT_NOT_FOUND)
    cli("inspect", "ghost", code=EXIT_NOT_FOUND)


def test_resume_refuses_an_automation_that_would_loop(cli: Any, tmp_path: Path) -> None:
    loopy = {"name": "loopy", "enabled": False, "trigger": {}, "actions": [{"type": "do-nothing"}]}
    cli("apply", write(tmp_path / "a.json", loopy))
    refused = cli("resume", "loopy", code=EXIT_USER_ERROR)
    assert "loop guard" in refused.stderr


def test_invalid_files_list_every_error_and_store_nothing(cli: Any, tmp_path: Path) -> None:
    good = write(tmp_path / "good.json", automation("good"))
    bad = write(tmp_path / "bad.yaml", [
        {**automation("b1"), "trigger": {"type": "compound", "require": "all",
                                         "triggers": [{"expect": ["a"]}, {"within": -1}]}},
        {**automation("b2"), "actions": [{"type": "call-webhook"}]},
    ])
    result = cli("apply", good, bad, code=EXIT_USER_ERROR)
    assert f"{bad}:[0].trigger.triggers[1].within: " in result.stderr
    assert f"{bad}:[1].actions[0]: give exactly one target" in result.stderr
    assert "2 error(s); nothing was stored" in result.stderr
    assert "no automations" in cli("ls").stdout


def test_validate_works_offline_and_warns_about_triggers_that_never_fire(
    tmp_path: Path,
) -> None:
    dead = {**automation("dead"), "trigger": {
        "posture": "Proactive", "expect": ["x"], "for_each": ["prefect.resource.id"],
        "within": 60}}
    path = write(tmp_path / "a.yaml", {"automations": [automation("fine"), dead]})
    offline = {"AUTOMATIONS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = CliRunner().invoke(app, ["validate", str(path),
                                      str(FIXTURES / "inspect-by-name-sequence.yaml")],
                                env=offline)
    assert result.exit_code == 0, result.stderr
    assert "3 automation(s) in 2 file(s) are valid" in result.stdout
    assert "warning:" in result.stderr and "dead" in result.stderr and "never fire" in result.stderr
    broken = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.json")], env=offline)
    assert broken.exit_code == EXIT_USER_ERROR and "no such file" in broken.stderr


def test_error_paths_ending_in_an_emoji_code_are_printed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("id: not-a-uuid\nname: a\ntrigger: {expect: [x]}\n"
                    "actions: [{type: do-nothing}]\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:id: " in result.stderr  # rich turned ":id:" into an emoji
    assert "\N{SQUARED ID}" not in result.stderr


def test_a_python_module_applies_like_a_file(cli: Any, tmp_path: Path) -> None:
    module = tmp_path / "defs.py"
    module.write_text(
        "from automations import Automation\nfrom triggers import EventTrigger\n"
        "from actions import DoNothing\n"
        "alerts = [Automation(name=f'py-{i}', trigger=EventTrigger(expect={f'e.{i}'}),\n"
        "                     actions=[DoNothing()]) for i in range(3)]\n")
    assert "3 created" in cli("apply", module).stdout
    assert "py-2" in cli("ls").stdout


def test_redis_unavailable_is_one_line_and_exit_4(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", automation("one"))
    offline = {"AUTOMATIONS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (["apply", str(path)], ["ls"], ["pause", "one"]):
        result = CliRunner().invoke(app, args, env=offline)
        assert result.exit_code == EXIT_UNAVAILABLE, result.stderr
        assert "cannot reach Redis" in result.stderr and "Traceback" not in result.stderr


def test_schema_is_json_schema_of_the_file_format() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "Automation" in schema["$defs"]
