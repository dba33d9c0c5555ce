"""End-to-end pairs per minute: edgepref's batched engine vs the same stages one request at a time.

    python scripts/bench_pipeline.py --instructions 16 --json bench_pipeline.json

Both runs use the embedded models and the same stage code (2-model pool, 1 EvolQuality
rewrite per instruction of the judge's own answer, overall UltraFeedback judge with rationales
under the GBNF grammar, 128-token completions) on the first N instructions of --input (default: the 48 instructions in
scripts/data/bench_instructions.jsonl; the README's figures name the input they used). Only the
backend differs:

  baseline  llama-cpp-python's high-level `Llama.create_chat_completion`, one request and one
            sample at a time (what distilabel's llama.cpp backend does), both models loaded;
            it has no follow-up turns, so the evolve stage sends the rewrites itself;
  edgepref  the batched engine, one model loaded at a time; the rewrites run as follow-up
            turns of the completion requests (ChatRequest.then).

The baseline gets no probability traces for the ratings (the high-level API has no cheap way to
read them), so it does slightly less work per judge call; the pairwise check reads its label
log-probabilities from the first generated token's top log-probabilities, with a second `Llama`
of the judge's file loaded with `logits_all=True` (llama-cpp-python gives log-probabilities
only then; it computes the output layer for every prompt token). Prints both, the
ratio, our yield (the instructions that gave a pair, as a share, and the pairs per instruction)
with drop reasons, and the judge's wall time split into the UltraFeedback
ratings and the pairwise check of chosen/rejected (with the ratio of the two together to the
ratings alone, which is what the judge cost before the check), and per stage the prompt tokens
decoded, the prompt tokens reused from the KV cache and the tokens generated, with the decoded
prompt tokens per written pair and per instruction and the peak RSS of the edgepref run; writes
JSON with `pairs_per_min`, `baseline_pairs_per_min`, `ratio`, `instructions_with_pair`,
`instructions_with_pair_share`, `mean_pairs_per_instruction`, `judge_seconds`, `prompt_tokens`,
`peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from edgepref.backends.base import ChatResult, Generation, Progress, renormalised
from edgepref.stages.config import EvolveConfig, JudgeConfig, PairConfig, PipelineConfig, PoolMember
from edgepref.backends.engine.handles import load_high_level_llama
from edgepref.data.inputs import read_instructions
from edgepref.runs.pipeline import run_pipeline
from edgepref.models.modelfiles import resolve_model_path
from edgepref.backends.logprobs import candidate_logprobs

QWEN, SMOL = "qwen2.5-coder-0.5b", "smollm2-135m"
DEFAULT_INPUT = Path(__file__).resolve().parent / "data/bench_instructions.jsonl"  # see data/README.md


class SequentialBackend:
    """The Backend protocol over llama-cpp-python's high-level API, one call per sample."""

    def __init__(self, model: str, n_ctx: int, n_threads: int):
        from llama_cpp import LlamaGrammar

        self.name = model
        self._grammar_cls = LlamaGrammar
        self._load = lambda **kw: load_high_level_llama(resolve_model_path(model), n_ctx=n_ctx, n_threads=n_threads, **kw)
        self.llm = self._load()
        self._scorer = None  # for label log-probabilities, which llama-cpp-python gives only with logits_all

    def chat(self, requests, on_result=None):
        start = time.perf_counter()
        results, tokens = [], 0
        for i, req in enumerate(requests):
            if req.choices:
                res = self._choice(req)
                results.append(res)
                if on_result:
                    on_result(Progress(i + 1, len(requests), tokens, 0, time.perf_counter() - start), res)
                continue
            grammar = self._grammar_cls.from_string(req.grammar, verbose=False) if req.grammar else None
            gens, prompt_tokens = [], 0
            for k in range(max(1, req.n)):
                seed = (req.sampling.seed or 0) + k
                out = self.llm.create_chat_completion(
                    req.messages,
                    temperature=req.sampling.temperature,
                    top_p=req.sampling.top_p,
                    top_k=req.sampling.top_k,
                    max_tokens=req.sampling.max_tokens,
                    seed=seed,
                    grammar=grammar,
                    stop=list(req.sampling.stop) or None,
                )
                choice = out["choices"][0]
                usage = out["usage"]
                prompt_tokens = usage["prompt_tokens"]
                tokens += usage["completion_tokens"]
                gens.append(Generation(choice["message"]["content"] or "", usage["completion_tokens"],
                                       choice["finish_reason"] or "stop", seed))
            res = ChatResult(req, gens, prompt_tokens)
            results.append(res)
            if on_result:
                on_result(Progress(i + 1, len(requests), tokens, 0, time.perf_counter() - start), res)
        return results

    def _choice(self, req) -> ChatResult:
        """Label log-probabilities at the answer's first token, from its top alternatives."""
        if self._scorer is None:
            self._scorer = self._load(logits_all=True)
        out = self._scorer.create_chat_completion(req.messages, temperature=0.0, max_tokens=1, logprobs=True,
                                                  top_logprobs=20)
        content = (out["choices"][0].get("logprobs") or {}).get("content") or []
        logprobs = candidate_logprobs(content[0].get("top_logprobs") or [], req.choices) if content else None
        return ChatResult(req, [Generation("", 0, "stop", None)], out["usage"]["prompt_tokens"],
                          None if logprobs else "no log-probabilities", renormalised(logprobs),
                          choice_logprobs=logprobs)

    def close(self):
        pass


