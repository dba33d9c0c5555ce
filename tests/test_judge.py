"""The judge and evolve stages on the real embedded models."""

from __future__ import annotations

import math

import pytest

from edgepref.stages.config import EvolveConfig, JudgeConfig, PoolMember
from edgepref.stages.evolve import (
    continuation, drop_reason, evolve, in_place, parents, pick_criterion, planned_parents, rewrite_request,
    strip_leaked_headings)
from edgepref.backends.base import ChatRequest, ChatResult, Sampling
from edgepref.judging.compare import PAIRWISE_RECIPES, compare
from edgepref.judging.compare import request as compare_request
from edgepref.stages.judge import bradley_terry, judge, panel_agreement, shown_orders
from edgepref.stages.verify import verify
from edgepref.core.records import Completion, Rating, Record

from .conftest import QWEN, SMOL

ANSWERS = [
    "The capital of France is Paris.",
    "France's capital city is Paris, on the Seine.",
    "I think it is Lyon.",
    "Berlin.",
    "Paris is the capital and largest city of France.",
]


def record_with(n: int, rid: str = "r") -> Record:
    return Record(
        id=rid,
        instruction="What is the capital of France?",
        completions=[Completion(id=f"m:{i}", text=ANSWERS[i], model="m") for i in range(n)],
    )


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("mode", ["rationale", "score-only"])
def test_every_response_gets_a_parsed_rating(qwen_engine, n: int, mode: str) -> None:
    records = [record_with(n, "a"), record_with(n, "b")]
    errors = []
    judge(records, QWEN, qwen_engine, JudgeConfig(mode=mode, max_rationale_chars=40),
          on_error=lambda *a: errors.append(a))
    assert errors == []
    for record in records:
        assert sorted(r.completion_id for r in record.ratings) == [f"m:{i}" for i in range(n)]
        for r in record.ratings:
            assert r.score in {1, 2, 3, 4, 5}
            assert r.expected is not None and 1.0 <= r.expected <= 5.0
            assert (r.rationale != "") == (mode == "rationale")
            assert len(r.positions) == 1


def test_judge_prefers_the_right_answer(qwen_engine) -> None:
    record = record_with(4)
    judge([record], QWEN, qwen_engine, JudgeConfig(max_rationale_chars=40))
    by_id = {r.completion_id: r.expected for r in record.ratings}
    assert by_id["m:0"] > by_id["m:3"]  # "Paris" beats "Berlin"


def test_scores_are_ratings_not_line_numbers(qwen_engine) -> None:
    # When the rating prompt ended with the output format, after the responses, this judge
    # numbered its lines instead of scoring them: every score equalled the position shown (87
    # of 87 ratings on 32 AlpacaEval instructions). The format now comes before the input.
    record = record_with(4)
    judge([record], QWEN, qwen_engine, JudgeConfig(shuffle=False, max_rationale_chars=60))
    by_position = [r.score for r in sorted(record.ratings, key=lambda r: r.positions[0])]
    assert by_position != [1, 2, 3, 4]


def test_both_orders_average_two_passes(qwen_engine) -> None:
    record = record_with(3)
    cfg = JudgeConfig(mode="score-only", both_orders=True)
    judge([record], QWEN, qwen_engine, cfg)
    orders = record.judge_info["orders"][QWEN]
    assert orders[1] == orders[0][::-1]
    for r in record.ratings:
        first, second = r.positions
        assert first + second == 4  # reversed: position p comes back as n + 1 - p


def test_shuffle_is_seeded() -> None:
    ids = [f"c{i}" for i in range(6)]
    cfg = JudgeConfig()
    a = shown_orders(Record(id="x", instruction="i"), ids, cfg, seed=1)
    b = shown_orders(Record(id="x", instruction="i"), ids, cfg, seed=1)
    c = shown_orders(Record(id="x", instruction="i"), ids, cfg, seed=2)
    assert a == b and a != c and sorted(a[0]) == ids


