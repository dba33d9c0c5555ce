"""Serve local GGUF models over an OpenAI-compatible HTTP API with llama-cpp-python's own server
(`llama_cpp.server`, from `pip install 'edgepref[server]'`).

This is how to try the server path of edgepref on one machine (`edgepref serve`), and what the
tests and `scripts/bench_backends.py` start. It is llama-cpp-python's server unchanged, with
two things set the way edgepref's engine sets them:
  - the weight buffer types: on CPUs with AMX, llama.cpp's extra buffer types crash on batches
    of more than one token (see handles.default_use_extra_buffers), and the server's loader has
    no switch for them, so its default model params are patched while it runs;
  - every layer offloaded when llama.cpp was built with a GPU backend, and flash attention on;
The server answers one request at a time; for parallel slots on a GPU use llama.cpp's own
`llama-server --parallel N` (see the README's "Scaling out").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import EdgeprefError
from .handles import engine_buffer_types


def build_app(
    models: Sequence[tuple[str, str | Path]],
    *,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    api_key: str | None = None,
    n_gpu_layers: int | None = None,
):
    """A FastAPI app serving `models` ((served id, gguf path) pairs) at /v1. The server loads
    models when the app is made and again when a request switches model, so use it inside
    `engine_buffer_types()` (as `serve` does)."""
    try:
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as exc:
        raise EdgeprefError(
            f"llama-cpp-python's server is not installed ({exc.name} is missing)",
            "pip install 'edgepref[server]'",
        ) from None
    if not models:
        raise EdgeprefError("nothing to serve", "name at least one model")
    import os

    from .handles import default_gpu_layers

    threads = n_threads or os.cpu_count() or 1
    gpu = n_gpu_layers if n_gpu_layers is not None else default_gpu_layers()
    settings = [
        ModelSettings(
            model=str(path), model_alias=alias, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
            n_gpu_layers=gpu, verbose=False,
            flash_attn=True,  # as the engine (llama.cpp's "auto" enables it where supported)
        )
        for alias, path in models
    ]
    return create_app(server_settings=ServerSettings(api_key=api_key), model_settings=settings)


def serve(
    models: Sequence[tuple[str, str | Path]],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    api_key: str | None = None,
    n_gpu_layers: int | None = None,
    log_level: str = "warning",
) -> None:
    """Run the server in this process until interrupted."""
    with engine_buffer_types():
        app = build_app(models, n_ctx=n_ctx, n_threads=n_threads, api_key=api_key, n_gpu_layers=n_gpu_layers)
        import uvicorn  # in the same [server] extra as what build_app checked for

        uvicorn.run(app, host=host, port=port, log_level=log_level)



def served_models(names: Sequence[str], registry) -> list[tuple[str, Path]]:
    """(served id, gguf path) per MODEL argument: a registry name is served under its name, a
    .gguf file under its file name without the suffix."""
    from ..modelfiles import resolve_model_path

    return [(Path(m).stem if m.endswith(".gguf") else m, resolve_model_path(m, registry)) for m in names]


def api_key_from_env(var: str | None) -> str | None:
    """The key the server requires, read from environment variable `var` (None: no key)."""
    if not var:
        return None
    import os

    key = os.environ.get(var)
    if not key:
        raise EdgeprefError(f"the environment variable {var} is not set", f"export {var}=...")
    return key


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`edgepref serve MODEL...` in a child process, ready when the constructor returns.
    For tests, benchmarks and notebooks; `kill()` stops it (SIGKILL: a crash, not a goodbye)."""

    def __init__(
        self,
        models: Sequence[str],
        log: str | Path,
        *,
        port: int | None = None,
        n_ctx: int = 2048,
        api_key_env: str | None = None,
        threads: int | None = None,
        timeout: float = 120.0,
    ):
        import os
        import subprocess
        import sys

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = Path(log)
        self.api_key_env = api_key_env
        cmd = [sys.executable, "-m", "edgepref", "serve", *models, "--port", str(self.port), "--n-ctx", str(n_ctx)]
        if api_key_env:
            cmd += ["--api-key-env", api_key_env]
        if threads:
            cmd += ["--threads", str(threads)]
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import os
        import time
        import urllib.request

        deadline = time.time() + timeout
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise EdgeprefError(f"the server exited with code {self.proc.returncode}: {self._tail()}")
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.url}/models", headers=headers), timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise EdgeprefError(f"the server was not ready after {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