# How pairs are chosen, for --compare: judge mode and pair settings on top of bench_config.
# "before" is the default up to commit 03389af (ratings with rationales shortlist one pair, the
# ratings' best against their worst); "own-3" the default up to commit 57750d9 (no ratings, the
# evolving model's own answer rewritten, 3 candidate pairs); both read each verdict prompt whole,
# as the engine did then. "default" is what `edgepref run` does now; "default-unsplit" the same
# with verdict prompts read whole (engine.split_reads off: no saved prefixes); "one-pair" the
# default at commit a7c4cc4 (one pair per instruction), "pairs-2" two. The
# explorations after them wrote one pair per instruction unless named otherwise.
VARIANTS: dict[str, dict] = {
    "before": {"mode": "rationale", "candidates": 1, "pick": "own", "split_reads": False, "pairs_per_instruction": 1},
    "own-3": {"pick": "own", "candidates": 3, "split_reads": False, "pairs_per_instruction": 1},
    "default": {},
    "default-unsplit": {"split_reads": False},
    "one-pair": {"pairs_per_instruction": 1},
    "pairs-2": {"pairs_per_instruction": 2},
    "rated-3": {"mode": "rationale", "candidates": 3, "pick": "own", "pairs_per_instruction": 1},
    "score-only-3": {"mode": "score-only", "candidates": 3, "pick": "own", "pairs_per_instruction": 1},
    "none-3": {"mode": "none", "candidates": 3, "pick": "own", "pairs_per_instruction": 1},
    "none-3-pairs-3": {"mode": "none", "candidates": 3, "pairs_per_instruction": 3, "pick": "own"},
    "all-rewrites-3": {"pick": "all", "candidates": 3, "pairs_per_instruction": 1},
    "all-rewrites-4": {"pick": "all", "candidates": 4, "pairs_per_instruction": 1},
    "smol-2-6": {"smol_n": 2, "candidates": 6, "pick": "own", "pairs_per_instruction": 1},
}


def bench_config(max_tokens: int, mode: str | None = "rationale", pick: str | None = None, smol_n: int = 1,
                 split_reads: bool = True, **pair) -> PipelineConfig:
    """The benchmark's pipeline; `mode` None keeps the default judge mode, `pick` None the default
    EvolQuality pick, `smol_n` samples per instruction from smollm2, `split_reads` the engine's
    read path, `pair` sets PairConfig fields."""
    judge = JudgeConfig(models=[QWEN]) if mode is None else JudgeConfig(models=[QWEN], mode=mode)
    cfg = PipelineConfig(
        pool=[PoolMember(QWEN, max_tokens=max_tokens), PoolMember(SMOL, max_tokens=max_tokens, n=smol_n)],
        evolve=EvolveConfig(num_evolutions=1, max_tokens=max_tokens, **({"pick": pick} if pick else {})),
        judge=judge,  # and the default verdict chain after it
        pair=PairConfig(**pair),
    )
    cfg.engine.split_reads = split_reads
    return cfg


def instructions(args):
    """Instructions --skip + 1 .. --skip + --instructions of --input."""
    batch = read_instructions(args.input, limit=args.skip + args.instructions)
    batch.records = batch.records[args.skip:]
    return batch