def test_panel_with_exclude_self(qwen_engine, smol_engine) -> None:
    record = Record(
        id="p",
        instruction="Name a fruit.",
        completions=[
            Completion(id="q:0", text="An apple.", model=QWEN),
            Completion(id="s:0", text="A banana is a fruit.", model=SMOL),
            Completion(id="o:0", text="Carrot.", model="other"),
            Completion(id="o:1", text="A pear is a sweet fruit.", model="other"),
        ],
    )
    cfg = JudgeConfig(mode="score-only", exclude_self=True)
    judge([record], QWEN, qwen_engine, cfg)
    judge([record], SMOL, smol_engine, cfg)
    rated = {(r.judge, r.completion_id) for r in record.ratings}
    assert (QWEN, "q:0") not in rated and (SMOL, "s:0") not in rated
    assert {(QWEN, "s:0"), (QWEN, "o:0"), (SMOL, "q:0"), (SMOL, "o:0")} <= rated
    # o:0 against o:1 is the only pair both judges rated (each rating's probability-weighted
    # score): 1 when both order it the same way, a half when both tie, else 0; counted by hand
    value = {(r.judge, r.completion_id): r.expected for r in record.ratings}
    d = [value[(j, "o:0")] - value[(j, "o:1")] for j in (QWEN, SMOL)]
    assert panel_agreement(record) == (1.0 if d[0] * d[1] > 0 else 0.5 if d[0] == d[1] == 0 else 0.0)


def test_panel_agreement_on_known_ratings() -> None:
    record = Record(id="k", instruction="i", ratings=[
        Rating("a", "j1", "overall", 5), Rating("b", "j1", "overall", 3), Rating("c", "j1", "overall", 1),
        Rating("a", "j2", "overall", 4), Rating("b", "j2", "overall", 4), Rating("c", "j2", "overall", 1),
    ])
    # a>b: j1 yes, j2 tie -> 0; a>c agree; b>c agree => 2 of 3
    assert panel_agreement(record) == pytest.approx(2 / 3)


def test_pairwise_mode_is_order_invariant(qwen_engine) -> None:
    record = record_with(3)
    judge([record], QWEN, qwen_engine, JudgeConfig(mode="pairwise"))
    margins = record.judge_info["margins"][QWEN]
    assert set(margins) == {"m:0>m:1", "m:0>m:2", "m:1>m:2"}
    scores = {r.completion_id: r.score for r in record.ratings}
    assert all(1.0 <= s <= 5.0 for s in scores.values())
    assert scores["m:0"] > scores["m:2"]  # Paris beats Lyon
    # the same completions listed in another order ask the same questions, so get the same
    # scores up to the rounding of another batch layout (see edgepref.backends.engine.core, "Determinism")
    shuffled = Record(id="k2", instruction=record.instruction, completions=record.completions[::-1])
    judge([shuffled], QWEN, qwen_engine, JudgeConfig(mode="pairwise"))
    assert {r.completion_id: r.score for r in shuffled.ratings} == pytest.approx(scores, abs=0.02)


QUESTION = "What is the capital of France?"


@pytest.mark.parametrize("recipe", ["headings-ab12", "prefill-ab", "plain-ab"])
def test_two_order_log_odds_are_antisymmetric(qwen_engine, recipe) -> None:
    good, bad = "The capital of France is Paris.", "I think it is Lyon."
    items = [(QUESTION, good, bad), (QUESTION, bad, good)]
    first = compare(items, [PAIRWISE_RECIPES[recipe]], qwen_engine, QWEN)[recipe]
    again = compare(items[::-1], [PAIRWISE_RECIPES[recipe]], qwen_engine, QWEN)[recipe][::-1]  # from the KV cache
    assert all(v.ok for v in first + again)
    assert first[1].margin == -first[0].margin  # swapping x and y negates the margin exactly
    assert [v.margin for v in again] == [v.margin for v in first]
    assert first[0].margin > 0  # Paris beats Lyon
    assert len(first[0].logodds) == len(PAIRWISE_RECIPES[recipe].label_sets)


