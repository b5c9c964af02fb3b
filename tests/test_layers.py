"""The import rules of DESIGN.md section 2, checked on the source and in a fresh interpreter.

``triggers`` and ``actions`` are pure: of ours they import only the leaves
``automations.events`` and ``automations.errors`` (and ``actions`` the firing model of
``triggers``). No import circle exists between our modules, counting every import statement:
``TYPE_CHECKING`` blocks and function bodies included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("automations", "triggers", "actions")
PURE_MAY_IMPORT = {
    "triggers": {"automations.events", "automations.errors"},
    "actions": {"automations.events", "automations.errors", "triggers.firing"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``path`` imports anywhere in its body (``from pkg import sub`` names
    the submodule when ``sub`` is one)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {name for name in found if name in modules and name != this}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_pure_packages_import_only_the_leaves() -> None:
    edges = graph()
    bad = [
        f"{name} imports {target}"
        for name, targets in edges.items()
        for package, allowed in PURE_MAY_IMPORT.items()
        if name == package or name.startswith(package + ".")
        for target in sorted(targets)
        if not target.startswith(package) and target not in allowed
    ]
    assert bad == []


def test_there_is_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_submodule_imports_are_resolved() -> None:
    modules = all_modules()
    source = ROOT / "automations" / "engine" / "engine.py"
    assert "automations.engine.intake" in imports_of(source, modules)
    assert "triggers.compiled" in imports_of(ROOT / "triggers" / "models.py", modules)


def test_a_fresh_interpreter_can_import_triggers_first() -> None:
    code = "import triggers, actions, automations.models; print(automations.models.Automation)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Automation" in proc.stdout


def test_the_benchmarks_do_not_import_the_test_suite() -> None:
    """``bench/`` runs without ``tests/``: the tests may import the benchmarks' helpers (the
    Redis launcher), never the other way round."""
    bench = ROOT / "bench"
    sources = [p for p in sorted(bench.rglob("*.py"))
               if not any(part.startswith(".") for part in p.relative_to(bench).parts)]
    assert sources
    bad = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(ROOT)} imports {name}" for name in names
                    if name == "tests" or name.startswith("tests.")]
    assert bad == []
