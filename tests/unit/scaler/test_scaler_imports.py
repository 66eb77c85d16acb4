"""The scaler's modules import one another without cycles (read from their import statements,
those inside functions included), so each layer can be loaded, read and tested on its own: the
policy interface, the rule policies' registry, the learned policy's observation and actor."""

from __future__ import annotations

import ast
from pathlib import Path

import services.scaler

ROOT = Path(services.scaler.__file__).parent
PACKAGE = "services.scaler"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        graph[name] = {m for m in imported if m in paths and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for dependency in sorted(graph[module]):
            if dependency in path:
                found.append([*path[path.index(dependency) :], dependency])
            elif dependency not in done:
                visit(dependency, [*path, dependency])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_scaler_has_no_import_cycles() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.learning.fallback" in graph[f"{PACKAGE}.policies"]
    assert cycles(graph) == []
