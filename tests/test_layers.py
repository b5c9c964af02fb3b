"""The import direction of DESIGN.md section 2, checked on the source and in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Modules of `automations` that the lower layers may use: the leaves.
LEAVES = {
    "automations.events",
    "automations.keys",
    "automations.errors",
    "automations.settings",
    "automations.bus",
    "automations.streams",
    "automations.connection",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _is_upper_layer(name: str) -> bool:
    return name.startswith("automations.") and not any(
        name == leaf or name.startswith(leaf + ".") for leaf in LEAVES
    )


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if name == "automations":
                bad.append(f"{path.relative_to(ROOT)} imports the automations package root")
            elif _is_upper_layer(name) or name.startswith(forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_triggers_imports_only_leaves() -> None:
    assert _violations("triggers", ("actions",)) == []


def test_actions_imports_only_leaves_and_triggers() -> None:
    assert _violations("actions", ()) == []


def test_fresh_interpreter_can_import_triggers_first() -> None:
    code = "import triggers, actions, automations.models; print(automations.models.Automation)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Automation" in proc.stdout
