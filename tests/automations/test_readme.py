"""The README's promises that code can check: the two set-up commands, the settings table."""

from __future__ import annotations

from pathlib import Path

from automations.cli.serve_cmd import settings_markdown
from automations.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_table_matches_the_settings_fields() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_markdown() in readme, "README is stale: run scripts/settings-table"
    for name in Settings.model_fields:
        assert f"`AUTOMATIONS_{name.upper()}`" in readme


def test_the_two_setup_commands_exist_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    for script in ("scripts/serve", "scripts/test"):
        assert f"{script} " in readme
        assert (ROOT / script).stat().st_mode & 0o111
    assert "exec scripts/test" in (ROOT / ".ci" / "run").read_text()
