"""Owners of llama.cpp's C handles (model, context, batch, sampler); the model handle also reads
the chat template string the GGUF carries (template.py renders it).

Each class frees its handle exactly once (`close()` is idempotent, `__del__` calls it).
C failures become `EngineError`s. Only the engine package uses this module.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as C
import numpy as np

from ...core.errors import EngineError

# llama.cpp logs to stderr by default; we keep the recent lines so that an error (a grammar
# that does not parse, a model that does not load) can quote what llama.cpp said.
_RECENT_LOG: collections.deque[str] = collections.deque(maxlen=40)
_LOG_LEVEL_WARN = 3


@C.llama_log_callback
def _log_callback(level: int, text: bytes, _user: object) -> None:
    if level >= _LOG_LEVEL_WARN and text:
        _RECENT_LOG.append(text.decode("utf-8", "replace").rstrip())
    if os.environ.get("EDGEPREF_LLAMA_LOG"):
        sys.stderr.write(text.decode("utf-8", "replace"))


_BACKEND_READY = []


def init_backend() -> None:
    if not _BACKEND_READY:
        # EDGEPREF_LLAMA_LOG_CALLBACK=0 keeps llama.cpp's own logging (a GPU diagnosis variant,
        # scripts/gpu_load_variants.py); errors then quote nothing of what llama.cpp said
        if os.environ.get("EDGEPREF_LLAMA_LOG_CALLBACK", "1") != "0":
            C.llama_log_set(_log_callback, ctypes.c_void_p(0))
        C.llama_backend_init()
        _BACKEND_READY.append(True)


def recent_log(n: int = 5) -> str:
    return " | ".join(list(_RECENT_LOG)[-n:])


def cpu_has_amx() -> bool:
    """AMX tile kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the Sapphire Rapids VMs we
    tested with llama-cpp-python 0.3.36, for any batch of more than one token; on such CPUs we load
    weights without llama.cpp's extra (AMX/repack) buffer types."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return " amx_tile" in fh.read()
    except OSError:
        return False


def default_use_extra_buffers() -> bool:
    env = os.environ.get("EDGEPREF_EXTRA_BUFFERS")
    if env is not None:
        return env.strip() not in {"0", "false", "no", ""}
    return not cpu_has_amx()


# n_gpu_layers that offloads every layer (llama-cpp-python maps its -1 to this same value)
ALL_LAYERS = 2**31 - 1


def gpu_offload_supported() -> bool:
    return bool(C.llama_supports_gpu_offload())


def default_gpu_layers() -> int:
    """Every layer on the GPU when llama.cpp was built with a GPU backend (CUDA, Metal), else none."""
    return ALL_LAYERS if gpu_offload_supported() else 0


# How llama.cpp reads the weights: memory-mapped, as llama-cpp-python's `Llama` does by default
# (use_mmap=True). llama.cpp's own default is AUTO (-1), which probes every offload device's
# properties while loading tensors, a branch that only runs when a GPU device exists.
LOAD_MODES = {"mmap": C.LLAMA_LOAD_MODE_MMAP, "none": C.LLAMA_LOAD_MODE_NONE, "auto": C.LLAMA_LOAD_MODE_AUTO}
DEFAULT_LOAD_MODE = "mmap"


def model_params(n_gpu_layers: int, use_extra_buffers: bool, load_mode: str = DEFAULT_LOAD_MODE):
    """The engine's llama_model_params: llama.cpp's defaults with every field the engine decides
    set explicitly (tests/test_engine.py compares them with those of a default `Llama`)."""
    if load_mode not in LOAD_MODES:
        raise EngineError(f"unknown load mode {load_mode!r}; choose from {', '.join(LOAD_MODES)}")
    params = C.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = use_extra_buffers
    params.load_mode = LOAD_MODES[load_mode]
    return params


def default_load_mode() -> str:
    """EDGEPREF_LOAD_MODE (mmap, none or auto), else mmap."""
    return os.environ.get("EDGEPREF_LOAD_MODE", DEFAULT_LOAD_MODE).strip().lower()


@dataclass(frozen=True)
class ControlToken:
    """A token that special-token parsing makes of its text; `lstrip`/`rstrip`: llama.cpp drops
    the whitespace before/after it in the text (the token's LSTRIP/RSTRIP attributes)."""

    id: int
    text: str
    lstrip: bool
    rstrip: bool


