"""Regressions found by walking through the README as a new user."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from automations.cli.app import app


def test_error_paths_ending_in_an_emoji_code_are_printed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("id: not-a-uuid\nname: a\ntrigger: {expect: [x]}\n"
                    "actions: [{type: do-nothing}]\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:id: " in result.stderr  # rich turned ":id:" into an emoji
    assert "\N{SQUARED ID}" not in result.stderr


def test_emit_without_a_name_or_a_file_says_what_to_give() -> None:
    result = CliRunner().invoke(app, ["emit"], env={"AUTOMATIONS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert result.stderr == "error: give an event NAME, or --file FILE.jsonl (- for stdin)\n"
