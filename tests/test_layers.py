"""The modules as layers (README, "How it is built"): a module imports only from its own layer or
the layers below it. Read from the source with `ast`, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import edgepref

LAYERS = [
    # 0. foundation: plain data, the backend seam, prompt files, parsers
    {"errors", "records", "paths", "backend", "logprobs", "grammars", "ggufmeta", "prompts"},
    # 1. where models run and where answers are kept
    {"registry", "modelfiles", "engine", "remote", "http_json", "store"},
    # 2. the stages and their settings
    {"config", "stage", "compare", "complete", "evolve", "judge", "verify", "pair", "calibration", "cascade"},
    # 3. runs: inputs, hosting models, the pipeline, its summary and outputs, judge evaluation
    {"settings", "inputs", "rundir", "hosting", "pipeline", "summary", "merge", "export", "evaljudge", "report",
     "report_plots"},
    # 4. the interface
    {"display", "cli", "__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
PACKAGE = Path(edgepref.__file__).parent


def top_module(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_modules(path: Path) -> set[str]:
    """edgepref's top-level modules that `path` imports (relative imports resolved)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for edgepref/x.py, 1 for edgepref/engine/x.py
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1  # how many packages above the module's own
            if up > depth:
                continue
            inside = list(path.relative_to(PACKAGE).parts[:-1])[: depth - up]
            parts = inside + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
            else:  # `from . import x` at the top level
                found.update(alias.name for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(n.split(".")[1] for n in names if n.startswith("edgepref."))
    return found


def test_every_module_has_a_layer():
    modules = {top_module(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert modules <= set(LAYER_OF), sorted(modules - set(LAYER_OF))


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the public API re-exports from every layer
        own = LAYER_OF[top_module(path)]
        for dep in imported_modules(path):
            if dep in LAYER_OF and LAYER_OF[dep] > own:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {dep} (layer {LAYER_OF[dep]} > {own})")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_relative_and_lazy_imports():
    core = PACKAGE / "engine" / "core.py"
    assert {"backend", "errors", "logprobs", "modelfiles", "registry"} <= imported_modules(core)
    assert "pipeline" in imported_modules(PACKAGE / "cli" / "pipeline.py")  # a lazy `from ..pipeline`
