"""The package tree is the layer table (README, "How it is built"): each folder of edgepref/ is one
layer, and a module imports only from its own folder or the folders below it; no import circle
anywhere. Read from the source with `ast`, lazy and type-checking imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import edgepref

# lowest first
FOLDERS = ["core", "prompts", "data", "models", "backends", "judging", "stages", "runs", "ui"]
RANK = {name: i for i, name in enumerate(FOLDERS)}
PACKAGE = Path(edgepref.__file__).parent
TOP_LEVEL = {"__init__", "__main__"}  # the public API and `python -m edgepref`: above every folder


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """The edgepref modules (dotted, below the package) that `path` imports, relative imports
    resolved; `from . import x` counts as importing x."""
    rel = path.relative_to(PACKAGE)
    package = list(rel.parts[:-1])  # the package holding this file
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            found.add(".".join(parts))
            found.update(".".join([*parts, a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgepref"):
            parts = node.module.split(".")[1:]
            found.add(".".join(parts))
            found.update(".".join([*parts, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("edgepref."))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


def folder(module: str) -> str:
    return module.split(".")[0]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_is_in_a_layer_folder() -> None:
    loose = [m for m in modules() if folder(m) not in RANK and m not in TOP_LEVEL]
    assert not loose, f"modules outside the layer folders: {sorted(loose)}"


def test_no_folder_imports_from_a_higher_one() -> None:
    wrong = []
    for name, path in modules().items():
        if name in TOP_LEVEL:
            continue
        for dep in imported_modules(path):
            if dep in TOP_LEVEL or dep == "":
                continue
            if RANK[folder(dep)] > RANK[folder(name)]:
                wrong.append(f"{name} imports {dep} ({folder(dep)} is above {folder(name)})")
    assert not wrong, "\n".join(sorted(wrong))


def import_graph() -> dict[str, set[str]]:
    return {name: {d for d in imported_modules(path) if d != name and d != ""}
            for name, path in modules().items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    graph = import_graph()
    # a package's __init__ re-exporting its own modules is not a circle of design
    for name in graph:
        graph[name] = {d for d in graph[name] if not (d == name.rsplit(".", 1)[0] and modules()[d].name == "__init__.py")}
    assert circles(graph) == []


def test_the_checks_see_relative_lazy_and_type_checking_imports() -> None:
    core = modules()["backends.engine.core"]
    assert {"backends.base", "core.errors", "models.modelfiles", "models.registry"} <= imported_modules(core)
    assert "runs.pipeline" in imported_modules(modules()["ui.cli.pipeline"])  # a lazy `from ...runs.pipeline`
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
