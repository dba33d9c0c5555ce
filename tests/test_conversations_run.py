"""Conversations through the whole pipeline on the real embedded models: every stage sees the
earlier turns, pairs come out in TRL's conversational layout, bad conversations are row errors,
long ones lose their oldest turns (a killed conversation run resuming: tests/test_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepref.backends.base import ChatRequest, Sampling
from edgepref.core.errors import ConfigError
from edgepref.runs.pipeline import run_pipeline
from edgepref.stages.config import EvolveConfig, JudgeConfig, PairConfig, PipelineConfig, PoolMember

from .conftest import QWEN, SMOL

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "conversations.jsonl"


class Recording:
    """A backend that passes every request to `inner` and keeps its messages."""

    def __init__(self, inner):
        self.inner, self.name, self.messages = inner, inner.name, []

    def chat(self, requests, on_result=None):
        self.messages += [r.messages for r in requests]
        return self.inner.chat(requests, on_result=on_result)

    def close(self):
        pass

    def __getattr__(self, name):
        return getattr(self.inner, name)


def small_config(**pair) -> PipelineConfig:
    return PipelineConfig(
        pool=[PoolMember(QWEN, max_tokens=24), PoolMember(SMOL, max_tokens=24)],
        evolve=EvolveConfig(num_evolutions=1, max_tokens=32),
        # no ratings; every verdict decides (|margin| >= 0) so that each conversation gets a pair
        judge=JudgeConfig(models=[QWEN], mode="none", n_ctx=2048),
        pair=PairConfig(min_confidence=0.0, candidates=1, **pair),
    )


# Five of the examples, one of each shape: OpenAI style with a system message (conv-01) and
# without one (conv-02), ShareGPT style with a system turn (conv-03), and a `system` column in
# either style (conv-05, conv-06)
SHAPES = ("conv-01", "conv-02", "conv-03", "conv-05", "conv-06")
N = len(SHAPES)


@pytest.fixture(scope="module")
def conversation_run(tmp_path_factory, qwen_engine, smol_engine):
    out = tmp_path_factory.mktemp("conversations")
    src = out.parent / "shapes.jsonl"
    src.write_text("".join(line for line in EXAMPLES.read_text().splitlines(keepends=True)
                           if json.loads(line)["id"] in SHAPES))
    backends = {QWEN: Recording(qwen_engine), SMOL: Recording(smol_engine)}
    result = run_pipeline(str(src), out, small_config(), backends=backends)
    return out, result, backends


def test_every_stage_sees_the_earlier_turns(conversation_run) -> None:
    _, result, backends = conversation_run
    assert [r.id for r in result.records] == list(SHAPES) and all(r.history for r in result.records)
    for record in result.records:
        first_turn = record.history[0]["content"]
        # the pool continues the conversation: its request holds every turn, then the instruction
        for name, be in backends.items():
            sent = [m for m in be.messages if any(t["content"] == first_turn for t in m)]
            assert sent, f"{name} never saw the earlier turns of {record.id}"
        completion = next(m for m in backends[SMOL].messages if any(t["content"] == first_turn for t in m))
        turns = [t for t in completion if t["role"] != "system"]
        assert turns == [*record.history, {"role": "user", "content": record.instruction}]
        if record.system:
            assert completion[0] == {"role": "system", "content": record.system}
            assert all(c.system_prompt == record.system for c in record.completions if c.source == "pool")
    qwen_prompts = [m for m in backends[QWEN].messages]
    # the rewrite keeps the conversation in view (earlier turns, the answer, then the rewrite
    # turn) and still runs in place, as a follow-up turn of the completion in its slot
    from edgepref.stages.evolve import rewrite_request

    cfg = small_config()
    for record in result.records:
        for child in (c for c in record.completions if c.source == "evol"):
            req = rewrite_request(record, record.completion(child.parent_id), child.criterion, cfg.evolve, cfg.seed)
            assert req.messages[:-2] == record.chat() and req.messages[-2]["role"] == "assistant"
    assert result.summary.evolutions_kept >= 1 and result.summary.continued_requests == N
    # the verdict prompt shows the earlier turns before the responses
    verdicts = [m for m in qwen_prompts if "The conversation so far:" in m[-1]["content"]]
    assert verdicts and all("The last user message" in m[-1]["content"] for m in verdicts)


def test_pairs_are_trl_conversations(conversation_run) -> None:
    out, result, _ = conversation_run
    assert len(result.pairs) == N
    by_id = {r.id: r for r in result.records}
    for row in map(json.loads, (out / "pairs.jsonl").read_text().splitlines()):
        record = by_id[row["id"]]
        assert row["prompt"] == record.chat()  # system message (if any), earlier turns, the last user turn
        assert row["prompt"][-1] == {"role": "user", "content": record.instruction}
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    systems = [r for r in result.records if r.system]
    assert len(systems) == 4  # a system message in either style, and a system column in either
    import datasets

    ds = datasets.load_dataset("json", data_files=str(out / "pairs.jsonl"), split="train")
    assert len(ds) == N and isinstance(ds[0]["prompt"], list)


def test_a_standard_layout_is_refused_for_conversations(qwen_engine, smol_engine, tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot hold a conversation"):
        run_pipeline(str(EXAMPLES), tmp_path / "out", small_config(format="standard"),
                     backends={QWEN: qwen_engine, SMOL: smol_engine})
    assert not (tmp_path / "out" / "cache").exists() or not any((tmp_path / "out" / "cache").iterdir())


def test_bad_conversations_are_row_errors_and_the_run_goes_on(qwen_engine, smol_engine, tmp_path) -> None:
    good = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                         {"role": "user", "content": "And another one?"}]}
    bad = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "wizard", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "   "}]},
        {"messages": [{"role": "user", "content": "One"}, {"role": "user", "content": "Two"}]},
        {"conversations": "not a list"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [good, *bad]))
    out = tmp_path / "out"
    result = run_pipeline(str(src), out, small_config(), backends={QWEN: qwen_engine, SMOL: smol_engine})
    assert len(result.records) == 1 and len(result.pairs) == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_row = {e["row"]: e["reason"] for e in errors if e["stage"] == "input"}
    assert sorted(by_row) == [2, 3, 4, 5, 6]
    assert "assistant" in by_row[2] and "wizard" in by_row[3] and "user" in by_row[5]


def test_a_long_conversation_loses_its_oldest_turns(qwen_engine, smol_engine, tmp_path) -> None:
    """14 long turns do not fit a 2048-token slot; the run drops the oldest exchanges, records
    how many, and answers the rest without a request error."""
    turns = []
    for k in range(7):
        turns += [{"role": "user", "content": f"Question {k}: " + "tell me about the history of tea. " * 18},
                  {"role": "assistant", "content": f"Answer {k}: " + "tea spread from China along trade routes. " * 16}]
    conversation = [*turns, {"role": "user", "content": "Summarise what you told me in one sentence."}]
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"messages": conversation}) + "\n")
    # as it stands, the conversation alone is more than the slot holds
    whole = smol_engine.chat([ChatRequest(conversation, Sampling(max_tokens=8))])[0]
    assert not whole.ok and "a slot holds 2048" in whole.error
    cfg = small_config()
    cfg.evolve.num_evolutions = 0  # the pool and the verdict see the fitted conversation; rewrites add nothing here
    result = run_pipeline(str(src), tmp_path / "out", cfg, backends={QWEN: qwen_engine, SMOL: smol_engine})
    record = result.records[0]
    (trim,) = [d for d in record.dropped if d["reason"] == "context"]
    assert trim["turns"] >= 2 and trim["turns"] % 2 == 0 and len(record.history) == 14 - trim["turns"]
    assert record.history[-1]["content"] == turns[-1]["content"].strip()  # the newest turns stay
    assert result.summary.request_errors == 0 and len(record.completions) >= 2 and result.pairs
