"""Automation unit tests (``automations test TESTFILE``) through the real CLI, offline: Redis
points at a closed port, so any attempt to reach it would fail the run."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from automations.cli.app import app
from automations.cli.common import EXIT_USER_ERROR
from automations.durations import format_duration, parse_duration
from bench.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "automations.test.yaml"
RUN_ID = "prefect.flow-run.0b6c2c54-6a4c-4d38-9a43-2f1f8a2f6e01"

ETL: dict[str, Any] = {
    "name": "etl-failing",
    "trigger": {"expect": ["prefect.flow-run.Failed"], "match": {"prefect.resource.name": "etl"},
                "for_each": ["prefect.resource.id"], "threshold": 3, "within": 60},
    "actions": [{"type": "send-notification", "block": "ops-slack",
                 "body": "{{ event.resource.name }} failed 3 times"}],
}
STUCK: dict[str, Any] = {
    "name": "stuck",
    "trigger": {"posture": "Proactive", "after": ["prefect.flow-run.Running"],
                "expect": ["prefect.flow-run.Completed"], "for_each": ["prefect.resource.id"],
                "within": 600},
    "actions": [{"type": "call-webhook", "url": "http://127.0.0.1:9/hook",
                 "payload": {"run": "{{ flow_run.name }}", "labels": "{{ labels }}"}}],
}


def failure(at: str, run: str = "1", **extra: Any) -> dict[str, Any]:
    return {"at": at, "event": "prefect.flow-run.Failed",
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run}",
                         "prefect.resource.name": "etl"}, **extra}


def write(tmp_path: Path, tests: list[dict[str, Any]], **top: Any) -> Path:
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump({"automations": [ETL, STUCK]}))
    path = tmp_path / "alerts.test.yaml"
    path.write_text(yaml.safe_dump({"automations": ["alerts.yaml"], **top, "tests": tests},
                                   sort_keys=False))
    return path


def invoke(*args: str | Path, code: int = 0) -> Result:
    env = {"AUTOMATIONS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = CliRunner().invoke(app, ["test", *[str(a) for a in args]], env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_the_example_passes() -> None:
    result = invoke(EXAMPLE)
    assert "4 test(s) in 1 file(s): 4 passed, 0 failed" in result.stdout
    lines = [json.loads(line) for line in invoke(EXAMPLE, "--json").stdout.splitlines()]
    assert [line["passed"] for line in lines] == [True] * 4
    report = next(line for line in lines if line["test"].startswith("a completed extract"))
    [run] = report["firings"][0]["actions"]
    assert run["fields"]["parameters"] == {"upstream": "bright-otter"}


def test_a_passing_test_with_labels_state_tolerance_and_actions(tmp_path: Path) -> None:
    path = write(tmp_path, [{
        "name": "three failures in a minute page the on-call",
        "events": [failure("0s"), failure("20s"), failure("40s"), failure("41s", run="2")],
        "expect": [{"automation": "etl-failing", "at": "45s", "within": "5s",
                    "state": "Triggered", "event": "prefect.flow-run.Failed",
                    "labels": {"prefect.resource.id": "prefect.flow-run.1"},
                    "actions": [{"index": 0, "body": "etl failed 3 times",
                                 "urls": ["<block 'ops-slack': resolved from Redis when the "
                                          "action runs>"]}]}],
    }, {
        "name": "a stuck run resolves when it completes",
        "events": [{"at": "0s", "event": "prefect.flow-run.Running", "resource": RUN_ID},
                   {"at": "15m", "event": "prefect.flow-run.Completed", "resource": RUN_ID}],
        "expect": [
            {"automation": "stuck", "at": "10m", "state": "Triggered",
             "actions": [{"type": "call-webhook", "payload": {
                 "run": "<flow_run.name: read from Redis when the action runs>"}}]},
            {"automation": "stuck", "at": "15m", "state": "Resolved"},
        ],
    }])
    result = invoke(path)
    assert "2 test(s) in 1 file(s): 2 passed, 0 failed" in result.stdout


def test_a_mismatch_prints_a_diff_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, [{
        "name": "wrong time and body",
        "events": [failure("0s", repeat=3, every="15s")],
        "expect": [{"automation": "etl-failing", "at": "45s",
                    "labels": {"prefect.resource.id": "prefect.flow-run.9"},
                    "actions": [{"type": "send-notification", "body": "etl failed twice"}]}],
    }, {
        "name": "missing and unexpected",
        "events": [failure("0s", run="7", repeat=3, every="1s"),
                   {"at": "1m", "event": "prefect.flow-run.Running", "resource": RUN_ID}],
        "until": "5m",
        "expect": [{"automation": "etl-failing", "at": "2s"},
                   {"automation": "etl-failing", "at": "1h"}],
    }, {
        "name": "this one passes", "events": [], "expect": [],
    }])
    result = invoke(path, code=1)
    out = result.stdout
    assert f"FAIL {path}: wrong time and body (tests[0])" in out
    assert "at: expected 45s, got 30s (-15s)" in out
    assert ('labels["prefect.resource.id"]: expected "prefect.flow-run.9", got '
            '"prefect.flow-run.1"') in out
    assert 'actions[0].body: expected "etl failed twice", got "etl failed 3 times"' in out
    assert "note: actions[0].urls: block 'ops-slack' is a placeholder" in out
    assert "- missing  (expect[1]) etl-failing at 1h" in out
    assert "+ unexpected" not in out  # the run closes after 5m: `stuck` has not fired yet
    assert f"PASS {path}: this one passes" in out
    assert "3 test(s) in 1 file(s): 1 passed, 2 failed" in out
    lines = [json.loads(x) for x in invoke(path, "--json", code=1).stdout.splitlines()]
    assert [x["passed"] for x in lines] == [False, False, True]
    assert lines[0]["different"][0]["problems"][0] == "at: expected 45s, got 30s (-15s)"
    assert lines[1]["missing"] == [{"expect": 1, "automation": "etl-failing", "at": "1h"}]


def test_unexpected_firings_fail_a_test(tmp_path: Path) -> None:
    path = write(tmp_path, [{
        "name": "nothing should fire",
        "events": [{"at": "0s", "event": "prefect.flow-run.Running", "resource": RUN_ID}],
        "expect": [],
    }])
    out = invoke(path, code=1).stdout
    assert f"+ unexpected stuck at 10m Triggered on prefect.flow-run.Running labels " \
           f"{{prefect.resource.id={RUN_ID}}}" in out


def test_a_bad_test_file_reports_every_error_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, [{
        "name": "bad", "colour": "red",
        "events": [{"at": "3x", "event": "e", "resource": "r.1"},
                   {"at": "1s", "event": "e", "resource": "r.1", "repeat": 2},
                   {"at": "1s", "event": "e", "resource": {"a": "b"}}],
        "expect": [{"automation": "nope"},
                   {"automation": "etl-failing", "actions": [{"body": "x"}, {"index": 4}]}],
    }])
    result = invoke(path, code=EXIT_USER_ERROR)
    err = result.stderr
    assert "alerts.test.yaml:tests[0].colour: unknown key" in err
    assert "alerts.test.yaml:tests[0].events[0].at: expected a duration such as 30s" in err
    assert ("tests[0].events[2]: resource needs a non-empty 'prefect.resource.id' label"
            in err)
    assert "tests[0].events[1]: repeat > 1 needs `every`" in err
    assert "tests[0].expect[1].actions[0]: give `index` or `type`" in err
    assert "5 error(s) in the test file(s); no test was run" in err
    path = write(tmp_path, [{"name": "refs", "expect": [
        {"automation": "nope"},
        {"automation": "etl-failing", "actions": [{"index": 4}, {"type": "run-deployment"}]}]}])
    err = invoke(path, code=EXIT_USER_ERROR).stderr
    assert "tests[0].expect[0].automation: no automation named 'nope'" in err
    assert "tests[0].expect[1].actions[0].index: 'etl-failing' has 1 action(s)" in err
    assert "tests[0].expect[1].actions[1].type: 'etl-failing' has no run-deployment" in err
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump([{**ETL, "trigger": {"within": -1}}]))
    path.write_text(yaml.safe_dump({"automations": ["alerts.yaml"], "tests": [{"name": "x"}]}))
    broken = invoke(path, code=EXIT_USER_ERROR).stderr
    assert "alerts.yaml:[0].trigger" in broken


def test_file_kinds_and_options_are_told_apart(tmp_path: Path) -> None:
    write(tmp_path, [{"name": "x"}])
    automations = tmp_path / "alerts.yaml"
    err = invoke(automations, code=EXIT_USER_ERROR).stderr
    assert "not a test file (a mapping with `tests:`)" in err and "--events" in err
    err = invoke(tmp_path / "alerts.test.yaml", "--until", "2026-01-01",
                 code=EXIT_USER_ERROR).stderr
    assert "apply to --events dry runs" in err
    assert "cannot read" in invoke(tmp_path / "nope.yaml", code=EXIT_USER_ERROR).stderr
    schema = json.loads(invoke("--schema").stdout)
    assert schema["title"] == "automations test file"
    assert {"automations", "tests", "start"} <= schema["properties"].keys()


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172_800), (45, 45),
    ("1.5s", 1.5), ("PT10M", 600), ("1w", 604_800),
])
def test_durations(text: Any, seconds: float) -> None:
    value = parse_duration(text)
    assert value == timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("text", ["3x", "", "-5s", "s", True, "5 m", None])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
