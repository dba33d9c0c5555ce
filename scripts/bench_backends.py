"""Pairs per minute through the local engine, one local server and two local servers, in one run.

    python scripts/bench_backends.py --instructions 8 --json bench_backends.json

The same pipeline (embedded models: 2-model pool, 1 EvolQuality rewrite, overall judge with
rationales, short completions) on the same first N instructions, three times; only where the
models run changes:

  local        the batched engine in this process (one model loaded at a time);
  one server   `edgepref serve` (llama-cpp-python's server, both models) on 127.0.0.1;
  two servers  two such servers, requests spread over both.

On a machine with few cores, two servers share the same cores and cannot beat one; what this
measures there is the overhead of the server path (HTTP, one request at a time per
llama-cpp-python server, no cross-request batching) against the local engine. On a GPU box
with `llama-server --parallel N`, the same client code keeps N requests in flight per endpoint.
Writes JSON with local_pairs_per_min, one_server_pairs_per_min, two_servers_pairs_per_min and
the pairs each wrote.

With --llama-server PATH (a `llama-server` binary built from llama.cpp), a fourth run puts each
model on its own llama-server with --parallel SLOTS (continuous batching on the server side)
and writes llama_server_pairs_per_min.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_pipeline import DEFAULT_INPUT, QWEN, SMOL, timed_run  # same workload as bench_pipeline
from bench_pipeline import bench_config as pipeline_config
from edgepref.stages.config import PipelineConfig
from edgepref.backends.engine.handles import default_gpu_layers
from edgepref.backends.engine.serve import ServerProcess, free_port
from edgepref.data.inputs import read_instructions
from edgepref.models.modelfiles import resolve_model_path


def bench_config(max_tokens: int, threads: int) -> PipelineConfig:
    cfg = pipeline_config(max_tokens)
    cfg.engine.threads = threads
    return cfg


def timed(args, cfg: PipelineConfig) -> dict:
    seconds, result = timed_run(read_instructions(args.input, limit=args.instructions), cfg)
    return {
        "seconds": round(seconds, 1),
        "pairs": len(result.pairs),
        "pairs_per_min": round(len(result.pairs) / (seconds / 60), 2),
        "request_errors": result.summary.request_errors,
        "stage_seconds": {name: st["seconds"] for name, st in result.summary.stages.items()},
        "endpoints": result.summary.endpoints,
    }


def on_servers(cfg: PipelineConfig, urls: list[str], in_flight: int) -> PipelineConfig:
    cfg.models = {m: {"endpoints": urls, "max_in_flight": in_flight} for m in (QWEN, SMOL)}
    return cfg


class LlamaServer:
    """llama.cpp's own `llama-server` for one model, with --parallel slots."""

    def __init__(self, binary: str, model: str, log: Path, slots: int, n_ctx: int, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cmd = [binary, "-m", str(resolve_model_path(model)), "--alias", model, "--host", "127.0.0.1",
               "--port", str(self.port), "--parallel", str(slots), "-c", str(n_ctx * slots),
               "-t", str(threads), "--no-webui"]
        if default_gpu_layers():  # a GPU build: every layer on the GPU, as the engine does
            cmd += ["-ngl", "999"]
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {log.read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"llama-server not ready: {log.read_text()[-1500:]}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--instructions", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--in-flight", type=int, default=2, help="Requests in flight per endpoint.")
    ap.add_argument("--llama-server", default=None, metavar="PATH", help="Also run on llama.cpp's llama-server.")
    ap.add_argument("--parallel", type=int, default=16, help="llama-server slots (and requests in flight).")
    ap.add_argument("--skip-python-server", action="store_true", help="Only local and llama-server.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    report: dict = {"instructions": args.instructions, "max_tokens": args.max_tokens, "threads": threads}

    local = timed(args, bench_config(args.max_tokens, threads))
    print(f"local engine : {local['pairs']} pairs in {local['seconds']:.0f} s = {local['pairs_per_min']:.2f} pairs/min")

    logs = Path(tempfile.mkdtemp(prefix="edgepref-bench-"))
    runs = {"local": local}
    if not args.skip_python_server:
        with ServerProcess([QWEN, SMOL], logs / "a.log", threads=threads) as a:
            one = timed(args, on_servers(bench_config(args.max_tokens, threads), [a.url], args.in_flight))
            print(f"one server   : {one['pairs']} pairs in {one['seconds']:.0f} s = {one['pairs_per_min']:.2f} pairs/min")
            # Two servers on one machine split its cores (more threads than cores makes llama.cpp's
            # spinning workers fight), so each gets half; the first is restarted with half too.
            a.kill()
            half = max(1, threads // 2)
            with ServerProcess([QWEN, SMOL], logs / "a2.log", threads=half) as a2, \
                    ServerProcess([QWEN, SMOL], logs / "b.log", threads=half) as b:
                two = timed(args, on_servers(bench_config(args.max_tokens, threads), [a2.url, b.url], args.in_flight))
            print(f"two servers  : {two['pairs']} pairs in {two['seconds']:.0f} s = {two['pairs_per_min']:.2f} pairs/min")
        runs.update(one_server=one, two_servers=two)
        report.update(
            local_pairs_per_min=local["pairs_per_min"],
            one_server_pairs_per_min=one["pairs_per_min"],
            two_servers_pairs_per_min=two["pairs_per_min"],
            local_pairs=local["pairs"],
            one_server_pairs=one["pairs"],
            two_servers_pairs=two["pairs"],
            server_overhead=round(one["seconds"] / local["seconds"], 2),
        )
        print(f"one server takes {report['server_overhead']:.2f}x the local engine's time; "
              f"two servers: {two['seconds'] / local['seconds']:.2f}x")
    else:
        report.update(local_pairs_per_min=local["pairs_per_min"], local_pairs=local["pairs"])
    if args.llama_server:
        servers = {m: LlamaServer(args.llama_server, m, logs / f"llama-{m}.log", args.parallel, 2048, threads)
                   for m in (QWEN, SMOL)}
        try:
            cfg = bench_config(args.max_tokens, threads)
            cfg.models = {m: {"endpoints": [srv.url], "max_in_flight": args.parallel} for m, srv in servers.items()}
            ls = timed(args, cfg)
        finally:
            for srv in servers.values():
                srv.kill()
        runs["llama_server"] = ls
        report.update(llama_server_pairs_per_min=ls["pairs_per_min"], llama_server_pairs=ls["pairs"],
                      llama_server_parallel=args.parallel)
        print(f"llama-server : {ls['pairs']} pairs in {ls['seconds']:.0f} s = {ls['pairs_per_min']:.2f} pairs/min"
              f"  (--parallel {args.parallel}; {ls['seconds'] / local['seconds']:.2f}x the local engine's time)")
    report["runs"] = runs
    for name, run in runs.items():
        print(f"  {name} stages: {run['stage_seconds']}")
        for model, stats in run["endpoints"].items():
            spread = ", ".join(f"{s['url']}: {s['ok']}" for s in stats)
            print(f"  {name} {model}: {spread}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
