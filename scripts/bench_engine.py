"""Engine throughput: sequential llama-cpp-python vs edgepref's batched engine, side by side.

    python scripts/bench_engine.py --model qwen2.5-coder-0.5b --requests 16 --max-tokens 128 --json bench_engine.json

Both paths get the same chat requests (real instructions), the same model file, n_threads = the
machine's cores and greedy decoding with a fixed token budget (no early stop: `ignore_eos` is not
available in the high-level API, so both stop at end-of-turn; we compare tokens actually decoded
per second of wall time). (a) loops `Llama.create_chat_completion` one request at a time, as
distilabel's llama.cpp backend does; (b) hands all requests to `Engine.chat` at once. Each runs in
its own child process so that peak RSS is measured per path. Prints a table and writes JSON with
`sequential_tok_s`, `engine_tok_s`, `ratio` and the peak RSS of each.

With --llama-server PATH (llama.cpp's server, built from the same llama.cpp), a third path starts
it with --parallel N (N = --slots) and sends all requests at once, N in flight, over HTTP; the
JSON adds `llama_server_tok_s` and `engine_vs_llama_server`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

DEFAULT_INPUT = Path(__file__).resolve().parent / "data/bench_instructions.jsonl"  # see data/README.md
FALLBACK = [
    "Explain how a rainbow forms.",
    "Write a short poem about the sea.",
    "Give three tips for learning a new language.",
    "What are the pros and cons of remote work?",
    "Describe the water cycle for a child.",
    "How do I make a good cup of coffee?",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
]


def load_instructions(path: Path, n: int) -> list[str]:
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        items = [r["instruction"] for r in rows]
    else:
        items = FALLBACK
    return [items[i % len(items)] for i in range(n)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sequential(model: str, prompts: list[str], max_tokens: int, n_threads: int, out) -> None:
    from edgepref.backends.engine.handles import load_high_level_llama
    from edgepref.models.modelfiles import resolve_model_path

    llm = load_high_level_llama(resolve_model_path(model), n_ctx=2048, n_threads=n_threads)
    start = time.perf_counter()
    tokens = 0
    for p in prompts:
        r = llm.create_chat_completion(
            [{"role": "user", "content": p}], temperature=0, max_tokens=max_tokens
        )
        tokens += r["usage"]["completion_tokens"]
    secs = time.perf_counter() - start
    out.put({"tokens": tokens, "seconds": secs, "peak_rss_mb": _peak_rss_mb()})


def run_engine(model: str, prompts: list[str], max_tokens: int, n_threads: int, slots: int, out) -> None:
    from edgepref.backends.base import ChatRequest, Sampling
    from edgepref.backends.engine import Engine

    engine = Engine(model, n_slots=slots, n_ctx=2048, n_threads=n_threads)
    reqs = [
        ChatRequest([{"role": "user", "content": p}], Sampling(max_tokens=max_tokens)) for p in prompts
    ]
    start = time.perf_counter()
    results = engine.chat(reqs)
    secs = time.perf_counter() - start
    tokens = sum(g.completion_tokens for r in results for g in r.generations)
    out.put(
        {
            "tokens": tokens,
            "seconds": secs,
            "peak_rss_mb": _peak_rss_mb(),
            "prompt_tokens_cached": engine.stats.prompt_tokens_cached,
            "errors": sum(1 for r in results if r.error),
        }
    )


def run_llama_server(binary: str, model: str, prompts: list[str], max_tokens: int, n_threads: int, slots: int,
                     out) -> None:
    import tempfile
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from bench_backends import LlamaServer

    log = Path(tempfile.mkdtemp(prefix="bench-llama-server-")) / "llama-server.log"
    server = LlamaServer(binary, model, log, slots, 2048, n_threads)

    def one(prompt: str) -> int:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": max_tokens}).encode()
        req = urllib.request.Request(f"{server.url}/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["usage"]["completion_tokens"]

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(slots) as pool:
            tokens = sum(pool.map(one, prompts))
        secs = time.perf_counter() - start
    finally:
        server.kill()
    out.put({"tokens": tokens, "seconds": secs, "peak_rss_mb": 0.0})


def in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=None, help="engine slots (default: --requests, max 32)")
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--llama-server", default=None, metavar="PATH", help="Also time llama.cpp's llama-server.")
    args = ap.parse_args()

    n_threads = os.cpu_count() or 1
    slots = args.slots or min(args.requests, 32)
    prompts = load_instructions(args.input, args.requests)
    seq = in_child(run_sequential, args.model, prompts, args.max_tokens, n_threads)
    eng = in_child(run_engine, args.model, prompts, args.max_tokens, n_threads, slots)
    seq_tps = seq["tokens"] / seq["seconds"]
    eng_tps = eng["tokens"] / eng["seconds"]
    report = {
        "model": args.model,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "n_threads": n_threads,
        "slots": slots,
        "sequential_tokens": seq["tokens"],
        "sequential_seconds": round(seq["seconds"], 2),
        "sequential_tok_s": round(seq_tps, 1),
        "sequential_peak_rss_mb": round(seq["peak_rss_mb"], 1),
        "engine_tokens": eng["tokens"],
        "engine_seconds": round(eng["seconds"], 2),
        "engine_tok_s": round(eng_tps, 1),
        "engine_peak_rss_mb": round(eng["peak_rss_mb"], 1),
        "engine_prompt_tokens_cached": eng["prompt_tokens_cached"],
        "engine_errors": eng["errors"],
        "ratio": round(eng_tps / seq_tps, 2),
    }
    print(f"{'path':<12}{'tokens':>8}{'seconds':>10}{'tok/s':>9}{'peak RSS MB':>13}")
    print(f"{'sequential':<12}{seq['tokens']:>8}{seq['seconds']:>10.1f}{seq_tps:>9.1f}{seq['peak_rss_mb']:>13.0f}")
    print(f"{'engine':<12}{eng['tokens']:>8}{eng['seconds']:>10.1f}{eng_tps:>9.1f}{eng['peak_rss_mb']:>13.0f}")
    print(f"ratio engine/sequential: {report['ratio']:.2f}x  (slots={slots}, threads={n_threads})")
    if args.llama_server:
        ls = in_child(run_llama_server, args.llama_server, args.model, prompts, args.max_tokens, n_threads, slots)
        ls_tps = ls["tokens"] / ls["seconds"]
        report.update(llama_server_tokens=ls["tokens"], llama_server_seconds=round(ls["seconds"], 2),
                      llama_server_tok_s=round(ls_tps, 1), engine_vs_llama_server=round(eng_tps / ls_tps, 2))
        print(f"{'llama-server':<12}{ls['tokens']:>8}{ls['seconds']:>10.1f}{ls_tps:>9.1f}")
        print(f"ratio engine/llama-server: {report['engine_vs_llama_server']:.2f}x  (--parallel {slots})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
