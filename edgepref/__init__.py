"""edgepref: turn a list of instructions into a DPO preference dataset, offline, with llama.cpp.

The public Python API lives here. `import edgepref` stays cheap: it imports the registry, model
files and errors, which use only the standard library at import time; every other export is
listed in `_LAZY` and imported on first attribute access (the engine loads llama_cpp).
"""

from __future__ import annotations

import importlib

from .errors import EdgeprefError
from .modelfiles import pull_model, resolve_model_path
from .registry import ModelEntry, load_registry

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use (see __getattr__)
_LAZY: dict[str, str] = {
    "Engine": "edgepref.engine",
    "ChatRequest": "edgepref.backend",
    "Sampling": "edgepref.backend",
    "PipelineConfig": "edgepref.config",
    "PoolMember": "edgepref.config",
    "JudgeConfig": "edgepref.config",
    "EvolveConfig": "edgepref.config",
    "load_config": "edgepref.config",
    "PairConfig": "edgepref.pair",
    "Record": "edgepref.records",
    "read_instructions": "edgepref.inputs",
    "run_pipeline": "edgepref.pipeline",
    "Runner": "edgepref.pipeline",
    "complete": "edgepref.complete",
    "evolve": "edgepref.evolve",
    "judge": "edgepref.judge",
    "pair_records": "edgepref.pair",
    "ServerBackend": "edgepref.remote",
    "merge_runs": "edgepref.merge",
}

__all__ = [
    "__version__",
    "EdgeprefError",
    "ModelEntry",
    "load_registry",
    "pull_model",
    "resolve_model_path",
    *_LAZY,
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'edgepref' has no attribute {name!r}")