class LlamaModel:
    """A GGUF model; `vocab_only` reads its vocabulary and metadata alone (no weights: it can
    tokenize and check grammars, not decode)."""

    def __init__(self, path: Path, n_gpu_layers: int, use_extra_buffers: bool, load_mode: str | None = None,
                 vocab_only: bool = False):
        init_backend()
        params = model_params(n_gpu_layers, use_extra_buffers, load_mode or default_load_mode())
        params.vocab_only = vocab_only
        _RECENT_LOG.clear()
        self.ptr = C.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not self.ptr:
            raise EngineError(
                f"llama.cpp could not load {path}: {recent_log() or 'no detail'}",
                "check that the file is a complete GGUF (`edgepref models info PATH`)",
            )
        self.path = Path(path)
        self.vocab = C.llama_model_get_vocab(self.ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(self.ptr)
        self.n_layer = C.llama_model_n_layer(self.ptr)
        self.kv_bytes_per_token = 0
        if not vocab_only:  # without weights the per-layer sizes are unset (llama.cpp aborts on them)
            n_embd = C.llama_model_n_embd(self.ptr)
            n_head = max(1, C.llama_model_n_head(self.ptr))
            n_head_kv = C.llama_model_n_head_kv(self.ptr)
            self.kv_bytes_per_token = self.n_layer * 2 * (n_embd // n_head) * n_head_kv * 2  # f16 K+V
        self.bos_id = C.llama_vocab_bos(self.vocab)
        self.eos_id = C.llama_vocab_eos(self.vocab)
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.vocab))
        self.add_eos = bool(C.llama_vocab_get_add_eos(self.vocab))
        template = C.llama_model_chat_template(self.ptr, None)
        self.chat_template = template.decode("utf-8") if template else None
        self._token_array: TokenArray | None = None
        self._control_tokens: list[ControlToken] | None = None

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return C.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (C.llama_token * cap)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (C.llama_token * cap)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def control_tokens(self) -> list["ControlToken"]:
        """The tokens that only special-token parsing turns text into (llama.cpp's CONTROL and
        UNKNOWN attributes: `<|im_end|>`, `<|endoftext|>`), longest text first, the order in which
        llama.cpp's tokenizer looks for them. User-defined tokens are not among them: llama.cpp
        (like transformers) matches those in any text."""
        if self._control_tokens is None:
            found = []
            for token in range(self.n_vocab):
                attr = C.llama_vocab_get_attr(self.vocab, token)
                if attr & (C.LLAMA_TOKEN_ATTR_CONTROL | C.LLAMA_TOKEN_ATTR_UNKNOWN):
                    text = self.token_text(token)
                    if text:
                        found.append(ControlToken(token, text, bool(attr & C.LLAMA_TOKEN_ATTR_LSTRIP),
                                                  bool(attr & C.LLAMA_TOKEN_ATTR_RSTRIP)))
            self._control_tokens = sorted(found, key=lambda t: -len(t.text))
        return self._control_tokens

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's bytes; a control token's text only with `special`."""
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def token_array(self) -> "TokenArray":
        """The model's one reusable token-data array (made on first use: 1.8 MB for Qwen)."""
        if self._token_array is None:
            self._token_array = TokenArray(self.n_vocab)
        return self._token_array

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if getattr(self, "ptr", None):
            C.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


