"""Executors never touch Redis: neither they nor the ports module they get their context from
import the client, the key layout or the settings, and the ``ActionContext`` carries ports,
not a connection."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from automations.dispatch.ports import ActionContext

ROOT = Path(__file__).resolve().parents[2]
DISPATCH = ROOT / "automations" / "dispatch"
FORBIDDEN = ("redis", "automations.keys", "automations.settings")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports anywhere (``from a import b`` counts as ``a`` and ``a.b``;
    a relative import as ``<relative>``, which the check refuses: it would slip past)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "<relative>" if node.level or node.module is None else node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def forbidden(module: str) -> bool:
    return module.startswith("<relative>") or any(
        module == name or module.startswith(f"{name}.") for name in FORBIDDEN)


def test_no_executor_imports_redis_keys_or_settings() -> None:
    modules = [*sorted((DISPATCH / "executors").glob("*.py")), DISPATCH / "ports.py"]
    assert len(modules) > 2
    offenders = {path.name: sorted(m for m in imported(path) if forbidden(m))
                 for path in modules}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_action_context_carries_no_connection_keys_or_settings() -> None:
    fields = {f.name: str(f.type) for f in dataclasses.fields(ActionContext)}
    assert not {"redis", "keys", "settings"} & fields.keys()
    for name, annotation in fields.items():
        assert not any(word in annotation for word in ("Redis", "Keys", "Settings")), name
    assert fields["ledger"] == "LedgerPort" and fields["action_timeout_s"] == "float"
