"""The package's shape: no import cycle, arrows point one way, every subpackage ships."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "harbor_ops"
# Lower layers never import higher ones (cli and agent on top, core at the bottom).
LAYERS = {"core": 0, "releases": 1, "site": 2, "render": 3, "hosts": 3, "backup": 4,
          "preflight": 4, "doctor": 4, "install": 5, "upgrade": 6, "agent": 7, "cli": 8}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Every harbor_ops module and the harbor_ops modules it imports (lazy imports too)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for name, deps in import_graph().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in LAYERS:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) > 1 and dparts[1] in LAYERS and dparts[1] != parts[1] \
                    and LAYERS[dparts[1]] >= LAYERS[parts[1]]:
                wrong.append(f"{name} -> {dep}")
    assert wrong == []


def test_every_subpackage_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    present = {module_name(p.parent) for p in PKG.rglob("__init__.py")}
    assert present - listed == set()
    assert {"harbor_ops.playbooks", "harbor_ops.templates"} <= listed


def test_scripts_outside_the_package_import() -> None:
    """molecule's bed driver and the benchmarks import harbor_ops by name: a rename that
    forgets them breaks CI's molecule stage or a benchmark, not this suite, unless checked."""
    import importlib.util
    import sys

    for path in [ROOT / "molecule/default/bed.py", *sorted((ROOT / "bench").glob("*.py"))]:
        name = f"_layout_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it loads
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]


def _skips_outside_the_guard(root: Path) -> list[str]:
    """``pytest.skip``/``importorskip``/``mark.skip*`` used anywhere but the CI guard."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in
                    {"skip", "skipif", "importorskip"}
                    and path.name != "fixtures.py"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_tests_skip_only_through_the_ci_guard() -> None:
    """A missing tool calls tests.bed.fixtures.unavailable, which FAILS under CI=true."""
    assert _skips_outside_the_guard(ROOT / "tests") == []


def test_the_skip_finder_finds_a_bare_skip(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("import pytest\n\npytest.skip('no tool')\n")
    (tmp_path / "fixtures.py").write_text("import pytest\npytest.skip('the guard')\n")
    assert _skips_outside_the_guard(tmp_path) == ["test_x.py:3"]