def cpu_seconds() -> float:
    """User + system CPU time of this process (llama.cpp's threads included) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_run(batch, cfg, backends=None, keep: Path | None = None, cache_dir: Path | None = None):
    """(wall seconds, CPU seconds, result) of one pipeline run."""
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), cpu_seconds()
        result = run_pipeline(batch, keep or tmp, cfg, backends=backends, cache_dir=cache_dir)
        return time.perf_counter() - start, cpu_seconds() - cpu, result


def compare_variants(args, names: list[str]) -> dict:
    """Each variant on the same instructions, one after the other in this process: pairs, the
    instructions with a pair and the pairs per instruction, wall and CPU time, pairs per
    CPU-minute, each against the first variant."""
    rows = {}
    for name in names:
        cfg = bench_config(args.max_tokens, **{"mode": None, **VARIANTS[name]})
        cfg.engine.threads = os.cpu_count() or 1
        cache = args.shared_cache / "cache" if args.shared_cache else None
        wall, cpu, result = timed_run(instructions(args), cfg, cache_dir=cache)
        pairs = len(result.pairs)
        rows[name] = {
            "judge_mode": cfg.judge.mode, "evolve_pick": cfg.evolve.pick, "candidates": cfg.pair.candidates,
            "pairs_wanted": cfg.pair.pairs_wanted, "split_reads": cfg.engine.split_reads,
            "pairs": pairs, **yield_figures(result.summary),
            "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "pairs_per_min": round(pairs / (wall / 60), 2), "pairs_per_cpu_min": round(pairs / (cpu / 60), 2),
            "dropped": result.summary.pairs_dropped, "stage_seconds": stage_seconds(result.summary),
            "decided_by": dict(Counter(p.decided_by for p in result.pairs)),
            "verdicts_asked": sum(len(r.judge_info.get("verdicts", [])) for r in result.records),
        }
        r = rows[name]
        print(f"{name:<16} {pairs:>3} pairs, {yield_text(r, result.summary.instructions)} "
              f"in {wall:.0f} s wall / {cpu:.0f} s CPU = {r['pairs_per_cpu_min']:.2f} pairs/CPU-min "
              f"({r['pairs_per_min']:.2f}/min)  decided by {r['decided_by']}  verdicts asked {r['verdicts_asked']}"
              f"  stages {r['stage_seconds']}", flush=True)
    first = rows[names[0]]
    for name in names[1:]:
        r = rows[name]
        r["ratio_cpu"] = round(r["pairs_per_cpu_min"] / max(first["pairs_per_cpu_min"], 1e-9), 2)
        r["ratio_wall"] = round(r["pairs_per_min"] / max(first["pairs_per_min"], 1e-9), 2)
        print(f"{name} against {names[0]}: instructions with a pair {r['instructions_with_pair_share']:.0%} "
              f"vs {first['instructions_with_pair_share']:.0%}, pairs per instruction "
              f"{r['mean_pairs_per_instruction']:g} vs {first['mean_pairs_per_instruction']:g}, pairs per CPU-minute "
              f"{r['ratio_cpu']:.2f}x, per wall minute {r['ratio_wall']:.2f}x")
    if args.shared_cache:
        print("(a shared request cache: later variants replayed what earlier ones computed; their times are "
              "not comparable, only their pairs)")
    return {"instructions": args.instructions, "skip": args.skip, "input": str(args.input), "variants": rows}


def yield_figures(summary) -> dict:
    """A run's yield, from its summary, as two figures under their own names: the instructions
    that got at least one written pair (a count, and a share of the instructions) and the mean
    written pairs per instruction (above 1 when instructions get several pairs; not the
    `pairs_per_instruction` setting, the most it may write, which a variant row calls
    `pairs_wanted`)."""
    n = max(1, summary.instructions)
    return {"instructions_with_pair": summary.instructions_paired,
            "instructions_with_pair_share": round(summary.instructions_paired / n, 3),
            "mean_pairs_per_instruction": round(summary.pairs / n, 3)}


def yield_text(figures: dict, instructions: int) -> str:
    return (f"{figures['instructions_with_pair']} of {instructions} instructions gave a pair "
            f"({figures['instructions_with_pair_share']:.0%}), "
            f"{figures['mean_pairs_per_instruction']:g} pairs per instruction")


def stage_seconds(summary) -> dict:
    return {name: st["seconds"] for name, st in summary.stages.items()}


def judge_split(stage_seconds: dict) -> dict:
    """The judge's wall time: UltraFeedback ratings, and the pairwise check (with escalation)."""
    ratings = sum(v for k, v in stage_seconds.items() if k.startswith("judge-"))
    check = sum(v for k, v in stage_seconds.items() if k.startswith(("verify-", "escalate-")))
    return {"ratings": round(ratings, 1), "check": round(check, 1), "total": round(ratings + check, 1),
            "ratio_to_ratings": round((ratings + check) / ratings, 2) if ratings else None}


def prompt_cost(summary, pairs: int, instructions: int) -> dict:
    """Prompt tokens decoded and reused per stage and in all, tokens generated, and the decoded
    prompt tokens per written pair and per instruction: the cost that batching cannot hide."""
    stages = {}
    for stage, st in summary.stages.items():
        stages[stage] = {"decoded": st["prompt_decoded"], "cached": st["prompt_cached"],
                         "generated": st["completion_tokens"]}
    decoded = sum(p["decoded"] for p in stages.values())
    return {
        "stages": stages,
        "decoded": decoded,
        "cached": sum(p["cached"] for p in stages.values()),
        "generated": sum(p["generated"] for p in stages.values()),
        "decoded_per_pair": round(decoded / pairs, 1) if pairs else None,
        "decoded_per_instruction": round(decoded / max(1, instructions), 1),
    }


