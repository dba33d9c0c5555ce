"""The batched engine on the real embedded models."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgepref.backends.base import ChatRequest, Sampling
from edgepref.backends.engine import Engine
from edgepref.core.errors import EngineError
from edgepref.backends.engine.handles import load_high_level_llama
from edgepref.backends.engine.prefixes import PrefixStore
from edgepref.judging.compare import get_recipe, request
from edgepref.judging.grammars import build_rating_grammar, parse_rating_lines
from edgepref.models.modelfiles import resolve_model_path

from .conftest import QWEN, SMOL

PROMPTS = [
    "Write a haiku about rain.",
    "Explain recursion briefly.",
    "Give me three tips for sleeping better.",
    "What is the capital of Japan?",
    "Name two primary colors.",
    'Translate "good morning" to French.',
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model", [QWEN, SMOL])
def test_one_slot_greedy_equals_llama_cpp_python(model: str) -> None:
    # Same file, context size, threads and attention kernel as the reference, one sequence, and
    # each prompt decoded in one call as Llama does (other batch shapes round differently).
    engine = Engine(model, n_slots=1, n_ctx=1024, n_threads=2, flash_attn=False, prompt_block=512)
    ref = load_high_level_llama(resolve_model_path(model), n_ctx=1024, n_threads=2, flash_attn=False)
    try:
        for prompt in PROMPTS[:3]:
            ours = engine.chat([ChatRequest(user(prompt), Sampling(max_tokens=40))])[0]
            theirs = ref.create_chat_completion(user(prompt), temperature=0, max_tokens=40)
            assert ours.text == theirs["choices"][0]["message"]["content"]
            assert ours.prompt_tokens == theirs["usage"]["prompt_tokens"]
    finally:
        engine.close()
        del ref


def test_batch_has_no_cross_talk(qwen_engine: Engine) -> None:
    """Batched greedy output is the greedy output of that prompt alone, up to float noise.

    llama.cpp's CPU kernels sum in a different order for different batch shapes, so a greedy
    token can flip where two candidates are within a hair of each other; exact equality with a
    one-at-a-time run therefore does not hold for every prompt (we saw 2-4 of 6 differ). What must
    hold is that every token the batch produced is the argmax, within float noise, of that
    prompt's own single-sequence logits given its own prefix: tokens leaking from another
    sequence would be far from the argmax. We check that by teacher-forcing each batched
    answer through llama-cpp-python's reference path.
    """
    reqs = [ChatRequest(user(p), Sampling(max_tokens=32)) for p in PROMPTS]
    batched = qwen_engine.chat(reqs)
    alone = [qwen_engine.chat([r])[0] for r in reqs]
    assert sum(b.text == a.text for b, a in zip(batched, alone)) >= 2
    ref = load_high_level_llama(resolve_model_path(QWEN), n_ctx=1024, logits_all=True)
    try:
        for req, res in zip(reqs, batched):
            prompt = qwen_engine.template.tokens(req.messages)
            gen = res.generations[0].token_ids
            assert gen, "no tokens generated"
            ref.reset()
            ref.eval(prompt + gen)
            scores = np.asarray(ref.scores[len(prompt) - 1 : len(prompt) - 1 + len(gen)])
            gaps = scores.max(axis=1) - scores[np.arange(len(gen)), gen]
            assert gaps.max() < 0.5, f"{req.messages[0]['content']!r}: token off by {gaps.max():.2f} logits"
    finally:
        del ref


SEEDED = ChatRequest(user("Invent a name for a cat."), Sampling(temperature=1.0, max_tokens=16, seed=7), n=4)
LONG_SYSTEM = "You are a careful, friendly assistant who answers briefly and precisely. " * 4


def _texts(engine: Engine, req: ChatRequest = SEEDED) -> list[str]:
    return [g.text for g in engine.chat([req])[0].generations]


def test_same_seed_same_text_whatever_the_cache(qwen_engine: Engine) -> None:
    # The first call decodes the prompt; later ones find it whole in the cache. Unrelated
    # requests in between (some sharing a long system prompt, so shared blocks get cached)
    # leave other sequences behind. None of it may change the text: llama.cpp's CPU kernels
    # round differently per batch shape and attention window, so this holds only because the
    # engine computes prompts one way and starts each call from a cache of this call's prompts.
    first = _texts(qwen_engine)
    assert _texts(qwen_engine) == first
    assert _texts(qwen_engine) == first
    unrelated = [
        ChatRequest([{"role": "system", "content": LONG_SYSTEM}, *user(f"Tell me about topic {i}.")],
                    Sampling(temperature=0.8, max_tokens=12, seed=i), n=2)
        for i in range(5)
    ] + [ChatRequest(user("Invent a name for a dog."), Sampling(temperature=0.9, max_tokens=20, seed=1), n=3)]
    qwen_engine.chat(unrelated)
    assert _texts(qwen_engine) == first
    with_system = ChatRequest([{"role": "system", "content": LONG_SYSTEM}, *user("Invent a name for a cat.")],
                              SEEDED.sampling, n=4)
    sys_first = _texts(qwen_engine, with_system)
    qwen_engine.chat(unrelated)
    assert _texts(qwen_engine, with_system) == sys_first
    fresh = Engine(QWEN, n_slots=qwen_engine.n_slots, n_ctx=qwen_engine.n_ctx)
    try:
        assert _texts(fresh) == first
        assert _texts(fresh, with_system) == sys_first
    finally:
        fresh.close()
    # consecutive seeds are different draws
    assert [g.seed for g in qwen_engine.chat([SEEDED])[0].generations] == [7, 8, 9, 10]
    assert len(set(first)) >= 3 and len(set(sys_first)) >= 3


def test_a_cached_prompt_is_not_decoded_again(qwen_engine: Engine) -> None:
    req = ChatRequest(user("Name a colour."), Sampling(max_tokens=1, temperature=0.0), n=3,
                      choices=["Red", "Blue", "Green"])
    first = qwen_engine.chat([req])[0]
    again = qwen_engine.chat([req])[0]
    # the first call decodes the prompt once and the other two samples copy all of it ...
    assert first.cached_prompt_tokens == 2 * first.prompt_tokens
    # ... the second decodes nothing: all three take the prompt and its logits from the cache
    assert again.cached_prompt_tokens == 3 * again.prompt_tokens
    assert again.choice_probs == first.choice_probs  # bit for bit


def test_reads_depend_on_their_prompt_alone(qwen_engine: Engine) -> None:
    """A read (max_tokens 0: a verdict's label log-odds) gives the same numbers alone, beside
    other reads, beside generation, after other calls, and as any sample of a request."""
    reads = [ChatRequest(user(q), Sampling(max_tokens=0), choices=["Yes", "No"])
             for q in ("Is the sea salty? " + LONG_SYSTEM * 10, "Is fire cold?", "Is two a prime number?")]
    alone = [qwen_engine.chat([r])[0].choice_logprobs for r in reads]
    together = [r.choice_logprobs for r in qwen_engine.chat(reads)]
    gen = ChatRequest(user("Write a haiku about rain."), Sampling(max_tokens=12, seed=3))
    mixed = qwen_engine.chat([gen, reads[2], gen, reads[0]])
    assert together == alone
    assert [mixed[1].choice_logprobs, mixed[3].choice_logprobs] == [alone[2], alone[0]]
    assert mixed[0].text and mixed[2].text  # the generation ran too
    samples = qwen_engine.chat([ChatRequest(reads[1].messages, Sampling(max_tokens=0), n=2, choices=["Yes", "No"])])[0]
    assert samples.choice_logprobs == alone[1] and samples.cached_prompt_tokens == samples.prompt_tokens
    assert qwen_engine.read_path == "split-512"


ANSWERS = (
    "The sky looks blue because air scatters short blue wavelengths of sunlight more than red ones. " * 3,
    "Sunlight hits molecules in the atmosphere and the blue part is bounced around the most, so we see it. " * 3,
    "It is blue because of the ocean reflecting onto it. " * 4,
)


def test_split_reads_decode_shared_text_once_and_keep_their_numbers(smol_engine: Engine) -> None:
    """A pairwise verdict's reads carry marks where each response starts: the engine splits them
    there and saves each prefix, so the checks of one instruction's pairs decode the instruction
    and each response shown first once. Every number is still the one a cold engine computes
    for that prompt alone, whatever was saved or decoded before."""
    recipe = get_recipe("headings-ab")
    a, b, c = ANSWERS
    reqs = [request(recipe, "Why is the sky blue?", x, y, ("A", "B")) for x, y in ((a, b), (b, a), (a, c), (c, a))]
    bounds = [smol_engine.template.prompt(r.messages, "", r.marks)[1] for r in reqs]
    assert all(len(bd) == 2 for bd in bounds)
    assert bounds[0][0] == bounds[1][0] == bounds[2][0]  # the prompts share the text up to the first response
    assert bounds[0][1] == bounds[2][1]  # (a, b) and (a, c) share it up to the second
    cold = []
    for r in reqs:
        smol_engine.prefixes = PrefixStore()
        cold.append(smol_engine.chat([r])[0].choice_logprobs)
    smol_engine.prefixes = PrefixStore()
    together = smol_engine.chat(reqs)
    assert [r.choice_logprobs for r in together] == cold  # bit for bit
    assert [r.cached_prompt_tokens for r in together] == [0, bounds[1][0], bounds[2][1], bounds[3][0]]
    later = smol_engine.chat(list(reversed(reqs)))  # every prefix saved now: each decodes from its last bound
    assert [r.choice_logprobs for r in reversed(later)] == cold
    assert [r.cached_prompt_tokens for r in reversed(later)] == [bd[1] for bd in bounds]


def test_reads_without_split_are_decoded_whole() -> None:
    engine = Engine(SMOL, n_slots=1, n_ctx=1024, split_reads=False)
    try:
        r = request(get_recipe("headings-ab"), "Why is the sky blue?", ANSWERS[0], ANSWERS[1], ("A", "B"))
        again = request(get_recipe("headings-ab"), "Why is the sky blue?", ANSWERS[0], ANSWERS[2], ("A", "B"))
        got = engine.chat([r, again])
        assert engine.read_path == "alone-512" and len(engine.prefixes) == 0
        assert [x.cached_prompt_tokens for x in got] == [0, 0]  # they share less than one 512-token block
    finally:
        engine.close()


def test_read_block_is_checked() -> None:
    with pytest.raises(EngineError, match="read_block"):
        Engine(SMOL, n_slots=1, n_ctx=256, read_block=1024)


def test_prefixes_are_reused_in_whole_blocks(smol_engine: Engine) -> None:
    block = smol_engine.prompt_block
    msgs = [{"role": "system", "content": LONG_SYSTEM}]
    shared = smol_engine.count_tokens(msgs)
    a, b = (ChatRequest(msgs + user(q), Sampling(max_tokens=2)) for q in ("Say hi.", "Say bye."))
    ra, rb = smol_engine.chat([a, b])
    assert ra.cached_prompt_tokens == 0
    assert rb.cached_prompt_tokens % block == 0
    assert shared - 2 * block < rb.cached_prompt_tokens <= shared


def test_n_samples_share_the_prompt_kv(qwen_engine: Engine) -> None:
    before = qwen_engine.stats.prompt_tokens_cached
    req = ChatRequest(user("Describe a sunset over the ocean in detail."), Sampling(temperature=0.8, max_tokens=4), n=4)
    result = qwen_engine.chat([req])[0]
    saved = qwen_engine.stats.prompt_tokens_cached - before
    # three of the four samples copy the whole prompt from the first
    assert saved >= 3 * result.prompt_tokens


def test_shared_system_prompt_is_decoded_once(smol_engine: Engine) -> None:
    system = "You are a careful assistant. " * 20
    reqs = [
        ChatRequest([{"role": "system", "content": system}, {"role": "user", "content": q}], Sampling(max_tokens=4))
        for q in ["Say hi.", "Say bye.", "Count to three.", "Name a fruit."]
    ]
    smol_engine.chat([ChatRequest(user("warm-up so the slots hold something else"), Sampling(max_tokens=2))])
    before = smol_engine.stats.prompt_tokens_cached
    results = smol_engine.chat(reqs)
    system_tokens = smol_engine.count_tokens([{"role": "system", "content": system}])
    reusable = system_tokens // smol_engine.prompt_block * smol_engine.prompt_block
    assert reusable > 0
    assert smol_engine.stats.prompt_tokens_cached - before >= 3 * reusable
    assert all(r.ok for r in results)


COUNT = "Count from 1 to 12, separated by commas."
REVERSE = "Now write the same numbers in reverse order, separated by commas."


def _reverse_turn(text: str) -> ChatRequest:
    return ChatRequest(user(COUNT) + [{"role": "assistant", "content": text}] + user(REVERSE), Sampling(max_tokens=48))


def test_a_follow_up_turn_continues_in_its_slot(qwen_engine: Engine) -> None:
    # The follow-up's prompt is the conversation so far plus one turn: the slot already holds the
    # first prompt and the answer, so only the tail is decoded, and greedy decoding gives the
    # text that the same messages give as a request of their own.
    seen: list[str] = []

    def then(text: str) -> ChatRequest:
        seen.append(text)
        return _reverse_turn(text)

    before = qwen_engine.stats.prompt_tokens_cached
    first = qwen_engine.chat([ChatRequest(user(COUNT), Sampling(max_tokens=48), then=then)])[0]
    follow = first.follow_up
    assert first.ok and seen == [first.text] and "12" in first.text
    assert follow is not None and follow.ok and follow.request.messages[1]["content"] == first.text
    answer_tokens = first.generations[0].completion_tokens
    # all of the first prompt and the answer (its last tokens may tokenize differently as text)
    assert follow.cached_prompt_tokens >= first.prompt_tokens + answer_tokens - 2
    assert qwen_engine.stats.prompt_tokens_cached - before == follow.cached_prompt_tokens
    alone = qwen_engine.chat([_reverse_turn(first.text)])[0]
    assert alone.cached_prompt_tokens == 0
    assert follow.text == alone.text and "12" in follow.text.split(",")[0]


def test_follow_ups_do_not_depend_on_the_order_of_requests(qwen_engine: Engine) -> None:
    others = [ChatRequest(user(p), Sampling(max_tokens=12)) for p in PROMPTS[3:]]
    chained = ChatRequest(user(COUNT), Sampling(max_tokens=48), then=_reverse_turn)
    texts = []
    for reqs in ([chained, *others], [*others, chained], [others[0], chained, *others[1:]]):
        result = next(r for r in qwen_engine.chat(reqs) if r.request is chained)
        texts.append((result.text, result.follow_up.text))
    assert texts[0] == texts[1] == texts[2]


def test_follow_ups_that_cannot_run(smol_engine: Engine) -> None:
    none = ChatRequest(user("Say hi."), Sampling(max_tokens=4), then=lambda text: None)
    too_long = ChatRequest(user("Say hi."), Sampling(max_tokens=4),
                           then=lambda text: ChatRequest(user("word " * 3000)))
    failed = ChatRequest(user("Say hi."), grammar="root ::= (((", then=lambda text: ChatRequest(user("again")))
    results = smol_engine.chat([none, too_long, failed])
    assert results[0].ok and results[0].follow_up is None
    assert results[1].ok and "a slot holds 2048" in results[1].follow_up.error
    assert not results[2].ok and results[2].follow_up is None  # no follow-up of a failed request


@pytest.mark.parametrize("n", [2, 3, 5])
def test_rating_grammar_always_parses(qwen_engine: Engine, n: int) -> None:
    answers = "\n".join(f"Response {i + 1}: {w}" for i, w in enumerate(["Paris", "London", "Rome", "I don't know", "Paris, France"][:n]))
    req = ChatRequest(
        user(f"Question: what is the capital of France?\n{answers}\nRate each response 1-5, one line each: score - reason."),
        Sampling(temperature=1.0, max_tokens=400, seed=3),
        n=3,
        grammar=build_rating_grammar(n, max_rationale_chars=60),
    )
    result = qwen_engine.chat([req])[0]
    assert result.ok
    for gen in result.generations:
        assert gen.finish_reason == "stop"
        lines = parse_rating_lines(gen.text, n)
        assert len(lines) == n and all(1 <= ln.score <= 5 for ln in lines)
        assert re.fullmatch(r"([1-5] - [^\n ][^\n]{0,59}\n){%d}" % n, gen.text)


def test_choice_probabilities(qwen_engine: Engine) -> None:
    req = ChatRequest(
        user("What is 2 + 2? Answer with a single digit."), Sampling(max_tokens=0), choices=["1", "2", "3", "4", "5"]
    )
    probs = qwen_engine.chat([req])[0].choice_probs
    assert probs is not None and set(probs) == {"1", "2", "3", "4", "5"}
    assert sum(probs.values()) == pytest.approx(1.0)
    assert max(probs, key=probs.get) == "4" and probs["4"] > 0.5


def test_choice_trace_records_score_positions(qwen_engine: Engine) -> None:
    req = ChatRequest(
        user("Rate the answer 'Paris' to 'capital of France?' and the answer 'Berlin', 1-5, score - reason per line."),
        Sampling(max_tokens=120),
        grammar=build_rating_grammar(2, 40),
        trace_choices=["1", "2", "3", "4", "5"],
    )
    gen = qwen_engine.chat([req])[0].generations[0]
    lines = parse_rating_lines(gen.text, 2)
    traced = dict(gen.choice_trace)
    for line in lines:
        dist = traced[line.offset]
        assert sum(dist.values()) == pytest.approx(1.0)
        assert max(dist, key=dist.get) == str(line.score)


def test_bad_requests_fail_alone(smol_engine: Engine) -> None:
    good = ChatRequest(user("Say hello."), Sampling(max_tokens=8))
    bad_grammar = ChatRequest(user("Say hello."), grammar="root ::= (((")
    too_long = ChatRequest(user("word " * 3000))
    results = smol_engine.chat([bad_grammar, good, too_long])
    assert results[1].ok and results[1].text
    assert "invalid GBNF grammar" in results[0].error and "expecting" in results[0].error
    assert results[0].generations[0].finish_reason == "error"
    assert "a slot holds 2048" in results[2].error and "--n-ctx" in results[2].error


def test_stop_strings_and_length(smol_engine: Engine) -> None:
    res = smol_engine.chat([
        ChatRequest(user("Count from 1 to 20 separated by commas."), Sampling(max_tokens=60, stop=("5",))),
        ChatRequest(user("Write a long story about a dragon."), Sampling(max_tokens=5)),
    ])
    assert "5" not in res[0].text and res[0].generations[0].finish_reason == "stop"
    assert res[1].generations[0].finish_reason == "length" and res[1].generations[0].completion_tokens == 5


def test_progress_callback_sees_every_request(smol_engine: Engine) -> None:
    seen = []
    reqs = [ChatRequest(user(p), Sampling(max_tokens=6)) for p in PROMPTS]
    smol_engine.chat(reqs, on_result=lambda prog, res: seen.append((prog.done, prog.total, res.request)))
    assert [d for d, _, _ in seen] == list(range(1, len(reqs) + 1))
    assert {id(r) for _, _, r in seen} == {id(r) for r in reqs}


def test_full_kv_cache_halves_the_batch_and_goes_on(smol_engine: Engine, monkeypatch) -> None:
    reqs = [ChatRequest(user(p), Sampling(max_tokens=6)) for p in PROMPTS]
    expected = [r.text for r in smol_engine.chat(reqs)]
    real_decode = smol_engine.ctx.decode
    refusals = {"n": 0}

    def decode(batch):
        # llama_decode returns 1 when the KV cache has no room for the batch (state unchanged).
        if batch.n > 4 and refusals["n"] < 3:
            refusals["n"] += 1
            return 1
        return real_decode(batch)

    monkeypatch.setattr(smol_engine.ctx, "decode", decode)
    halvings = smol_engine.stats.batch_halvings
    results = smol_engine.chat(reqs)
    assert all(r.ok for r in results) and refusals["n"] == 3
    assert smol_engine.stats.batch_halvings > halvings
    # greedy requests: each answer is the one the unrefused call gave, in its request's place
    assert [r.request for r in results] == reqs and [r.text for r in results] == expected


def test_kv_budget_is_checked_up_front() -> None:
    with pytest.raises(Exception) as info:
        Engine(SMOL, n_slots=4096, n_ctx=8192)
    assert "lower --slots" in str(info.value)


def test_model_params_match_llama_cpp_pythons_llama() -> None:
    """Every field of the engine's llama_model_params against those of a default `Llama` on the
    same file; each field that may differ says why."""
    import ctypes

    import llama_cpp as C

    from edgepref.backends.engine.handles import default_gpu_layers, default_use_extra_buffers, model_params

    explained = {
        # the engine offloads every layer on a GPU build; Llama's default is 0 (equal on a CPU build)
        "n_gpu_layers": default_gpu_layers() != 0,
        # the engine turns llama.cpp's extra buffer types off on AMX CPUs (llama.cpp#20824)
        "use_extra_bufts": not default_use_extra_buffers(),
    }
    ours = model_params(default_gpu_layers(), default_use_extra_buffers())
    llm = C.Llama(str(resolve_model_path(SMOL)), verbose=False, n_ctx=64)
    try:
        theirs = llm.model_params
        assert ours.load_mode == theirs.load_mode == C.LLAMA_LOAD_MODE_MMAP
        for name, kind in type(ours)._fields_:
            a, b = getattr(ours, name), getattr(theirs, name)
            if isinstance(a, (int, float, bool, type(None))) and isinstance(b, (int, float, bool, type(None))):
                same = a == b
            else:  # pointers and callbacks: both NULL or both set
                same = bool(ctypes.cast(a, ctypes.c_void_p).value) == bool(ctypes.cast(b, ctypes.c_void_p).value)
            assert same or explained.get(name), f"{name}: engine {a!r}, Llama {b!r}"
    finally:
        llm.close()