class ScriptedJudge:
    """A Backend whose answer to each question is fixed log-odds for the first label: +2 when the
    Paris answer is shown first, -1 otherwise, plus 0.5 for a "worse" question (a label prior
    that does not depend on the question's meaning)."""

    def __init__(self):
        self.asked = []

    def chat(self, requests, on_result=None):
        out = []
        for req in requests:
            self.asked.append(req)
            text = req.messages[-1]["content"]
            lo = (2.0 if text.index("Paris") < text.index("Lyon") else -1.0) + (0.5 if "worse" in text else 0.0)
            first, second = req.choices
            out.append(ChatResult(req, [], 10, choice_logprobs={first: lo - 3.0, second: -3.0}))
        return out


def test_margin_arithmetic_and_worse_questions() -> None:
    judge_ = ScriptedJudge()
    items = [(QUESTION, "Paris.", "Lyon."), (QUESTION, "Lyon.", "Paris.")]
    got = compare(items, [PAIRWISE_RECIPES["headings-ab"], PAIRWISE_RECIPES["contrast-ab"]], judge_, "scripted")
    # one question per (order, question): 2 orders x (better, worse), shared by both items and recipes
    assert len(judge_.asked) == 4
    plain, contrast = got["headings-ab"], got["contrast-ab"]
    assert plain[0].margin == pytest.approx((2.0 - -1.0) / 2) and plain[1].margin == -plain[0].margin
    # "worse": read with the sign flipped, so its constant 0.5 cancels between the two orders too
    assert contrast[0].logodds == [(2.0, -1.0), (-2.5, 0.5)]
    assert contrast[0].margin == pytest.approx(((2.0 + 1.0) + (-2.5 - 0.5)) / 4)
    assert contrast[0].prompt_tokens == 40


def test_pointwise_recipes_rate_each_response_alone(qwen_engine) -> None:
    good, bad = "The capital of France is Paris.", "I think it is Lyon."
    recipe = PAIRWISE_RECIPES["rate5"]
    asked = compare_request(recipe, QUESTION, good, bad, ("A", "B")).messages[-1]["content"]
    assert good in asked and bad not in asked and "from 1 to 5" in asked
    items = [(QUESTION, good, bad), (QUESTION, bad, good)]
    got = compare(items, [recipe], qwen_engine, QWEN)["rate5"]
    assert all(v.ok and v.pointwise for v in got)
    (sx, sy), = got[0].logodds
    assert 1.0 <= sy < sx <= 5.0  # scores on the scale, Paris rated above Lyon
    assert got[0].margin == pytest.approx((sx - sy) / 2)
    assert got[1].margin == -got[0].margin  # the same two ratings, read the other way round


def test_a_rating_is_the_probability_weighted_score() -> None:
    class Rater:
        def chat(self, requests, on_result=None):
            # P(3) = 2/3, P(5) = 1/3 for a Paris answer; P(1) = 1 for a Lyon answer; the
            # probabilities are not normalised over the scale (the rest went to other tokens)
            out = []
            for req in requests:
                paris = "Paris" in req.messages[-1]["content"]
                lp = {s: -50.0 for s in req.choices}
                lp.update({"3": math.log(0.2), "5": math.log(0.1)} if paris else {"1": math.log(0.3)})
                out.append(ChatResult(req, [], 10, choice_logprobs=lp))
            return out

    (v,) = compare([(QUESTION, "Paris.", "Lyon.")], [PAIRWISE_RECIPES["rate5"]], Rater(), "scripted")["rate5"]
    assert v.logodds == [(pytest.approx(3 * 2 / 3 + 5 / 3), pytest.approx(1.0))]
    assert v.margin == pytest.approx((11 / 3 - 1.0) / 2)


