"""Packaging: every third-party import is a declared dependency, the licence is declared
the SPDX way and shipped, the package ships py.typed and the starter study."""

from __future__ import annotations

import ast
import sys
from importlib import resources
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "psycopg2": "psycopg2-binary"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a ``try`` whose handlers catch ImportError (or broader): an optional import."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if h.type is None or any(getattr(n, "id", "") in (
                        "ImportError", "ModuleNotFoundError", "Exception") for n in names):
                    return True
    return False


def _required_imports() -> dict[str, str]:
    """Top-level third-party modules imported unconditionally by autodim -> a file."""
    out: dict[str, str] = {}
    for path in sorted((ROOT / "autodim").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "autodim" or _guarded(node, parents):
                    continue
                out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def _declared() -> set[str]:
    import re

    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower()
            for d in PYPROJECT["project"]["dependencies"]}


def test_every_required_import_is_declared():
    declared = _declared()
    missing = {m: f for m, f in _required_imports().items()
               if DIST.get(m, m).lower() not in declared}
    assert not missing, f"imported but not declared in pyproject dependencies: {missing}"


def test_click_is_not_imported_directly():
    # Typer >= 0.24 bundles its own Click; the usage-error mapping finds whichever it runs on.
    assert "click" not in _required_imports()


def test_licence_is_spdx_and_shipped():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000


def test_py_typed_and_starter_files_are_package_data():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["autodim"]
    assert "py.typed" in data and "starter/*.yaml" in data
    pkg = resources.files("autodim")
    assert (pkg / "py.typed").is_file()
    for name in ("study.yaml", "search_space.yaml"):
        assert (pkg / "starter" / name).is_file()


def _body(text: str) -> str:
    """A YAML file's text below its header comment (the leading ``#`` lines)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    return "".join(lines[i:])


def test_starter_search_space_is_the_default_one():
    # One search space, two places: the repository's studies read search_spaces/default.yaml,
    # `autodim init` writes the packaged copy. Only the header comment may differ.
    default = ROOT / "search_spaces" / "default.yaml"
    starter = resources.files("autodim") / "starter" / "search_space.yaml"
    assert _body(starter.read_text(encoding="utf-8")) == \
        _body(default.read_text(encoding="utf-8")), (
        "autodim/starter/search_space.yaml differs from search_spaces/default.yaml below the "
        "header comment: copy the default's body below the starter's header")


def test_body_ignores_only_the_header():
    assert _body("# a\n# b\n\nx: 1  # c\n") == "\nx: 1  # c\n"
    assert _body("# a\nx: 1\n") != _body("# a\nx: 2\n")


def test_static_extra_and_version_source():
    assert any(d.startswith("kaleido") for d in PYPROJECT["project"]["optional-dependencies"]
               ["static"])
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "autodim.__version__"}
