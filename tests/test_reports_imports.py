"""The modules of the reports package import one another one way only: no cycles.

Imports are read with ast, lazy ones inside functions included, so the check holds whether or
not plotly is installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "reports"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of the package that the file at `path` imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from .rows import X`, `from . import rows`
                base = PACKAGE if node.level == 1 else ""
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == PACKAGE and parts[1] in modules:
                found.add(parts[1])
    found.discard(path.stem)
    return found


def _import_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    return {name: _imported_modules(path, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "active" while on the DFS stack, then "done"
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "active":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read():
    graph = _import_graph()
    assert {"report", "html", "cost", "select"} <= set(graph)
    assert "html" in graph["report"]  # the lazy import inside build_report counts


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_reports_modules_import_one_way():
    graph = _import_graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle among reports modules: " + " -> ".join(cycle or [])