def print_prompt_cost(cost: dict, peak_rss_mb: float) -> None:
    print(f"{'stage':<32}{'prompt decoded':>16}{'prompt reused':>15}{'generated':>11}")
    for stage, p in cost["stages"].items():
        print(f"{stage:<32}{p['decoded']:>16}{p['cached']:>15}{p['generated']:>11}")
    print(f"{'all':<32}{cost['decoded']:>16}{cost['cached']:>15}{cost['generated']:>11}")
    print(f"prompt tokens decoded per written pair: {cost['decoded_per_pair']}  "
          f"(per instruction: {cost['decoded_per_instruction']})   peak RSS {peak_rss_mb:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--instructions", type=int, default=16)
    ap.add_argument("--skip", type=int, default=0, help="Start after this many instructions of --input.")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=None, help="Engine slots (default: the pipeline's).")
    ap.add_argument("--skip-baseline", action="store_true", help="Only run edgepref (for yield checks).")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--compare", default=None, metavar="A,B,...",
                    help=f"Run these ways of choosing pairs side by side instead ({', '.join(VARIANTS)}); "
                    "the first is the reference of the ratios.")
    ap.add_argument("--shared-cache", type=Path, default=None,
                    help="With --compare: one request cache for all variants (pairs only; times are not comparable).")
    ap.add_argument("--keep", type=Path, default=None,
                    help="Write the edgepref run's output here (records, pairs, report input) instead of a temp dir.")
    args = ap.parse_args()

    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        report = compare_variants(args, names)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return
    threads = os.cpu_count() or 1
    cfg = bench_config(args.max_tokens, pick="own")  # the configuration its recorded figures used
    cfg.engine.threads = threads
    if args.slots:
        cfg.engine.slots = args.slots
    ours_s, _, ours = timed_run(instructions(args), cfg, keep=args.keep)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the baseline loads
    report = {
        "instructions": args.instructions,
        "max_tokens": args.max_tokens,
        "threads": threads,
        "slots": cfg.engine.slots,
        "seconds": round(ours_s, 1),
        "pairs": len(ours.pairs),
        "pairs_per_min": round(len(ours.pairs) / (ours_s / 60), 2),
        **yield_figures(ours.summary),
        "dropped": ours.summary.pairs_dropped,
        "evolutions_dropped": ours.summary.evolutions_dropped,
        "request_errors": ours.summary.request_errors,
        "stage_seconds": stage_seconds(ours.summary),
        "judge_seconds": judge_split(stage_seconds(ours.summary)),
        "prompt_tokens": prompt_cost(ours.summary, len(ours.pairs), args.instructions),
        "peak_rss_mb": round(peak_rss_mb),
    }
    print(f"edgepref  : {len(ours.pairs)} pairs in {ours_s:.0f} s = {report['pairs_per_min']:.2f} pairs/min"
          f"  (stages: {stage_seconds(ours.summary)})")
    if not args.skip_baseline:
        from edgepref.runs.pipeline import Runner

        probe = Runner(cfg, None)
        chain = [m for d in probe.chain.active for m in d.models]  # the verdict chain's judges
        probe.close()
        backends = {m: SequentialBackend(m, n_ctx=4096, n_threads=threads) for m in dict.fromkeys((QWEN, SMOL, *chain))}
        base_s, _, base = timed_run(instructions(args), cfg, backends)
        report.update(
            baseline_seconds=round(base_s, 1),
            baseline_pairs=len(base.pairs),
            baseline_pairs_per_min=round(len(base.pairs) / (base_s / 60), 2),
            seconds_ratio=round(base_s / ours_s, 2),
        )
        report["ratio"] = round(report["pairs_per_min"] / max(report["baseline_pairs_per_min"], 1e-9), 2)
        print(f"baseline  : {len(base.pairs)} pairs in {base_s:.0f} s = {report['baseline_pairs_per_min']:.2f} pairs/min"
              f"  (stages: {stage_seconds(base.summary)})")
        print(f"ratio (pairs/min): {report['ratio']:.2f}x   wall-time ratio: {report['seconds_ratio']:.2f}x")
    drops = ", ".join(f"{k} {v}" for k, v in sorted(ours.summary.pairs_dropped.items())) or "none"
    print(f"yield     : {yield_text(report, ours.summary.instructions)} (dropped: {drops})")
    j = report["judge_seconds"]
    print(f"judge     : ratings {j['ratings']:.1f} s + pairwise check {j['check']:.1f} s = {j['total']:.1f} s "
          f"({j['ratio_to_ratings']:.2f}x the ratings alone)")
    print_prompt_cost(report["prompt_tokens"], peak_rss_mb)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
