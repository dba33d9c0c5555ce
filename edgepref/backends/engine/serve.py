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

In front of it, `RequestGuard` answers what llama-cpp-python's server would answer with a 500
and a traceback, or with another model: a body that is not JSON gets 400, a JSON body with wrong
fields 422, a model id it does not serve 404 with the served ids (after the API key check, so a
client without the key learns nothing else). `serve` binds the port before it loads a model, so a
bad or busy port is a one-line error, and no traceback reaches a client or the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import io
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ...core.errors import EdgeprefError
from .handles import LlamaModel, engine_buffer_types, grammar_problem

# The server's POST endpoints with a JSON body, and the name of the body's type in
# llama_cpp.server.types (what the endpoint validates it as)
BODY_TYPES = {
    "/v1/chat/completions": "CreateChatCompletionRequest",
    "/v1/completions": "CreateCompletionRequest",
    "/v1/engines/copilot-codex/completions": "CreateCompletionRequest",
    "/v1/embeddings": "CreateEmbeddingRequest",
    "/extras/tokenize": "TokenizeInputRequest",
    "/extras/tokenize/count": "TokenizeInputRequest",
    "/extras/detokenize": "DetokenizeInputRequest",
}

# where serve's one-line notes on failed requests go: uvicorn's own error log
_LOG = logging.getLogger("uvicorn.error")


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
    app = create_app(server_settings=ServerSettings(api_key=api_key), model_settings=settings)
    return RequestGuard(app, models, api_key)


class RequestGuard:
    """ASGI middleware in front of llama-cpp-python's app: checks the API key, then the body of
    every POST to a JSON endpoint (`check_body`), before the app sees it; an exception that
    escapes the app becomes a one-line log entry (and a JSON 500 when nothing was sent yet).
    `models`: (served id, gguf path) pairs, the first served when a body names none."""

    def __init__(self, app, models: Sequence[tuple[str, str | Path]], api_key: str | None):
        from llama_cpp.server import types

        self.app = app
        self.paths = {alias: Path(path) for alias, path in models}
        self.served = list(self.paths)
        self.api_key = api_key
        self.body_types = {path: getattr(types, name) for path, name in BODY_TYPES.items()}
        self._vocabs: dict[str, LlamaModel] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.body_types:
            await self._run_app(scope, receive, send)
            return
        if self.api_key is not None and not self._authorized(scope):
            await send_error(send, 401, "invalid or missing API key", "authentication_error")
            return
        body, more = await _read_body(receive)
        problem = self.check_body(scope["path"], body)
        if problem is not None:
            await send_error(send, *problem)
            return
        await self._run_app(scope, _replay(body, more, receive), send)

    def _authorized(self, scope: dict) -> bool:
        headers = dict(scope.get("headers") or ())
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key.encode())

    def check_body(self, path: str, body: bytes) -> tuple[int, str, str] | None:
        """(status, message, error type) for a body the endpoint at `path` cannot take, or None."""
        from pydantic import ValidationError

        try:
            payload = json.loads(body)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            return 400, f"the request body is not valid JSON ({exc})", "invalid_request_error"
        if not isinstance(payload, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(payload), "a number")
            return 422, f"the request body must be a JSON object, not {kind}", "invalid_request_error"
        model = payload.get("model")
        if isinstance(model, str) and model not in self.served:
            return (404, f"model {model!r} is not served here; served: {', '.join(self.served)}",
                    "model_not_found")
        try:
            self.body_types[path].model_validate(payload)
        except ValidationError as exc:
            fields = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:5]
            )
            return 422, f"the request body has wrong fields: {fields}", "invalid_request_error"
        grammar = payload.get("grammar")
        if grammar:  # llama-cpp-python's server crashes on a grammar llama.cpp cannot parse
            problem = grammar_problem(self._vocab(model or self.served[0]), grammar)
            if problem:
                return 400, f"the grammar does not parse: {problem}", "invalid_request_error"
        return None

    def _vocab(self, served_id: str) -> LlamaModel:
        """The served model's vocabulary (loaded without weights, on first use)."""
        if served_id not in self._vocabs:
            self._vocabs[served_id] = LlamaModel(self.paths[served_id], 0, False, vocab_only=True)
        return self._vocabs[served_id]

    async def _run_app(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the app failed: one line in the log, never a traceback
            _LOG.error("request to %s failed: %s: %s", scope.get("path"), type(exc).__name__, exc)
            if not started and scope["type"] == "http":
                await send_error(send, 500, f"the server failed: {type(exc).__name__}: {exc}", "internal_server_error")


async def send_error(send: Callable, status: int, message: str, kind: str) -> None:
    """An OpenAI-style JSON error answer."""
    raw = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


async def _read_body(receive: Callable) -> tuple[bytes, bool]:
    """The whole request body, and whether the client is still there (no disconnect seen)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), True


def _replay(body: bytes, connected: bool, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """A receive() that gives the app the body already read, then passes on what the real one
    says (the app asks again only to learn of a client that went away)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive() if connected else {"type": "http.disconnect"}

    return replay


@contextlib.contextmanager
def _quiet_route_errors():
    """llama-cpp-python's route handler prints a traceback to stderr for any error it has no
    message pattern for (a grammar that does not parse, say); while serving, its answer stays the
    same and the traceback becomes one line in the log."""
    from llama_cpp.server.errors import RouteErrorHandler

    original = RouteErrorHandler.error_message_wrapper

    def quiet(self, error, body=None):
        with contextlib.redirect_stderr(io.StringIO()):
            status, answer = original(self, error, body)
        if status >= 500:
            _LOG.error("request failed: %s: %s", type(error).__name__, error)
        return status, answer

    RouteErrorHandler.error_message_wrapper = quiet
    try:
        yield
    finally:
        RouteErrorHandler.error_message_wrapper = original


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or an EdgeprefError that says why there is none."""
    if not 1 <= port <= 65535:
        raise EdgeprefError(f"--port {port} is not a TCP port", "choose a port from 1 to 65535, e.g. --port 8080")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise EdgeprefError(f"cannot listen on --host {host}: {exc.strerror}",
                            "pass an address of this machine: 127.0.0.1, or 0.0.0.0 for all interfaces") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EdgeprefError(f"port {port} on {host} is in use",
                                "stop what listens there, or pick another --port") from None
        if exc.errno == errno.EACCES:
            raise EdgeprefError(f"no permission to listen on port {port} of {host}",
                                "ports below 1024 need administrator rights; pick another --port, e.g. 8080") from None
        raise EdgeprefError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            "check --host and --port") from None
    return sock


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
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the server in this process until interrupted. The port is taken before any model
    loads; `on_ready` is called once the models are loaded, just before requests are taken."""
    sock = listen_socket(host, port)
    with contextlib.closing(sock), engine_buffer_types(), _quiet_route_errors():
        app = build_app(models, n_ctx=n_ctx, n_threads=n_threads, api_key=api_key, n_gpu_layers=n_gpu_layers)
        import uvicorn  # in the same [server] extra as what build_app checked for

        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        if on_ready is not None:
            on_ready()
        server.run(sockets=[sock])


def served_models(names: Sequence[str], registry) -> list[tuple[str, Path]]:
    """(served id, gguf path) per MODEL argument: a registry name is served under its name, a
    .gguf file under its file name without the suffix."""
    from ...models.modelfiles import resolve_model_path

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