class LlamaContext:
    def __init__(
        self,
        model: LlamaModel,
        n_ctx: int,
        n_batch: int,
        n_seq: int,
        n_threads: int,
        flash_attn: bool | None = None,
        op_offload: bool = True,
    ):
        params = C.llama_context_default_params()
        # llama.cpp's default offloads big batches' matrix products to a GPU device even when no
        # layer lives there (weights copied per operation); off, n_gpu_layers=0 means the CPU only
        params.op_offload = op_offload
        if flash_attn is not None:
            params.flash_attn_type = (
                C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # One KV pool for all sequences: a shared prompt's cells can be copied to another
        # sequence (llama_memory_seq_cp) instead of being decoded again.
        params.kv_unified = os.environ.get("EDGEPREF_KV_UNIFIED", "1") == "1"
        params.no_perf = True
        _RECENT_LOG.clear()
        self.ptr = C.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise EngineError(
                f"llama.cpp could not create a context of {n_ctx} tokens: {recent_log() or 'no detail'}",
                "lower --slots or --n-ctx",
            )
        self.memory = C.llama_get_memory(self.ptr)
        self.unified = bool(params.kv_unified)
        self.n_ctx = C.llama_n_ctx(self.ptr)

    def decode(self, batch: "LlamaBatch") -> int:
        code = C.llama_decode(self.ptr, batch.batch)
        if code < 0 or code > 1:
            raise EngineError(f"llama_decode failed with code {code}: {recent_log()}")
        return code

    def logits(self, index: int, n_vocab: int) -> np.ndarray:
        ptr = C.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        C.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def clear(self) -> None:
        """Empty the whole KV cache: the next tokens decoded land from its first cell."""
        C.llama_memory_clear(self.memory, False)

    def save_seq(self, seq: int) -> tuple[object, int]:
        """The bytes of the sequence's KV cells (llama_state_seq_get_data) and their count."""
        size = C.llama_state_seq_get_size(self.ptr, seq)
        buf = (ctypes.c_uint8 * size)()
        return buf, C.llama_state_seq_get_data(self.ptr, buf, size, seq)

    def load_seq(self, seq: int, state: tuple[object, int]) -> None:
        """Put saved cells (save_seq) back into the sequence, which must be empty."""
        buf, size = state
        if C.llama_state_seq_set_data(self.ptr, buf, size, seq) != size:
            raise EngineError(f"llama.cpp could not load a saved prompt prefix: {recent_log() or 'no detail'}")

    def share_prefix(self, src: int, dst: int, n: int) -> None:
        """Make dst hold the first n cells of src (dst must be empty)."""
        if self.unified:
            C.llama_memory_seq_cp(self.memory, src, dst, 0, n)  # shares cells, no copy
        else:
            # Per-sequence KV streams only copy whole streams: copy, then cut the tail.
            C.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
            C.llama_memory_seq_rm(self.memory, dst, n, -1)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            C.llama_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


class LlamaBatch:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.batch = C.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, want_logits: bool) -> int:
        i = self.n
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = want_logits
        self.n += 1
        b.n_tokens = self.n
        return i

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            C.llama_batch_free(self.batch)
            self.batch = None

    def __del__(self) -> None:
        self.close()


_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class TokenArray:
    """A reusable llama_token_data array over the whole vocabulary, for applying samplers to
    logits held in numpy (one per model; the engine samples from one thread)."""

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self.buf = (C.llama_token_data * n_vocab)()
        self.view = np.frombuffer(self.buf, dtype=_TOKEN_DATA)
        self.ids = np.arange(n_vocab, dtype=np.int32)

    def fill(self, logits: np.ndarray) -> "C.llama_token_data_array":
        self.view["id"] = self.ids
        self.view["logit"] = logits
        self.view["p"] = 0.0
        return C.llama_token_data_array(self.buf, self.n_vocab, -1, False)


