"""The package's import graph has no cycles (function-level imports included).

Layers, from the ground up (see ARCHITECTURE.md): helpers (`errors`, `_io`, `_lazy`, `_table`,
`knapsack`) → `data` → `embeddings`, `models`, `metrics`, `task` → `plan`, `budget` →
`searchers`, `baselines`, `compress`, `export` → `study` → `viz`, `api` → `cli`. A cycle means
some module reaches upwards; move the shared piece down instead of importing up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import autodim

PKG = Path(autodim.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest known module that ``name`` (a module or a module's attribute) lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base if is_pkg else base[:-1]
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                targets = [node.args[0].value]
            for t in targets:
                if not t.startswith("autodim"):
                    continue
                dest = _resolve(t, modules)
                if dest and dest != mod:
                    graph[mod].add(dest)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    # cli imports most of the package lazily, inside its commands.
    assert "autodim.cli" in graph and len(graph["autodim.cli"]) >= 3


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_baseline_names_match_the_baselines():
    # study/config.py stays torch-free, so it cannot import autodim.baselines; this keeps its
    # list the same set (magprune is a searcher that studies run as a baseline).
    from autodim.baselines import BASELINES
    from autodim.study.config import BASELINE_NAMES

    assert set(BASELINE_NAMES) == set(BASELINES) | {"magprune"}
    assert len(BASELINE_NAMES) == len(set(BASELINE_NAMES))