def test_choice_log_probabilities_sum_the_spellings(qwen_engine) -> None:
    req = compare_request(PAIRWISE_RECIPES["headings-ab"], QUESTION, "Paris.", "Lyon.", ("A", "B"))
    res = qwen_engine.chat([req])[0]
    lp, probs = res.choice_logprobs, res.choice_probs
    assert set(lp) == {"A", "B"} and all(v < 0 for v in lp.values())
    # renormalised probabilities carry the same log-odds as the raw log probabilities
    assert math.log(probs["A"] / probs["B"]) == pytest.approx(lp["A"] - lp["B"], abs=1e-9)
    # a label also owns its spelling with a leading space, so it is more likely than that alone
    spaced = qwen_engine.chat([ChatRequest(req.messages, Sampling(max_tokens=0), choices=(" A", " B"))])[0]
    assert spaced.ok and lp["A"] > spaced.choice_logprobs[" A"] and lp["B"] > spaced.choice_logprobs[" B"]
    # so a candidate list that names both spellings is ambiguous, and says so
    clash = qwen_engine.chat([ChatRequest(req.messages, Sampling(max_tokens=0), choices=("A", "B", " A"))])[0]
    assert not clash.ok and "start with the same token" in clash.error


def test_verify_records_each_judges_margin(qwen_engine, smol_engine) -> None:
    records = [record_with(2, "k"), record_with(3, "k2")]
    items = [(records[0], "m:0", "m:1"), (records[1], "m:0", "m:2")]
    got = verify(items, SMOL, smol_engine, JudgeConfig())
    for r, margin in zip(records, got):
        (v,) = r.judge_info["verdicts"]
        assert v["margins"] == {SMOL: margin} and v["decided_by"] == []  # deciding is the chain's job
    # a second judge adds its margin beside the first
    got = verify(items[1:], QWEN, qwen_engine, JudgeConfig())
    (v,) = records[1].judge_info["verdicts"]
    assert set(v["margins"]) == {SMOL, QWEN} and got[0] == v["margins"][QWEN] > 0  # Paris over Lyon
    # asked again (a resumed stage), nothing is recomputed
    assert verify(items[1:], QWEN, None, JudgeConfig()) == got
    # another pair of the same record is a verdict of its own
    verify([(records[1], "m:1", "m:2")], SMOL, smol_engine, JudgeConfig())
    assert [(v["x"], v["y"]) for v in records[1].judge_info["verdicts"]] == [("m:0", "m:2"), ("m:1", "m:2")]


def test_bradley_terry_orders_by_wins() -> None:
    wins = {("a", "b"): 0.9, ("b", "a"): 0.1, ("b", "c"): 0.8, ("c", "b"): 0.2, ("a", "c"): 0.95, ("c", "a"): 0.05}
    s = bradley_terry(["a", "b", "c"], wins)
    assert s["a"] > s["b"] > s["c"]


