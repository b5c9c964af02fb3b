"""``--json`` of apply, validate, pause, resume, delete, emit, version and the schemas: the real
CLI (typer's CliRunner) against the session Redis, stdout parsed with ``json.loads``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import redis
from typer.testing import CliRunner, Result

from automations import __version__
from automations.cli.app import app
from automations.cli.common import EXIT_NOT_FOUND, EXIT_USER_ERROR
from automations.events import Event
from automations.keys import Keys
from bench.redis_server import free_port
from tests.automations.documents import write


def automation(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "trigger": {"expect": ["app.failed"], "threshold": 2, "within": 60},
            "actions": [{"type": "do-nothing"}], **extra}


NEVER_FIRES = {"posture": "Proactive", "expect": ["x"], "for_each": ["prefect.resource.id"],
               "within": 60}


def one_object(result: Result) -> dict[str, Any]:
    """stdout is exactly one JSON object on one line."""
    [line] = result.stdout.splitlines()
    data = json.loads(line)
    assert isinstance(data, dict)
    return data


def test_apply_json_reports_names_by_outcome(cli: Any, tmp_path: Path) -> None:
    both = write(tmp_path / "a.yaml", [automation("one"), automation("two")])
    first = one_object(cli("apply", both, "--json"))
    assert first == {"created": ["one", "two"], "updated": [], "unchanged": [], "deleted": [],
                     "trigger_reset": [], "dry_run": False, "warnings": []}
    assert one_object(cli("apply", both, "--json"))["unchanged"] == ["one", "two"]

    changed = write(tmp_path / "b.json", [automation("one", trigger=NEVER_FIRES)])
    dry = one_object(cli("apply", changed, "--prune", "--dry-run", "--json"))
    assert (dry["updated"], dry["deleted"], dry["dry_run"]) == (["one"], ["two"], True)
    real = cli("apply", changed, "--prune", "--json")
    data = one_object(real)
    assert data["updated"] == ["one"] and data["deleted"] == ["two"]
    assert data["trigger_reset"] == ["one"] and data["dry_run"] is False
    [warning] = data["warnings"]
    assert warning["automation"] == "one" and warning["path"] == "trigger"
    assert "never fire" in warning["message"]
    assert "warning:" in real.stderr  # the text stays on stderr


def test_apply_json_errors_are_objects_on_stdout_and_text_on_stderr(
    cli: Any, tmp_path: Path
) -> None:
    bad = write(tmp_path / "bad.yaml", [
        {**automation("b1"), "trigger": {"expect": ["a"], "within": -1}},
        {**automation("b2"), "actions": [{"type": "call-webhook"}]},
    ])
    result = cli("apply", write(tmp_path / "good.json", automation("good")), bad, "--json",
                 code=EXIT_USER_ERROR)
    errors = one_object(result)["errors"]
    assert [(e["file"], e["path"]) for e in errors] == [
        (str(bad), "[0].trigger.within"), (str(bad), "[1].actions[0]")]
    assert errors[1]["automation"] == "b2" and "give exactly one target" in errors[1]["message"]
    assert all(set(e) == {"file", "automation", "path", "message"} for e in errors)
    assert "2 error(s); nothing was stored" in result.stderr
    assert f"{bad}:[1].actions[0]: give exactly one target" in result.stderr
    assert cli("ls", "--json").stdout == ""  # nothing stored


def test_apply_json_store_refusal_names_the_automation(cli: Any, tmp_path: Path) -> None:
    taken = str(uuid.uuid4())
    cli("apply", write(tmp_path / "a.json", automation("owner", id=taken)))
    clash = write(tmp_path / "b.json", automation("newcomer", id=taken))
    [error] = one_object(cli("apply", clash, "--json", code=EXIT_USER_ERROR))["errors"]
    assert error["automation"] == "newcomer" and error["path"] == "'newcomer'.id"
    assert "already belongs to automation 'owner'" in error["message"]


def test_validate_json_valid_invalid_and_offline_notes(cli: Any, tmp_path: Path) -> None:
    good = write(tmp_path / "a.yaml", {"automations": [
        automation("fine"), automation("dead", trigger=NEVER_FIRES)]})
    valid = one_object(cli("validate", good, "--json"))
    assert valid["valid"] is True and valid["automations"] == ["fine", "dead"]
    assert valid["errors"] == [] and valid["notes"] == []
    assert [w["automation"] for w in valid["warnings"]] == ["dead"]

    broken = write(tmp_path / "b.yaml", {**automation("broken"), "trigger": {"within": -1}})
    invalid = one_object(cli("validate", good, broken, "--json", code=EXIT_USER_ERROR))
    assert invalid["valid"] is False and invalid["automations"] == []
    [error] = invalid["errors"]
    assert error["file"] == str(broken) and error["path"] == "trigger.within"

    missing = tmp_path / "missing.json"
    [gone] = one_object(cli("validate", missing, "--json", code=EXIT_USER_ERROR))["errors"]
    assert gone == {"file": str(missing), "automation": None, "path": None,
                    "message": "no such file"}

    blocked = write(tmp_path / "c.yaml", automation(
        "hook", actions=[{"type": "call-webhook", "block": "hook"}]))
    offline = {"AUTOMATIONS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = CliRunner().invoke(app, ["validate", str(blocked), "--json"], env=offline)
    assert result.exit_code == 0, result.stderr
    [note] = one_object(result)["notes"]
    assert "block names were not checked" in note and "note:" in result.stderr


def test_pause_resume_delete_json(cli: Any, tmp_path: Path) -> None:
    cli("apply", write(tmp_path / "a.json", automation("one")))
    paused = one_object(cli("pause", "one", "--json"))
    uuid.UUID(paused.pop("id"))
    assert paused == {"automation": "one", "enabled": False, "changed": True}
    again = one_object(cli("pause", "one", "--json"))
    assert (again["enabled"], again["changed"]) == (False, False)
    resumed = one_object(cli("resume", again["id"], "--json"))  # by id as well
    assert resumed == {**again, "enabled": True, "changed": True}
    assert one_object(cli("resume", "one", "--json"))["changed"] is False
    deleted = one_object(cli("delete", "one", "--json"))
    assert deleted == {"automation": "one", "id": again["id"], "deleted": True}
    missing = cli("delete", "one", "--json", code=EXIT_NOT_FOUND)
    assert missing.stdout == "" and "no automation named" in missing.stderr


def test_emit_json_prints_the_event_as_published(
    cli: Any, redis_url: str, keys: Keys
) -> None:
    data = one_object(cli("emit", "app.deployed", "-r", "app.web", "-r", "env=prod",
                          "--payload", '{"v": 1}', "--json"))
    client = redis.Redis.from_url(redis_url)
    entries: Any = client.xrange(keys.events)
    client.close()
    [(_, fields)] = entries
    assert data == json.loads(fields[b"data"])
    event = Event.model_validate(data)
    assert fields[b"id"].decode() == str(event.id)
    assert data["event"] == "app.deployed" and data["payload"] == {"v": 1}
    assert data["resource"] == {"prefect.resource.id": "app.web", "env": "prod"}


def test_emit_file_json_counts_and_lists_bad_lines(
    cli: Any, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    lines = ['{"event": "a", "resource": "r1"}', "{broken", "",
             '{"event": "b", "resource": {"prefect.resource.id": "r2"}}', '{"event": "c"}']
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli("emit", "--file", path, "--json", code=EXIT_USER_ERROR)
    data = one_object(result)
    assert (data["emitted"], data["bad"]) == (2, 2)
    assert [e["line"] for e in data["errors"]] == [2, 5]
    assert data["errors"][0]["error"].startswith("Invalid JSON")
    assert "resource" in data["errors"][1]["error"]
    assert "emitted 2 events, 2 bad lines skipped" in result.stderr
    clean = one_object(cli("emit", "--file", "-", "--json", stdin=lines[0] + "\n"))
    assert clean == {"emitted": 1, "bad": 0, "errors": []}
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(keys.events) == 3
    client.close()


def test_version_and_schemas_take_json() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["version", "--json"])
    assert version.exit_code == 0 and one_object(version) == {"version": __version__}
    for args in (["schema"], ["events", "schema"]):  # JSON already: --json changes nothing
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0
        assert json.loads(result.stdout) == json.loads(runner.invoke(app, args).stdout)