class LlamaSampler:
    """A sampler chain ([repeat penalty] -> greedy, or top_k/top_p/min_p/temp/dist) and an
    optional grammar kept beside it.

    `sample(logits)` draws from a numpy array: a prompt's first token goes through it whether
    its logits were just decoded or kept with a cached prompt, so both draws are one code path.
    `sample_at` draws a generation step from a row of the last decode.

    With a grammar, the chain first picks a token from the unconstrained distribution and the
    grammar checks only that one token; the grammar is applied to the whole vocabulary only when
    that token is not allowed (as llama.cpp's common sampler does). Checking one token instead of
    150k is most of the cost of a grammar-constrained step.
    """

    def __init__(self, model: LlamaModel, sampling, seed: int, grammar: str | None):
        self.ptr = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self.grammar = None
        try:
            if grammar:
                g, problem = _init_grammar(model, grammar)
                if not g:
                    raise EngineError(f"invalid GBNF grammar: {problem}")
                self.grammar = g
            if sampling.repeat_penalty != 1.0:
                self._add(C.llama_sampler_init_penalties(64, sampling.repeat_penalty, 0.0, 0.0))
            if sampling.greedy:
                self._add(C.llama_sampler_init_greedy())
            else:
                if sampling.top_k > 0:
                    self._add(C.llama_sampler_init_top_k(sampling.top_k))
                if sampling.top_p < 1.0:
                    self._add(C.llama_sampler_init_top_p(sampling.top_p, 1))
                if sampling.min_p > 0.0:
                    self._add(C.llama_sampler_init_min_p(sampling.min_p, 1))
                self._add(C.llama_sampler_init_temp(sampling.temperature))
                self._add(C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except Exception:
            self.close()
            raise
        self.array = model.token_array()
        self._one = (C.llama_token_data * 1)()

    def _add(self, smpl) -> None:
        C.llama_sampler_chain_add(self.ptr, smpl)  # the chain owns it from here

    def sample(self, logits: np.ndarray) -> int:
        """Draw the next token from `logits` and advance the chain (and grammar) past it."""
        token = self._pick(logits, with_grammar=False)
        if self.grammar is not None:
            self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
            one = C.llama_token_data_array(self._one, 1, -1, False)
            C.llama_sampler_apply(self.grammar, ctypes.byref(one))
            if not np.isfinite(self._one[0].logit):
                token = self._pick(logits, with_grammar=True)
            C.llama_sampler_accept(self.grammar, token)
        C.llama_sampler_accept(self.ptr, token)
        return token

    def sample_at(self, ctx: "LlamaContext", index: int, n_vocab: int) -> int:
        """The same draw from batch row `index` of the last decode. Without a grammar llama.cpp
        reads the logits in place, which is the same arithmetic without a copy into numpy."""
        if self.grammar is None:
            return C.llama_sampler_sample(self.ptr, ctx.ptr, index)  # applies and accepts
        return self.sample(ctx.logits(index, n_vocab))

    def _pick(self, logits: np.ndarray, with_grammar: bool) -> int:
        cur = self.array.fill(logits)
        if with_grammar:
            C.llama_sampler_apply(self.grammar, ctypes.byref(cur))
        C.llama_sampler_apply(self.ptr, ctypes.byref(cur))
        return int(self.array.buf[cur.selected].id)

    def close(self) -> None:
        if getattr(self, "grammar", None):
            C.llama_sampler_free(self.grammar)
            self.grammar = None
        if getattr(self, "ptr", None):
            C.llama_sampler_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


def _init_grammar(model: LlamaModel, grammar: str):
    """(llama.cpp's grammar sampler, None), or (None, what llama.cpp said was wrong)."""
    _RECENT_LOG.clear()
    # llama.cpp's grammar parser reports errors with fprintf(stderr), not its logger.
    with _captured_stderr() as said:
        g = C.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
    if g:
        return g, None
    return None, " ".join(said()) or recent_log(3) or "parse failed"


def grammar_problem(model: LlamaModel, grammar: str) -> str | None:
    """Why llama.cpp cannot use GBNF `grammar` with this model's vocabulary, or None."""
    g, problem = _init_grammar(model, grammar)
    if g:
        C.llama_sampler_free(g)
    return problem


@contextlib.contextmanager
def _captured_stderr():
    """Redirect file descriptor 2 (what C code writes to) into a temp file for a moment."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())


@contextlib.contextmanager
def engine_buffer_types():
    """While active, llama-cpp-python's own loaders (`Llama`, its server) load weights with the
    same buffer-type choice as our engine; their constructors have no such option."""
    import llama_cpp.llama_cpp as raw

    original = raw.llama_model_default_params
    use_extra = default_use_extra_buffers()

    def patched():
        params = original()
        params.use_extra_bufts = use_extra
        return params

    raw.llama_model_default_params = patched
    try:
        yield
    finally:
        raw.llama_model_default_params = original


def load_high_level_llama(path: str | os.PathLike, **kwargs):
    """llama-cpp-python's own `Llama` with our buffer-type choice and, unless given, the engine's
    offload (every layer on a GPU build): the reference in tests and benchmarks."""
    kwargs.setdefault("n_gpu_layers", default_gpu_layers())
    with engine_buffer_types():
        return C.Llama(str(path), verbose=False, **kwargs)


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (MemAvailable on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