@pytest.mark.parametrize("raw,clean", [
    ("# Improved Response\nParis is the capital.", "Paris is the capital."),
    ("Improved Response: Paris is the capital.", "Paris is the capital."),
    ("**Rewritten Answer:**\nParis is the capital.", "Paris is the capital."),
    ("Here is the improved response:\n\nParis is the capital.", "Paris is the capital."),
    ("## Better Version\n# Improved Response\nParis.", "Paris."),
    ("Paris is the capital. Response: yes.", "Paris is the capital. Response: yes."),
    ("# Paris facts\nParis is the capital.", "# Paris facts\nParis is the capital."),
    # lead-in sentences seen above real rewrites
    ("Here's a new response that includes more information about the specified countries:\n\n"
     "1. France: Paris.", "1. France: Paris."),
    ("Sure! Here is a revised answer with more detail:\nParis is the capital.", "Paris is the capital."),
    ("Certainly, here's an improved version of the response, focusing on relevance: Paris.", "Paris."),
    ("Below is the rewritten response:\n\nParis.", "Paris."),
    # not a lead-in: a sentence of the answer that mentions a response, or no colon
    ("Here is the answer you asked for, in short. Paris.", "Here is the answer you asked for, in short. Paris."),
    ("Here are the steps:\n1. Boil water.", "Here are the steps:\n1. Boil water."),
    # lead-ins of rewrites as follow-up turns, collected from real runs on the dev instructions
    # (scripts/collect_rewrite_openings.py); the answers after them are ours
    ("Sure, I'd be happy to help you improve your answer. Here's a version that is more helpful and includes "
     "all the information you need:\n\n**Improved Answer:**\n\n1. Water it weekly.", "1. Water it weekly."),
    ("Certainly! Here's an improved version of your answer:\n\n---\n\n**Ingredients:**\n- 2 cloves garlic",
     "**Ingredients:**\n- 2 cloves garlic"),
    ("Certainly! Here's a revised version of your answer:\n\n---\n\n**Improved Version of Your Answer:**\n\n"
     "Detecting a drone takes a radio scanner.", "Detecting a drone takes a radio scanner."),
    ("**Improved Version: Building a Waitlist**\n\nStart with a landing page.", "Start with a landing page."),
    ("Thank you for the detailed explanation. Here is the improved version of your answer:\nCan we meet today?",
     "Can we meet today?"),
    ("Sure! Here\u2019s an improved version of your answer:\n\nWater it weekly.", "Water it weekly."),
    ("Here is the revised version of your answer:\n\n**Soup**: a classic dish.", "**Soup**: a classic dish."),
    ("The new answer is:\nUpload a video of the whole body.", "Upload a video of the whole body."),
    ("Phones spread in the 2000s. They got cheaper.\nThis revised version uses dates to be more precise.",
     "Phones spread in the 2000s. They got cheaper."),
    # a pleasantry before the answer itself stays
    ("Sure! Paris is the capital.", "Sure! Paris is the capital."),
])
def test_leaked_headings_are_stripped(raw: str, clean: str) -> None:
    assert strip_leaked_headings(raw) == clean


def test_a_rewrite_that_is_mostly_talk_is_dropped() -> None:
    # seen in a real run: the whole rewrite was one sentence about "the new answer"
    assert drop_reason('The new answer is "The Movie Title".', "The film is Up.")[0] == "talk"
    talk = "I have improved your answer by adding details. This revised version is clearer. Paris."
    assert strip_leaked_headings(talk) == "Paris."  # leading talk sentences go, the answer stays
    assert drop_reason("This revised version of your answer adds two details and improves the answer's tone.",
                       "Paris.")[0] == "talk"
    assert drop_reason("Paris is the capital of France, on the Seine.", "Paris.")[0] is None


def test_evolve_records_criterion_and_parent(qwen_engine) -> None:
    record = record_with(2)
    cfg = EvolveConfig(num_evolutions=2, max_tokens=40, pick="all")
    evolve([record], QWEN, qwen_engine, cfg, seed=5)
    evolved = [c for c in record.completions if c.source == "evol"]
    kept_or_dropped = len(evolved) + len(record.dropped)
    assert kept_or_dropped >= 2  # the first step ran for both completions
    for c in evolved:
        root, step = c.id.split("+evol")
        expected_parent = root if step == "1" else f"{root}+evol{int(step) - 1}"
        assert c.parent_id == expected_parent
        # the seeded draw for (seed 5, record r, parent, step), pinned: a change of the draw shows here
        assert c.criterion == {"m:0+evol1": "details", "m:0+evol2": "deepening", "m:1+evol1": "helpfulness",
                               "m:1+evol2": "helpfulness"}[c.id]
        assert c.model == QWEN and c.text.strip()


