"""Compare judge recipes on labelled pairs; prints the README's table and writes JSON.

    python scripts/eval_judge_recipes.py --limit 228 --json judge_recipes.json

For each judge set (each embedded model alone, and the two as a panel) and each judge mode
(rationale, score-only, pairwise), the pairs are rated once in both showing orders through
`edgepref.evaljudge` (the pipeline's judge stage), then every recipe of that mode is scored
from the same ratings. A panel reuses its members' ratings. One-order recipes are charged
half the measured seconds (they need one of the two passes). Requests are cached in
--cache, so an interrupted comparison resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgepref.config import JudgeConfig, PipelineConfig
from edgepref.evaljudge import RECIPES, judge_config_for, panel_records, rate_pairs, read_judge_pairs, score_recipe
from edgepref.pipeline import Runner

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared/data/alpaca_eval_dev/judge_pairs.jsonl"
MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--modes", default="rationale,score-only,pairwise")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cache", type=Path, default=Path("judge_recipes.cache"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    pairs = read_judge_pairs(args.pairs, args.limit)
    models = args.models.split(",")
    rows = []
    for mode in args.modes.split(","):
        recipes = [name for name, spec in RECIPES.items() if spec[0] == mode]
        cfg = judge_config_for(recipes[0], JudgeConfig())
        rated: dict[str, list] = {}
        seconds: dict[str, float] = {}
        for model in models:
            runner = Runner(PipelineConfig(), None, cache_dir=args.cache)
            try:
                rated[model], seconds[model] = rate_pairs(runner, model, pairs, cfg)
            finally:
                runner.close()
            print(f"[{mode}] {model}: rated {len(pairs)} pairs in {seconds[model]:.0f} s "
                  f"({runner.cached_requests} requests from cache)", flush=True)
        judge_sets = [[m] for m in models] + ([models] if len(models) > 1 else [])
        for judges in judge_sets:
            merged = panel_records(pairs, [rated[m] for m in judges])
            secs = sum(seconds[m] for m in judges)
            for name in recipes:
                both = RECIPES[name][2]
                rep = score_recipe(name, pairs, merged, judges, secs if both else secs / 2)
                rows.append(rep.to_row())
                print(f"{name:<26} {'+'.join(judges):<34} agreement {rep.agreement:.3f} "
                      f"[{rep.agreement_ci95[0]:.3f}, {rep.agreement_ci95[1]:.3f}]  "
                      f"swap {rep.swap_consistency:.3f}  pos {rep.position_bias:.3f}  "
                      f"len {rep.length_bias:.3f}  ties {rep.tie_rate:.3f}  parse {rep.parse_rate:.2f}  "
                      f"{rep.seconds_per_pair:.2f} s/pair", flush=True)
    rows.sort(key=lambda r: (-r["agreement"], r["seconds_per_pair"]))
    print("\n| recipe | judge | agreement (95% CI) | one-order agreement | swap consistency | position bias | length bias | s/pair |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["agreement_ci95"]
        print(f"| {r['recipe']} | {' + '.join(r['judges'])} | {r['agreement']:.1%} ({lo:.1%}–{hi:.1%}) | "
              f"{r['one_order_agreement']:.1%} | {r['swap_consistency']:.1%} | {r['position_bias']:.1%} | "
              f"{r['length_bias']:.1%} | {r['seconds_per_pair']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"n": len(pairs), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
