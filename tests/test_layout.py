"""The package's layout rules: no import cycle, and lower stages never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_monitor_plugin"
ROOT = "mlflow_monitor_plugin"

# Each stage and the stages it may import (itself always allowed). The root __init__ re-exports.
ALLOWED: dict[str, set[str]] = {
    "exceptions": set(),
    "redact": {"exceptions"},
    "redaction": {"exceptions"},
    "config": {"exceptions", "redact", "redaction"},
    "discovery": {"exceptions"},
    "scoring": {"exceptions", "redact", "config", "discovery"},
    "export": {"exceptions", "redaction", "discovery"},
    "observe": {"exceptions", "redact", "redaction", "config", "discovery", "scoring", "export"},
    "alerts": {"exceptions", "redact", "redaction", "config", "discovery", "scoring", "observe"},
    "engine": {
        "exceptions",
        "redact",
        "redaction",
        "config",
        "discovery",
        "scoring",
        "export",
        "observe",
        "alerts",
    },
    "cli": {
        "exceptions",
        "redact",
        "redaction",
        "config",
        "discovery",
        "scoring",
        "export",
        "observe",
        "alerts",
        "engine",
    },
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((ROOT, *parts))] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    # `from pkg import submodule` names the submodule; drop the bare package it came with
    for name in list(found):
        parent = name.rpartition(".")[0]
        if parent in found and parent != ROOT and any(n.startswith(parent + ".") for n in found):
            found.discard(parent)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layout_has_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_layout_lower_stages_never_import_higher_ones() -> None:
    wrong = []
    for module, targets in _graph().items():
        stage = _stage(module)
        if stage is None:  # the root __init__ re-exports the public API
            continue
        assert stage in ALLOWED, f"{module}: stage {stage!r} is missing from ALLOWED"
        for target in targets:
            target_stage = _stage(target)
            if target_stage not in (stage, None) and target_stage not in ALLOWED[stage]:
                wrong.append(f"{module} imports {target}")
            if target_stage is None:
                wrong.append(f"{module} imports the package root {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_layout_every_module_says_what_it_owns() -> None:
    missing = [
        str(path.relative_to(PACKAGE))
        for path in _modules().values()
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not missing