def test_rewrites_that_add_nothing_are_dropped() -> None:
    parent = "Paris is the capital of France. It lies on the Seine and has about two million people."
    assert drop_reason("", parent, 0.9) == ("empty", 0.0)
    assert drop_reason("  PARIS is the capital of France.   It lies on the Seine and has about two million people.",
                       parent, 0.9) == ("identical", 1.0)
    near = parent.replace("about two million", "roughly two million")
    reason, score = drop_reason(near, parent, 0.9)
    assert reason == "near_copy" and 0.9 < score < 1.0
    assert drop_reason(near, parent, 1.0) == (None, score)  # the threshold off: only identical text
    other = "The capital of France is Paris, a city of museums, cafes and about two million residents."
    assert drop_reason(other, parent, 0.9)[0] is None


def test_which_completions_are_rewritten() -> None:
    record = Record(id="r", instruction="Say hi.", completions=[
        Completion("a:0", "Hi.", "small"), Completion("b:0", "Hello.", QWEN), Completion("b:1", "Hey.", QWEN),
        Completion("b:0+evol1", "Hello there.", QWEN, source="evol", parent_id="b:0"),
    ])
    ids = lambda cfg, model=QWEN: [c.id for c in parents(record, model, cfg)]  # noqa: E731
    own = EvolveConfig(pick="own")
    assert ids(own) == ["b:0"]  # own: the rewriting model's first answer
    assert ids(own, model="other") == ["a:0"]  # it wrote none: the first pool answer
    assert ids(EvolveConfig()) == ids(EvolveConfig(pick="all")) == ["a:0", "b:0", "b:1"]  # the default
    assert ids(EvolveConfig(members=["a"])) == ["a:0"]
    assert ids(EvolveConfig(pick="all", members=["b"])) == ["b:0", "b:1"]


