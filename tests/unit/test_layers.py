"""The architecture as a test: which package may import which, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"


def _imports(path: Path) -> set[str]:
    """worker.* modules a file imports, type-only imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("worker"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("worker"))
    return found


def _modules() -> dict[str, Path]:
    return {".".join(("worker", *p.relative_to(WORKER).with_suffix("").parts))
            .removesuffix(".__init__"): p for p in WORKER.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # `worker` itself re-exports the API; importing a submodule runs it, not a cycle
    return {name: {t for t in _imports(path) if t in modules and t not in (name, "worker")}
            for name, path in modules.items()}


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 2 else ""


def test_the_enrichment_contract_imports_no_other_package() -> None:
    graph = _graph()
    wrong = {m: sorted(t for t in _reach(graph, m) if _package(t) not in ("", "enrichment"))
             for m in graph if _package(m) == "enrichment"}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_the_database_layer_imports_only_pure_values() -> None:
    """db/ may use value types of other packages, never code that reaches the database."""
    graph = _graph()
    wrong = {}
    for module in (m for m in graph if _package(m) == "db"):
        bad = [t for t in graph[module] if _package(t) not in ("", "db")
               and any(_package(x) == "db" for x in _reach(graph, t) | {t})]
        if bad:
            wrong[module] = sorted(bad)
    assert wrong == {}


def test_only_the_command_imports_the_command() -> None:
    graph = _graph()
    wrong = {m: sorted(t for t in graph[m] if _package(t) == "cli")
             for m in graph if _package(m) != "cli" and m != "worker.__main__"}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_no_import_cycle() -> None:
    graph = _graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
    assert cycles == []
