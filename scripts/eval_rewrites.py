"""How often the judge prefers an EvolQuality rewrite to the answer it rewrites.

    python scripts/eval_rewrites.py --instructions 48 --input ../shared/data/alpaca_eval_dev/instructions.jsonl

The evolving model (default: the embedded judge, qwen2.5-coder-0.5b) answers each instruction
as a pool member would, then rewrites its own answer along the criterion edgepref draws for it,
in two request shapes:

  conversation  edgepref's: [user: instruction, assistant: answer, user: rewrite turn], the
                conversation that wrote the answer plus one turn (the pipeline runs it as a
                follow-up in the slot that holds the conversation);
  single        edgepref's shape before it: one user message that quotes the instruction and
                the answer, then the same criterion sentence and closing lines.

The judge (same model, the default pairwise recipe, both orders) compares every rewrite with its
parent. Prints per shape: rewrites kept (not empty, not identical to the parent), the share the
judge prefers to their parent (margin > 0) with a 95% interval, the mean margin, and the prompt
tokens the rewrite requests decoded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from edgepref.backends.base import ChatRequest
from edgepref.judging.compare import compare, get_recipe
from edgepref.stages.complete import complete
from edgepref.stages.config import EvolveConfig, JudgeConfig, PoolMember
from edgepref.backends.engine import Engine
from edgepref.stages.evolve import evolve, pick_criterion, rewrite_request, strip_leaked_headings
from edgepref.data.inputs import read_instructions
from edgepref.prompts import evol_template_name
from edgepref.core.records import Record, normalise_text

DEFAULT_INPUT = Path(__file__).resolve().parent / "data/bench_instructions.jsonl"

# The single-message shape edgepref used before rewrites became a turn of the conversation.
SINGLE = """Here is an instruction and a response to it.

Instruction:
{instruction}

Response:
{response}

Rewrite the response into a better one. {criterion}

Keep everything in it that is correct.
Write only the new response. No title, no introduction, no notes."""


def criterion_sentence(criterion: str) -> str:
    """The criterion sentence of a package evol template (its `criterion` block)."""
    source = (Path(__file__).resolve().parents[1] / "edgepref/prompts" / f"{evol_template_name(criterion)}.jinja2").read_text()
    return source.split("{% block criterion %}")[1].split("{% endblock %}")[0].strip()


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def single_shape(records: list[Record], engine, cfg: EvolveConfig, seed: int) -> dict[str, tuple]:
    """record id -> (rewrite text, decoded prompt tokens) in the single-message shape, with the
    criterion and seed the conversation shape uses."""
    reqs, ids = [], []
    for r in records:
        parent = r.completions[0]
        crit = pick_criterion(cfg, seed, r.id, parent.id, 1)
        conv = rewrite_request(r, parent, crit, cfg, seed)
        text = SINGLE.format(instruction=r.instruction, response=parent.text, criterion=criterion_sentence(crit))
        reqs.append(ChatRequest([{"role": "user", "content": text}], conv.sampling, id=r.id))
        ids.append(r.id)
    out = {}
    for rid, res in zip(ids, engine.chat(reqs)):
        out[rid] = (res.text.strip() if res.ok else "", res.prompt_tokens - res.cached_prompt_tokens)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--instructions", type=int, default=48)
    ap.add_argument("--skip", type=int, default=0, help="Start after this many instructions of --input.")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", default="single,conversation", help="Comma-separated shapes to measure.")
    ap.add_argument("--dump", type=Path, default=None, help="Write every parent, rewrite and margin here (JSONL).")
    args = ap.parse_args()
    wanted = args.shapes.split(",")

    batch = read_instructions(args.input, limit=args.skip + args.instructions)
    records = batch.records[args.skip:]
    member = PoolMember(args.model, max_tokens=args.max_tokens)
    cfg = EvolveConfig(max_tokens=args.max_tokens)
    recipe = get_recipe(JudgeConfig().recipe)
    with Engine(args.model, n_ctx=4096, n_slots=16, n_threads=os.cpu_count()) as engine:
        complete(records, member, engine, seed=args.seed)
        parents = {r.id: r.completions[0] for r in records}
        shapes = {}
        if "single" in wanted:
            shapes["single"] = single_shape(records, engine, cfg, args.seed)
        decoded: list[int] = []
        if "conversation" in wanted:
            evolve(records, args.model, engine, cfg, seed=args.seed,
                   on_result=lambda _p, res: decoded.append(res.prompt_tokens - res.cached_prompt_tokens))
            shapes["conversation"] = {r.id: (next((c.text for c in r.completions if c.source == "evol"), ""), 0)
                                      for r in records}
        dump = open(args.dump, "w") if args.dump else None
        print(f"{len(records)} instructions, rewrites by {args.model}, judged by {args.model} ({recipe.name})")
        print(f"{'shape':<14}{'kept':>6}{'preferred to parent':>22}{'95% CI':>16}{'mean margin':>13}{'prompt tok':>12}")
        for name, texts in shapes.items():
            kept = []
            for r in records:
                text = strip_leaked_headings(texts[r.id][0]) if name == "single" else texts[r.id][0]
                if text and normalise_text(text) != normalise_text(parents[r.id].text):
                    kept.append((r, text))
            items = [(r.instruction, text, parents[r.id].text) for r, text in kept]
            verdicts = compare(items, [recipe], engine, args.model)[recipe.name] if items else []
            margins = [v.margin for v in verdicts if v.ok]
            if dump:
                for (r, text), v in zip(kept, verdicts):
                    dump.write(json.dumps({"shape": name, "id": r.id, "instruction": r.instruction,
                                           "parent": parents[r.id].text, "rewrite": text, "margin": v.margin}) + "\n")
            wins = sum(m > 0 for m in margins)
            lo, hi = wilson(wins, len(margins))
            tokens = sum(t for _, t in texts.values()) if name == "single" else sum(decoded)
            print(f"{name:<14}{len(kept):>6}{wins:>12} of {len(margins):<3} {wins / max(1, len(margins)):>5.0%}"
                  f"{f'{lo:.0%}-{hi:.0%}':>16}{sum(margins) / max(1, len(margins)):>13.3f}{tokens:>12}")


if __name__ == "__main__":
    main()