def test_a_rewrite_continues_the_conversation_it_rewrites() -> None:
    record = Record(id="r", instruction="Say hi.", completions=[Completion("b:0", "Hello.", QWEN, member="b")])
    cfg = EvolveConfig()
    then = continuation(record, "b", QWEN, 0, cfg, seed=3)
    req = then("  Hello.\n")
    # the very request the stage sends for this completion (the seeded draw for seed 3, record r,
    # b:0, step 1 is "creativity"), so it finds the answer in its cache
    assert req == rewrite_request(record, record.completions[0], "creativity", cfg, 3)
    assert [m["role"] for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[:2] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hello."}]
    assert req.messages[2]["content"].startswith("Write an improved version of your answer. Make it")


def test_the_rewrites_asked_in_place_are_the_ones_the_stage_picks() -> None:
    a, b = PoolMember("small", label="a"), PoolMember(QWEN, label="b", n=2)
    pool = [a, b]
    own = EvolveConfig(pick="own")
    assert planned_parents(pool, QWEN, own) == {"b:0"}  # own: the rewriting model's first
    assert planned_parents(pool, "other", own) == {"a:0"}
    assert planned_parents(pool, QWEN, EvolveConfig()) == {"a:0", "b:0", "b:1"}  # all, the default
    assert planned_parents(pool, QWEN, EvolveConfig(num_evolutions=0)) == set()
    # [evolve] members applies in place too: with only "a" picked, b's answers are not rewritten
    assert in_place(b, pool, QWEN, EvolveConfig(members=["a"]), 3) is None
    # a second member on the rewriting model, picked by `members`, is the one rewritten in place
    c = PoolMember(QWEN, label="c")
    assert in_place(c, [b, c], QWEN, EvolveConfig(members=["c"]), 3) is not None
    assert in_place(b, [b, c], QWEN, EvolveConfig(members=["c"]), 3) is None
    # not for another model, a second sample under "own", or with in_place off
    assert in_place(a, pool, QWEN, EvolveConfig(pick="all"), 3) is None
    record = Record(id="r", instruction="Say hi.")
    then = in_place(b, pool, QWEN, own, 3)
    assert then(record, 0) is not None and then(record, 1) is None
    assert in_place(b, pool, QWEN, EvolveConfig(pick="all"), 3)(record, 1) is not None
    assert in_place(b, pool, QWEN, EvolveConfig(in_place=False), 3) is None


def test_criterion_draw_is_seeded_and_covers_all() -> None:
    cfg = EvolveConfig()
    draws = {pick_criterion(cfg, 0, f"r{i}", "c", 1) for i in range(60)}
    assert draws == set(cfg.criteria)
    # pinned draws: the same seed and ids give the same criterion in every process; the seed moves it
    assert pick_criterion(cfg, 0, "r1", "c", 1) == "helpfulness" and pick_criterion(cfg, 1, "r1", "c", 1) == "deepening"
    assert pick_criterion(cfg, 3, "r", "b:0", 1) == "creativity"


def test_two_orders_of_a_pair_share_the_instructions_prefix(qwen_engine) -> None:
    instruction = "Summarise the following notes in one sentence. " + " ".join(
        f"Note {i}: the meeting moved to room {i}." for i in range(60))
    seen = []
    compare([(instruction, "Meetings moved rooms.", "Room numbers changed often, up to room 59.")],
            [PAIRWISE_RECIPES["headings-ab12"]], qwen_engine, QWEN, on_result=lambda progress, res: seen.append(res))
    assert len(seen) == 4 and all(r.ok for r in seen)
    shared = qwen_engine.count_tokens([{"role": "system", "content": PAIRWISE_RECIPES["headings-ab12"].system},
                                       {"role": "user", "content": "# Instruction\n" + instruction}])
    # verdicts are reads, decoded one after another in whole read blocks: every question after the
    # first reuses the whole blocks of system prompt + instruction it shares with the one before
    block = qwen_engine.read_block
    assert shared >= block
    reused = sorted(r.cached_prompt_tokens for r in seen)
    assert reused[0] == 0 and all(n >= shared // block * block for n in reused[1:])


@pytest.mark.parametrize("name", ["headings-ab", "repeat-ab", "plain-ab", "headings-ab-w60", "rate5"])
def test_a_verdicts_reads_mark_where_each_response_starts(name: str) -> None:
    """The marks (ChatRequest.marks) let the engine decode the text a verdict's prompts share
    once: they must fall exactly where each response shown starts."""
    good, bad = "The capital of France is Paris.\n\nIt is on the Seine.", "I think it is Lyon."
    recipe = PAIRWISE_RECIPES[name]
    req = compare_request(recipe, QUESTION, good, bad, ("A", "B"))
    content = req.messages[-1]["content"]
    if recipe.pointwise:
        assert req.marks == (content.index(good),)
    else:
        first, second = req.marks
        assert content[first:].startswith(good) and content[second:].startswith(bad)
        assert content[:first].rstrip().endswith("A:" if name == "plain-ab" else "A")
        assert content[first + len(good):second].rstrip().endswith("B:" if name == "plain-ab" else "B")
    # an instruction that holds the stand-in characters: the marks are still right, or absent
    odd = compare_request(recipe, "Explain \ue010 and \ue011.", good, bad, ("A", "B"))
    text = odd.messages[-1]["content"]
    assert all(text[m:].startswith((good, bad)) for m in odd.marks)


def test_marks_are_part_of_a_reads_identity() -> None:
    from edgepref.backends.cache import request_key

    req = compare_request(PAIRWISE_RECIPES["headings-ab"], QUESTION, "Paris.", "Lyon.", ("A", "B"))
    plain = ChatRequest(req.messages, req.sampling, choices=req.choices)
    assert request_key("verify", "m", req) != request_key("verify", "m", plain)
    # a request without marks keeps the key it had before marks existed, and both keys are pinned:
    # a change of the hashing would make every user's request cache miss
    assert request_key("verify", "m", plain) == "af9497999f51625f"
    assert request_key("verify", "m", req) == "fce24ae57ba62a9a"
