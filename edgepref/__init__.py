"""edgepref: turn a list of instructions into a DPO preference dataset, offline, with llama.cpp.

The public Python API lives here. `import edgepref` stays cheap: it imports the registry, model
files and errors, which use only the standard library at import time; every other export is
listed in `_LAZY` and imported on first attribute access (the engine loads llama_cpp).
"""

from __future__ import annotations

import importlib

from .core.errors import EdgeprefError
from .models.modelfiles import pull_model, resolve_model_path
from .models.registry import ModelEntry, load_registry

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use (see __getattr__)
_LAZY: dict[str, str] = {
    "Engine": "edgepref.backends.engine",
    "ChatRequest": "edgepref.backends.base",
    "Sampling": "edgepref.backends.base",
    "PipelineConfig": "edgepref.stages.config",
    "PoolMember": "edgepref.stages.config",
    "JudgeConfig": "edgepref.stages.config",
    "EvolveConfig": "edgepref.stages.config",
    "load_config": "edgepref.stages.config",
    "PairConfig": "edgepref.stages.config",
    "Record": "edgepref.core.records",
    "read_instructions": "edgepref.data.inputs",
    "run_pipeline": "edgepref.runs.pipeline",
    "Runner": "edgepref.runs.pipeline",
    "complete": "edgepref.stages.complete",
    "evolve": "edgepref.stages.evolve",
    "judge": "edgepref.stages.judge",
    "pair_records": "edgepref.stages.pair",
    "ServerBackend": "edgepref.backends.remote",
    "merge_runs": "edgepref.data.merge",
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
