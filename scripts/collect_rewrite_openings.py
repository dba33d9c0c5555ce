"""How EvolQuality rewrites open: the first lines a model writes when asked to improve its own
answer, before and after edgepref strips lead-ins, and the rewrites dropped as talk.

    python scripts/collect_rewrite_openings.py --instructions 48 --input ../shared/data/alpaca_eval_dev/instructions.jsonl

The evolving model (default: the embedded judge) answers each instruction as the pipeline's pool
member does, then gets the pipeline's own rewrite turn as a follow-up in the same slot
(evolve.continuation), with a short length limit: the opening is what this script is about.
Prints one JSON line per rewrite (criterion, the raw opening, what edgepref keeps or why it
drops it) and a count of openings that still start with talk about the rewrite.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from edgepref.stages.complete import complete
from edgepref.stages.config import EvolveConfig, PoolMember
from edgepref.backends.engine import Engine
from edgepref.stages.evolve import continuation, drop_reason, strip_leaked_headings, talk_share
from edgepref.data.inputs import read_instructions

DEFAULT_INPUT = Path(__file__).resolve().parent / "data/bench_instructions.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=str(DEFAULT_INPUT))
    ap.add_argument("--instructions", type=int, default=24)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--answer-tokens", type=int, default=128)
    ap.add_argument("--rewrite-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    batch = read_instructions(args.input, limit=args.skip + args.instructions)
    records = batch.records[args.skip:]
    member = PoolMember(args.model, max_tokens=args.answer_tokens)
    cfg = replace(EvolveConfig(), max_tokens=args.rewrite_tokens)
    rewrites = []
    with Engine(args.model, n_ctx=2048, n_slots=16, seed=args.seed) as engine:
        complete(records, member, engine, seed=args.seed,
                 then=lambda r, k: continuation(r, member.name, args.model, k, args.model, cfg, args.seed),
                 on_follow_ups=rewrites.extend)
    talk = 0
    for res in rewrites:
        if res is None or not res.ok:
            continue
        raw = res.generations[0].text
        kept = strip_leaked_headings(raw)
        reason, _ = drop_reason(kept, "", 1.0)
        still = talk_share(kept[:200]) > 0
        talk += still
        print(json.dumps({"opening": raw[:160], "kept": kept[:100], "dropped": reason,
                          "talk_share": round(talk_share(kept), 2), "opens_with_talk": still}, ensure_ascii=False))
    print(json.dumps({"rewrites": len(rewrites), "opening_still_talks": talk}))


if __name__ == "__main__":
    main()
