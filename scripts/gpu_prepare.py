"""Prepare what a lent GPU machine needs for scripts/gpu_check.sh: it has no network, and each call
carries at most 64 MiB of files. Run here (with network), then carry `gpu_carry/` to the device.

    python scripts/gpu_prepare.py [--out gpu_carry] [--sdist PATH]

Writes, each piece under 64 MiB:
  gpu_carry/src/llama-cpp-python.tar.xz  llama-cpp-python 0.3.36's source without what a CUDA
                                          build of the library and of llama-server does not use
                                          (llama.cpp's vocab files, docs, media, other backends)
  gpu_carry/models/smollm2-135m.gguf.partNN  SmolLM2-135M split in pieces, and its sha256
  gpu_carry/models/tiny-random.gguf        a 2-layer llama-architecture GGUF with random
                                          weights (about 1 MB): loads and decodes like any model
  gpu_carry/wheels/                       pure-Python wheels edgepref needs that a bare Python
                                          may lack (click, rich, jinja2, ...), for `pip --no-index`

The sequence on the device (README, "GPU offload"), each call under 64 MiB: call 1 carries src/
(44 MiB), the tiny model and the last SmolLM2 piece, and builds; call 2 carries the wheels and
two more pieces; call 3 the last piece, then runs everything on SmolLM2 (the tiny model alone
already gives the load diagnosis). gpu_carry/ is ignored by git.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIECE = 30 * 2**20
DROP = ("vendor/llama.cpp/models", "vendor/llama.cpp/docs", "vendor/llama.cpp/media", "vendor/llama.cpp/benches",
        "vendor/llama.cpp/tests", "vendor/llama.cpp/examples", "docs", "examples", "tests", "docker")
KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda", "ggml-blas"}
# imported by edgepref or its test suite, pure Python (a device may lack them)
WHEELS = ["click", "rich", "markdown-it-py", "mdurl", "pygments", "jinja2", "markupsafe", "diskcache",
          "typing-extensions", "pytest", "iniconfig", "pluggy", "packaging"]


def trimmed_source(sdist: Path, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        top = next(Path(tmp).iterdir())
        for rel in DROP:
            shutil.rmtree(top / rel, ignore_errors=True)
        backends = top / "vendor/llama.cpp/ggml/src"
        for d in backends.iterdir():
            if d.is_dir() and d.name.startswith("ggml-") and d.name not in KEEP_BACKENDS:
                shutil.rmtree(d)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dest, "w:xz") as tar:
            tar.add(top, arcname="llama-cpp-python")


def tiny_gguf(dest: Path, gguf_py: Path) -> None:
    """A llama-architecture GGUF with random weights and a byte-level SentencePiece vocab."""
    sys.path.insert(0, str(gguf_py))
    import numpy as np
    import gguf

    dest.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_vocab, n_embd, n_ff, n_layer, n_head = 259, 64, 128, 2, 4
    w = gguf.GGUFWriter(str(dest), "llama")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", n_vocab, n_embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_k.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_v.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    t("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def split(path: Path, dest_dir: Path, name: str) -> None:
    dest_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        k = 0
        while chunk := fh.read(PIECE):
            digest.update(chunk)
            (dest_dir / f"{name}.part{k:02d}").write_bytes(chunk)
            k += 1
    (dest_dir / f"{name}.sha256").write_text(f"{digest.hexdigest()}  {name}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_carry")
    ap.add_argument("--sdist", type=Path, default=None, help="llama_cpp_python-0.3.36.tar.gz (default: pip download)")
    args = ap.parse_args()
    sdist = args.sdist
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "llama-cpp-python==0.3.36", "-d", tmp], check=True)
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        trimmed_source(sdist, args.out / "src/llama-cpp-python.tar.xz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/gguf-py/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        gguf_py = next(Path(tmp).glob("*/vendor/llama.cpp/gguf-py"))
        tiny_gguf(args.out / "models/tiny-random.gguf", gguf_py)
    from edgepref.models.modelfiles import resolve_model_path

    split(resolve_model_path("smollm2-135m"), args.out / "models", "smollm2-135m.gguf")
    subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--no-deps",
                    "-d", str(args.out / "wheels"), *WHEELS], check=True)
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size / 2**20:8.1f} MiB  {p.relative_to(args.out)}")


if __name__ == "__main__":
    main()
