"""``automations test``: the offline dry run through the real CLI, on real files (no Redis)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from automations.cli.app import app
from automations.cli.common import EXIT_USER_ERROR

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NOTHING: list[dict[str, Any]] = [{"type": "do-nothing"}]

STUCK: dict[str, Any] = {
    "name": "stuck runs",
    "trigger": {"posture": "Proactive", "after": ["prefect.flow-run.Running"],
                "expect": ["prefect.flow-run.Completed", "prefect.flow-run.Failed"],
                "for_each": ["prefect.resource.id"], "within": 600},
    "actions": NOTHING,
}
FAILURES: dict[str, Any] = {
    "name": "two failures",
    "trigger": {"expect": ["prefect.flow-run.Failed"], "threshold": 2, "within": 3600},
    "actions": NOTHING,
}


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def ev(name: str, seconds: float, run: str = "a", **extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "event": f"prefect.flow-run.{name}", "occurred": at(seconds),
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run}"}, **extra}


def write(tmp_path: Path, automations: list[dict[str, Any]], events: list[Any]) -> list[Path]:
    spec = tmp_path / "automations.yaml"
    spec.write_text(yaml.safe_dump({"automations": automations}))
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return [spec, lines]


def invoke(*args: str | Path, code: int = 0, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(app, ["test", *[str(a) for a in args]], input=stdin)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def fired(tmp_path: Path, automations: list[dict[str, Any]], events: list[Any],
          *args: str) -> list[dict[str, Any]]:
    spec, lines = write(tmp_path, automations, events)
    result = invoke(spec, "--events", lines, "--json", *args)
    return [json.loads(line) for line in result.stdout.splitlines()]


def summary(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["automation"], r["state"], r["triggered"], r["event"], r["event_line"],
             r["labels"]) for r in rows]


def test_reactive_proactive_and_chained_firings_on_event_time(tmp_path: Path) -> None:
    watcher = {"name": "on stuck", "actions": NOTHING,
               "trigger": {"expect": ["prefect.automation.triggered"],
                           "match": {"prefect.resource.name": "stuck runs"}}}
    events = [ev("Running", 0, "a"), ev("Running", 10, "b"), ev("Completed", 300, "a"),
              ev("Failed", 1200, "c"), ev("Failed", 1260, "d")]
    rows = fired(tmp_path, [STUCK, FAILURES, watcher], events)
    run_b = {"prefect.resource.id": "prefect.flow-run.b"}
    assert summary(rows) == [
        ("stuck runs", "Triggered", at(610), "prefect.flow-run.Running", 2, run_b),
        ("on stuck", "Triggered", at(610), "prefect.automation.triggered", None, {}),
        ("two failures", "Triggered", at(1260), "prefect.flow-run.Failed", 5, {}),
    ]
    assert rows[0]["event_id"] == events[1]["id"] and rows[0]["child_firings"] == 0


def test_open_proactive_windows_close_after_the_last_event(tmp_path: Path) -> None:
    rows = fired(tmp_path, [STUCK], [ev("Running", 0)])
    assert summary(rows) == [("stuck runs", "Triggered", at(600), "prefect.flow-run.Running", 1,
                              {"prefect.resource.id": "prefect.flow-run.a"})]
    assert fired(tmp_path, [STUCK], [ev("Running", 0)], "--until", at(599)) == []


def test_the_clock_steps_through_every_window_end(tmp_path: Path) -> None:
    quiet = {"name": "quiet", "actions": NOTHING,
             "trigger": {"posture": "Proactive", "expect": ["prefect.flow-run.Completed"],
                         "within": 60}}
    rows = fired(tmp_path, [quiet], [ev("Running", 0), ev("Running", 300)])
    assert [r["triggered"] for r in rows] == [at(t) for t in (60, 120, 180, 240, 300, 360)]
    assert {r["event"] for r in rows} == {None}


def test_resolved_after_a_proactive_firing(tmp_path: Path) -> None:
    rows = fired(tmp_path, [STUCK], [ev("Running", 0), ev("Completed", 900)])
    assert [(r["state"], r["event_line"]) for r in rows] == [("Triggered", 1), ("Resolved", 2)]


def test_delivery_order_is_file_order_and_event_time_wins(tmp_path: Path) -> None:
    """A Completed delivered before the Running that precedes it: held, no false firing."""
    assert fired(tmp_path, [STUCK], [ev("Completed", 100), ev("Running", 5)]) == []


def test_follows_holds_an_event_until_its_leader(tmp_path: Path) -> None:
    running = ev("Running", 0)
    events = [ev("Completed", 30, follows=running["id"]), running]
    assert fired(tmp_path, [STUCK], events) == []
    orphan = [ev("Running", 0), ev("Completed", 30, follows=str(uuid.uuid4()))]
    spec, lines = write(tmp_path, [STUCK], orphan)
    result = invoke(spec, "-e", lines, "--json")
    assert "1 event(s) still wait for the event they `follows`" in result.stderr
    assert len(result.stdout.splitlines()) == 1  # the Completed never counted: a firing
    assert fired(tmp_path, [STUCK], orphan, "--follows-wait", "0") == []


def test_table_output_and_summary(tmp_path: Path) -> None:
    spec, lines = write(tmp_path, [FAILURES, STUCK], [ev("Failed", 0), ev("Failed", 5)])
    out = invoke(spec, "--events", lines).stdout
    assert "two failures" in out and "(line 2)" in out and "Triggered" in out
    assert "1 firing(s) of 1 of 2 enabled automation(s) over 2 event(s)" in out
    spec, lines = write(tmp_path, [FAILURES], [ev("Failed", 0)])
    assert "no automation fired" in invoke(spec, "--events", lines).stdout


def test_events_from_stdin_and_blank_lines(tmp_path: Path) -> None:
    spec, _ = write(tmp_path, [FAILURES], [])
    text = "\n" + json.dumps(ev("Failed", 0)) + "\n\n" + json.dumps(ev("Failed", 1)) + "\n"
    out = invoke(spec, "-e", "-", "--json", stdin=text).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["event_line"] for r in rows] == [4]


def test_bad_event_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    events = [ev("Failed", 0), "not json", {"event": "x"}, ev("Failed", 5)]
    spec, lines = write(tmp_path, [FAILURES], events)
    result = invoke(spec, "--events", lines, "--json", code=EXIT_USER_ERROR)
    assert result.stdout == ""
    assert f"{lines}:2: Invalid JSON" in result.stderr
    assert f"{lines}:3: resource: Field required" in result.stderr
    assert "2 bad event line(s); nothing was evaluated" in result.stderr
    skipped = invoke(spec, "--events", lines, "--json", "--skip-invalid")
    assert [json.loads(x)["event_line"] for x in skipped.stdout.splitlines()] == [4]
    assert "warning:" in skipped.stderr


def test_invalid_automations_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    bad = {**FAILURES, "trigger": {**FAILURES["trigger"], "within_seconds": 60}}
    spec, lines = write(tmp_path, [bad], [ev("Failed", 0)])
    result = invoke(spec, "--events", lines, code=EXIT_USER_ERROR)
    assert "automations[0].trigger.within_seconds: unknown key" in result.stderr
    spec, _ = write(tmp_path, [FAILURES], [])
    missing = invoke(spec, "--events", tmp_path / "nope.jsonl", code=EXIT_USER_ERROR)
    assert "cannot read events" in missing.stderr


def test_never_fires_warning_and_paused_automations(tmp_path: Path) -> None:
    dead = {"name": "dead", "actions": NOTHING,
            "trigger": {"posture": "Proactive", "expect": ["prefect.flow-run.Completed"],
                        "for_each": ["prefect.resource.id"]}}
    paused = {**FAILURES, "name": "paused", "enabled": False}
    spec, lines = write(tmp_path, [dead, paused], [ev("Completed", 0), ev("Failed", 1),
                                                   ev("Failed", 2)])
    result = invoke(spec, "--events", lines, "--json")
    assert "warning: dead: trigger: a Proactive trigger with for_each" in result.stderr
    assert result.stdout == ""
    assert "of 1 enabled automation(s)" in result.stderr


def test_composite_firing_carries_child_labels(tmp_path: Path) -> None:
    both = {"name": "both", "actions": NOTHING, "trigger": {
        "type": "sequence", "within": 120, "triggers": [
            {"expect": ["prefect.flow-run.Running"], "for_each": ["prefect.resource.id"]},
            {"expect": ["prefect.flow-run.Failed"]}]}}
    rows = fired(tmp_path, [both], [ev("Failed", 0), ev("Running", 10), ev("Failed", 20)])
    assert summary(rows) == [("both", "Triggered", at(20), "prefect.flow-run.Failed", 3,
                              {"prefect.resource.id": "prefect.flow-run.a"})]
    assert rows[0]["child_firings"] == 2
