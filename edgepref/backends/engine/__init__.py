"""The engine that owns llama.cpp. `Engine` implements the `backend.Backend` protocol."""

from .core import Engine
from .jobs import EngineStats
from .handles import gpu_offload_supported

__all__ = ["Engine", "EngineStats", "gpu_offload_supported"]
