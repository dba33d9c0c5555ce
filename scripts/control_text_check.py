"""Do clean verdict prompts keep their tokens now that message text tokenizes as text?

    python scripts/control_text_check.py --pairs ../shared/data/alpaca_eval_dev/judge_pairs.jsonl

For every pair, both showing orders and every question of the default recipe, on each embedded
judge: the prompt's tokens as the engine builds them (only the chat template's markup may make
control tokens) against the tokens of llama.cpp's special-token parsing of the whole rendered
text (what the engine did before). A pair whose texts hold none of the model's control strings
must get identical tokens, hence an identical verdict (a read depends on its tokens alone);
the pairs that do hold one are counted and shown. Reads vocabularies only: no weights, seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgepref.judging.compare import _questions, get_recipe, request
from edgepref.stages.config import JudgeConfig
from edgepref.backends.engine.handles import LlamaModel, default_use_extra_buffers
from edgepref.backends.engine.template import ChatTemplate
from edgepref.models.modelfiles import resolve_model_path

JUDGES = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def check(model_name: str, pairs: list[dict], recipe_name: str) -> dict:
    model = LlamaModel(Path(resolve_model_path(model_name)), 0, default_use_extra_buffers(), vocab_only=True)
    template = ChatTemplate(model)
    recipe = get_recipe(recipe_name)
    same = differ = with_control = 0
    shown = []
    for pair in pairs:
        texts = (pair["instruction"], pair["response_a"], pair["response_b"])
        holds = any(t.text in x for t in template.controls for x in texts)
        with_control += holds
        for first, second in ((texts[1], texts[2]), (texts[2], texts[1])):
            for labels, question in _questions(recipe):
                req = request(recipe, texts[0], first, second, labels, question)
                ours = template.tokens(req.messages, req.prefill)
                text = template.render(req.messages) + req.prefill
                add_bos = model.add_bos and not (template.bos_text and text.startswith(template.bos_text))
                before = model.tokenize(text, add_special=add_bos, parse_special=True)
                if ours == before:
                    same += 1
                else:
                    differ += 1
                    if not holds:
                        shown.append(pair["id"])
    model.close()
    return {"judge": model_name, "pairs": len(pairs), "pairs_with_control_text": with_control,
            "prompts_identical": same, "prompts_changed": differ, "clean_pairs_changed": sorted(set(shown))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="JSONL of instruction, response_a, response_b")
    ap.add_argument("--recipe", default=JudgeConfig().recipe)
    args = ap.parse_args()
    pairs = [json.loads(line) for line in Path(args.pairs).read_text(encoding="utf-8").splitlines() if line.strip()]
    for judge in JUDGES:
        print(json.dumps(check(judge, pairs, args.recipe)))


if __name__ == "__main__":
    main()
