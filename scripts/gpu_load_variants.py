"""Load a GGUF every way the engine and llama-cpp-python can, each in its own process, to find
which one crashes on a GPU build (and where).

    python scripts/gpu_load_variants.py MODEL.gguf [--out DIR]

Variants (each a subprocess with faulthandler on; a crash is a negative exit code):
  llama            llama-cpp-python's `Llama`, every layer offloaded, 4 tokens generated
  raw-auto         llama_model_load_from_file with llama.cpp's default params (load mode AUTO)
  raw-mmap         the same with load mode MMAP (what `Llama` sets)
  engine           edgepref's Engine as it runs (explicit MMAP, its log callback), one request
  engine-auto      the Engine with EDGEPREF_LOAD_MODE=auto (llama.cpp's default load mode)
  engine-nolog     the Engine without its llama.cpp log callback (EDGEPREF_LLAMA_LOG_CALLBACK=0)
  engine-0-layers  the Engine with nothing offloaded (--n-gpu-layers 0)

Where gdb exists, a variant that crashed runs once more under gdb and its native backtrace is
saved beside the log. Prints one line per variant; --out keeps each variant's output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "llama": ({}, "llama"),
    "raw-auto": ({}, "raw-auto"),
    "raw-mmap": ({}, "raw-mmap"),
    "engine": ({}, "engine"),
    "engine-auto": ({"EDGEPREF_LOAD_MODE": "auto"}, "engine"),
    "engine-nolog": ({"EDGEPREF_LLAMA_LOG_CALLBACK": "0"}, "engine"),
    "engine-0-layers": ({}, "engine-0"),
}


def child(kind: str, model: str) -> None:
    """One load, in this process."""
    import llama_cpp as C

    if kind == "llama":
        llm = C.Llama(model, n_gpu_layers=-1, n_ctx=256, verbose=False)
        out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
        print("text:", out["choices"][0]["text"])
        return
    if kind.startswith("raw"):
        C.llama_backend_init()
        params = C.llama_model_default_params()
        params.n_gpu_layers = -1
        if kind == "raw-mmap":
            params.load_mode = C.LLAMA_LOAD_MODE_MMAP
        ptr = C.llama_model_load_from_file(model.encode(), params)
        print("loaded:", bool(ptr))
        if ptr:
            C.llama_model_free(ptr)
        return
    from edgepref.backends.base import ChatRequest, Sampling
    from edgepref.backends.engine import Engine

    layers = 0 if kind == "engine-0" else None
    with Engine(model, n_slots=2, n_ctx=256, n_gpu_layers=layers, check_memory=False) as engine:
        res = engine.chat([ChatRequest([{"role": "user", "content": "Say hi."}], Sampling(max_tokens=4))])[0]
        print("text:", res.text, "| gpu layers:", engine.n_gpu_layers, "| error:", res.error)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=120)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model)
        return
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    gdb = shutil.which("gdb")
    for name, (env, kind) in VARIANTS.items():
        cmd = [sys.executable, "-X", "faulthandler", __file__, args.model, "--child", kind]
        run_env = {**os.environ, **env}
        try:
            proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=args.timeout)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, text = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
        status = "ok" if rc == 0 else f"CRASH rc={rc}" if isinstance(rc, int) and rc < 0 else f"FAIL rc={rc}"
        last = [ln for ln in str(text).splitlines() if ln.strip()][-1:] or [""]
        print(f"{name:16s} {status:14s} {last[0][:150]}", flush=True)
        if args.out:
            (args.out / f"{name}.log").write_text(str(text))
        if isinstance(rc, int) and rc < 0 and gdb and args.out:
            bt = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 40", "-ex", "info sharedlibrary",
                                 "--args", *cmd], env=run_env, capture_output=True, text=True,
                                timeout=args.timeout * 2)
            (args.out / f"{name}.gdb.txt").write_text(bt.stdout + bt.stderr)
            frames = [ln for ln in bt.stdout.splitlines() if ln.startswith("#")][:6]
            for ln in frames:
                print(f"    {ln[:160]}", flush=True)


if __name__ == "__main__":
    main()
