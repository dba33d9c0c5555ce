"""The offload tier's workloads, run the same way on the GPU device (in the test process) and on
the CPU (in `reference.py`, a process of its own with no GPU device visible).

Each scenario takes the llama.cpp placement (n_gpu_layers) and returns plain JSON: texts, the
token ids the engine produced and the numbers a judge reads, so the two sides compare field by
field. Sized for Mesa's software Vulkan device, where a prompt token costs ~50x the CPU's: the
135M model, short prompts, a handful of requests.
"""

from __future__ import annotations

from edgepref.backends.base import ChatRequest, Sampling
from edgepref.judging.compare import PAIRWISE_RECIPES, compare
from edgepref.stages.config import JudgeConfig
from edgepref.backends.engine import Engine
from edgepref.stages.judge import judge
from edgepref.core.records import Completion, Record

SMOL = "smollm2-135m"
QWEN = "qwen2.5-coder-0.5b"
JUDGE15 = "qwen2.5-coder-1.5b"

PROMPTS = ["What is the capital of France?", "Name two primary colors.", "Write a haiku about rain."]
QUESTION = "What is the capital of France?"
GOOD, BAD = "The capital of France is Paris.", "I think it is Lyon."


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _generated(results) -> list[dict]:
    return [{"text": r.text, "prompt": r.prompt_tokens, "tokens": r.generations[0].token_ids} for r in results]


def greedy(n_gpu_layers: int | None) -> dict:
    """Greedy answers to three prompts, one sequence at a time."""
    with Engine(SMOL, n_slots=1, n_ctx=512, n_gpu_layers=n_gpu_layers) as engine:
        results = [engine.chat([ChatRequest(user(p), Sampling(max_tokens=16))])[0] for p in PROMPTS]
        return {"answers": _generated(results),
                "prompts": [engine.template.tokens(user(p)) for p in PROMPTS]}


def follow_up(first: str, answer: str) -> list[dict[str, str]]:
    return [*user(first), {"role": "assistant", "content": answer}, *user("Shorter?")]


def batched(n_gpu_layers: int | None) -> dict:
    """Sixteen requests in sixteen slots decoded together, each followed by a second turn that
    continues its conversation in the slot holding it (the engine's `then`: its KV is reused)."""
    topics = ["rain", "cats", "bread", "the sea", "trains", "snow", "music", "tea",
              "bees", "clocks", "maps", "salt", "glass", "wind", "paper", "stars"]
    firsts = [f"One fact about {t}?" for t in topics]

    def then_for(first: str):
        return lambda answer: ChatRequest(follow_up(first, answer), Sampling(max_tokens=4))

    reqs = [ChatRequest(user(f), Sampling(max_tokens=6), then=then_for(f)) for f in firsts]
    with Engine(SMOL, n_slots=16, n_ctx=256, n_gpu_layers=n_gpu_layers) as engine:
        results = engine.chat(reqs)
        seconds = [r.follow_up for r in results]
        assert all(s is not None for s in seconds), "a follow-up turn did not run in its slot"
        return {
            "answers": _generated(results),
            "follow_ups": _generated(seconds),
            "prompts": [engine.template.tokens(user(f)) for f in firsts],
            "follow_up_prompts": [engine.template.tokens(follow_up(f, r.text)) for f, r in zip(firsts, results)],
            "reused": engine.stats.prompt_tokens_cached,
        }


def ratings(n_gpu_layers: int | None) -> dict:
    """UltraFeedback ratings (score-only, the GBNF grammar) of two answers: integer scores and the
    probability-weighted ones."""
    record = Record(id="r", instruction=QUESTION, completions=[
        Completion(id="m:0", text=GOOD, model="m"), Completion(id="m:1", text=BAD, model="m")])
    with Engine(SMOL, n_slots=2, n_ctx=1024, n_gpu_layers=n_gpu_layers) as engine:
        errors: list = []
        judge([record], SMOL, engine, JudgeConfig(mode="score-only", shuffle=False),
              on_error=lambda *a: errors.append(str(a)))
    return {"errors": errors,
            "ratings": {r.completion_id: {"score": r.score, "expected": r.expected} for r in record.ratings}}


def verdict(n_gpu_layers: int | None, model: str = SMOL) -> dict:
    """The pairwise verdict of the default recipe (both orders) on one short pair: its margin."""
    recipe = PAIRWISE_RECIPES[JudgeConfig().recipe]
    with Engine(model, n_slots=1, n_ctx=1024, n_gpu_layers=n_gpu_layers) as engine:
        v = compare([(QUESTION, GOOD, BAD)], [recipe], engine, model)[recipe.name][0]
    return {"error": v.error, "margin": v.margin, "logodds": v.logodds}


SCENARIOS = {"greedy": greedy, "batched": batched, "ratings": ratings, "verdict": verdict}
