"""Compare judge recipes on labelled pairs; prints the README's table and writes JSON.

    python scripts/eval_judge_recipes.py --json judge_recipes.json
    python scripts/eval_judge_recipes.py --recipes plain-ab,expert-ab --limit 40

The pairs are split in two halves by a fixed rule: the first half of the file (rounded up) is
the one recipes were chosen on, the second half is held out; every recipe is reported on both
halves and on all pairs. For each judge set (each model alone, and the models as a panel) and
each recipe: agreement with a 95% CI, precision at coverage (agreement on the most confident
100% / 80% / 50% of the pairs, confidence = |margin|) with the |margin| where each share starts,
single-order position bias and swap consistency, length bias, prompt tokens and seconds per
pair, and self-preference (the judge's own greedy answers to the first N instructions against
the better response of each pair: how often it prefers its own).

Pairwise recipes that share a prompt are asked together and each question is decoded once; each
recipe is charged the prompt tokens it would decode alone. A panel reuses its members' answers.
Requests are cached in --cache, so an interrupted comparison resumes and a finished one replays
(seconds per pair are then those of the replay; prompt tokens per pair do not change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgepref.stages.config import PipelineConfig
from edgepref.runs.evaljudge import (
    judge_recipes_alone, panel_run, read_judge_pairs, recipe_names, score_judged, self_preference)
from edgepref.runs.pipeline import Runner

DEFAULT_PAIRS = Path(__file__).resolve().parent / "data/judge_pairs_smoke.jsonl"  # see data/README.md
MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    ap.add_argument("--limit", type=int, default=None, help="only the first N pairs (halves of those)")
    ap.add_argument("--choose-only", action="store_true",
                    help="judge only the half recipes are chosen on (for recipes dropped there)")
    ap.add_argument("--recipes", default=None, help=f"comma-separated (default: all): {', '.join(recipe_names())}")
    ap.add_argument("--models", default=",".join(MODELS), help="judges; with two or more, also their panel")
    ap.add_argument("--no-panel", action="store_true")
    ap.add_argument("--self-preference", type=int, default=40, metavar="N", help="0 skips it")
    ap.add_argument("--cache", type=Path, default=Path("judge_recipes.cache"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    pairs = read_judge_pairs(args.pairs, args.limit)
    half = (len(pairs) + 1) // 2
    parts = {"choose": (0, half), "held-out": (half, len(pairs)), "all": (0, len(pairs))}
    if args.choose_only:
        pairs, parts = pairs[:half], {"choose": (0, half)}
    recipes = args.recipes.split(",") if args.recipes else recipe_names()
    models = args.models.split(",")
    judge_sets = [[m] for m in models] + ([models] if len(models) > 1 and not args.no_panel else [])
    runner = Runner(PipelineConfig(), None, cache_dir=args.cache)
    rows = []
    try:
        runs = {m: judge_recipes_alone(runner, recipes, pairs, m) for m in models}
        own = {m: self_preference(runner, recipes, pairs[: args.self_preference], [m])
               for m in models} if args.self_preference else {}
        for judges in judge_sets:
            for name in recipes:
                run = panel_run([runs[m][name] for m in judges])
                row = {"recipe": name, "judges": judges, "n": len(pairs),
                       "prompt_tokens_per_pair": run.prompt_tokens_per_pair,
                       "seconds_per_pair": run.seconds / len(pairs)}
                for part, (lo, hi) in parts.items():
                    rep = score_judged(name, pairs[lo:hi], run.judged[lo:hi], judges,
                                       run.seconds * (hi - lo) / len(pairs))
                    row[part] = rep.to_row()
                shares = [own[m][name]["share"] for m in judges if own]
                row["self_preference"] = (sum(shares) / len(shares)) if shares and None not in shares else None
                rows.append(row)
                print(_line(row), flush=True)
    finally:
        runner.close()
    print(f"\n{len(pairs)} pairs judged: choose = the first {half} of the file"
          + ("" if args.choose_only else f", held-out = the other {len(pairs) - half}") + "\n")
    print("| recipe | judge | choose half | held-out half | all (95% CI) | top 80% | top 50% | "
          "swap consistency | position bias | length bias | prompt tokens/pair | s/pair | self-preference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["choose"]["agreement"]):
        a = r.get("all", r["choose"])
        lo, hi = a["agreement_ci95"]
        sp = "-" if r["self_preference"] is None else f"{r['self_preference']:.0%}"
        tokens = "-" if r["prompt_tokens_per_pair"] is None else f"{r['prompt_tokens_per_pair']:.0f}"
        held = f"{r['held-out']['agreement']:.1%}" if "held-out" in r else "-"
        print(f"| {r['recipe']} | {' + '.join(r['judges'])} | {r['choose']['agreement']:.1%} | "
              f"{held} | {a['agreement']:.1%} ({lo:.0%}–{hi:.0%}) | "
              f"{a['precision_at_coverage'].get('80%', 0):.1%} | {a['precision_at_coverage'].get('50%', 0):.1%} | "
              f"{a['swap_consistency']:.1%} | {a['position_bias']:.1%} | {a['length_bias']:.1%} | {tokens} | "
              f"{r['seconds_per_pair']:.2f} | {sp} |")
    if args.json:
        args.json.write_text(json.dumps({"n": len(pairs), "halves": parts, "rows": rows}, indent=2))


def _line(row: dict) -> str:
    a = row.get("all", row["choose"])
    held = f"{row['held-out']['agreement']:.3f}" if "held-out" in row else "-"
    return (f"{row['recipe']:<16} {'+'.join(row['judges']):<32} choose {row['choose']['agreement']:.3f}  "
            f"held-out {held}  all {a['agreement']:.3f}  "
            f"top80 {a['precision_at_coverage'].get('80%', 0):.3f} top50 {a['precision_at_coverage'].get('50%', 0):.3f}  "
            f"|m|@80% {a['confidence_at_coverage'].get('80%', 0):.3f}  swap {a['swap_consistency']:.3f}  "
            f"pos {a['position_bias']:.3f}  len {a['length_bias']:.3f}  self-pref {row['self_preference']}")


if __name__ == "__main__":
    main()
