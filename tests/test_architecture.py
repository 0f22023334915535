"""The package's shape: no import cycles, layers that import downwards only, small modules.

Imports are read from the source with ``ast``, lazy ones inside functions included; only the
imports under ``if TYPE_CHECKING:`` are left out (they never run). An edge goes to the module
named in the import: ``from sgs_tad.engine import phase`` to ``sgs_tad.engine.phase`` (a
module), ``from sgs_tad.engine import EndToEnd`` to the package ``sgs_tad.engine``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sgs_tad"
MAX_LINES = 700

# What each wing may import from the others (besides the standard library and torch).
LAYERS = {
    "sgs_tad.engine": {"sgs_tad.engine", "sgs_tad.samplers"},
    "sgs_tad.samplers": {"sgs_tad.samplers"},
    "sgs_tad.training": {"sgs_tad.training", "sgs_tad.engine", "sgs_tad.samplers"},
    "sgs_tad.plan": {"sgs_tad.plan", "sgs_tad.engine", "sgs_tad.encoders", "sgs_tad.samplers"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The sgs_tad modules ``name`` imports, at top level or lazily."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("sgs_tad"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                if not target.startswith("sgs_tad"):
                    continue
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt in graph and not state.get(nxt):
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_lazy_imports_included() -> None:
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_lazy_and_relative_imports_are_read(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sgs_tad.training import trainer\n"
        "def f():\n    from sgs_tad.plan import predict\n"
        "from .sgs import SequentializedGradientSampler\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = _imports("sgs_tad.engine.mod", path, _modules())
    assert found == {"sgs_tad.plan", "sgs_tad.engine.sgs"}


@pytest.mark.parametrize("wing", sorted(LAYERS))
def test_wings_import_downwards_only(wing: str) -> None:
    allowed = LAYERS[wing]

    def inside(name: str, package: str) -> bool:
        return name == package or name.startswith(package + ".")

    bad = {
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if inside(name, wing)
        for target in targets
        if not any(inside(target, a) for a in allowed)
    }
    assert not bad, f"{wing} may import only {sorted(allowed)}: {sorted(bad)}"


def test_modules_stay_small() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _modules().items()
    }
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


def test_public_names_and_commands_still_resolve() -> None:
    import importlib

    import sgs_tad

    for name in sgs_tad.__all__:
        assert getattr(sgs_tad, name) is not None
    for module in ("sgs_tad.plan.__main__", "sgs_tad.extract", "sgs_tad.evaluation.__main__"):
        assert importlib.util.find_spec(module) is not None, module
