"""The CLI's surface: ``--version``, help metavars, and the first-run note of the set-up script."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automations import __version__
from automations.cli.app import app

ROOT = Path(__file__).resolve().parents[2]


def test_version_option_prints_what_the_version_command_prints() -> None:
    option = CliRunner().invoke(app, ["--version"])
    command = CliRunner().invoke(app, ["version"])
    assert option.exit_code == command.exit_code == 0
    assert option.stdout == command.stdout == f"{__version__}\n"


@pytest.mark.parametrize(("args", "metavars"), [
    (["--help"], []),
    (["emit", "--help"], ["TEXT"]),
    (["events", "tail", "--help"], ["INTEGER"]),
    (["apply", "--help"], ["FILES...", "PATH"]),
    (["worker", "--help"], ["INTEGER RANGE"]),
])
def test_help_shows_click_metavars_and_no_type_labels_on_flags(
    args: list[str], metavars: list[str]
) -> None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for metavar in metavars:
        assert metavar in result.stdout
    # typer >= 0.27 prints `<bool>` after every flag and `<str>`/`<int>` for the rest
    assert "<bool>" not in result.stdout and "<str>" not in result.stdout
    assert "<int" not in result.stdout and "<list" not in result.stdout


def _fake_checkout(tmp_path: Path) -> Path:
    """The bootstrap script beside a pyproject.toml and a ``.venv`` whose python does nothing
    (the real install is not run in tests)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap", tmp_path / "scripts" / "bootstrap")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("pip", "python"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def test_bootstrap_says_it_installs_only_when_it_does(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path)
    script = str(checkout / "scripts" / "bootstrap")
    env = {**os.environ, "PYTHON": shutil.which("python3") or "python3"}
    first = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60,
                           check=True)
    assert first.stderr == "installing automations into .venv (first run, about a minute)...\n"
    assert first.stdout == ""
    assert (checkout / ".venv" / ".installed").exists()
    again = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60,
                           check=True)
    assert again.stderr == again.stdout == ""
