"""Judge evaluation: metrics on a hand-built set with known answers, then the real judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli
from edgepref.runs.evaljudge import (
    RATING_RECIPES, Judged, JudgePair, default_recipe, pair_record, precision_at_coverage, read_judge_pairs,
    run_eval, score_judged, score_recipe)
from edgepref.core.records import Rating

from .conftest import QWEN, SMOL


def rated(pair: JudgePair, a: list[float], b: list[float]):
    rec = pair_record(pair)
    rec.ratings = [
        Rating("a", "j", "overall", sum(a) / 2, positions=[1, 2], pass_scores=a, pass_expected=a),
        Rating("b", "j", "overall", sum(b) / 2, positions=[2, 1], pass_scores=b, pass_expected=b),
    ]
    return rec


def known_set():
    pairs = [
        JudgePair("1", "i1", "a long answer here", "short", "a"),  # a wins in both orders
        JudgePair("2", "i2", "x", "y", "b"),  # a tie in both orders
        JudgePair("3", "i3", "xx", "y", "a"),  # whoever is shown first wins: a swap flips it
        JudgePair("4", "i4", "a", "bbbbbbb", "b"),  # swapped label: b wins in both orders
    ]
    records = [
        rated(pairs[0], [5, 4], [3, 2]),
        rated(pairs[1], [4, 4], [4, 4]),
        rated(pairs[2], [5, 2], [3, 4]),
        rated(pairs[3], [2, 2], [4, 4]),
    ]
    return pairs, records


def test_metrics_on_known_answers() -> None:
    pairs, records = known_set()
    rep = score_recipe("rationale-int-both", pairs, records, ["j"], seconds=8.0)
    assert rep.n == 4 and rep.parse_rate == 1.0
    assert rep.agreement == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)  # ties count one half
    assert rep.tie_rate == pytest.approx(0.5)
    assert rep.swap_consistency == pytest.approx(0.75)
    # one-order verdicts that were decided: 6, of which 4 went to the response shown first
    assert rep.position_bias == pytest.approx(4 / 6)
    assert rep.length_bias == pytest.approx(1.0)  # both decided pairs went to the longer one
    assert rep.one_order_agreement == pytest.approx((1 + 1 + 0.5 + 0.5 + 1 + 0 + 1 + 1) / 8)
    assert rep.seconds_per_pair == pytest.approx(2.0)


def test_unparsed_pairs_lower_the_parse_rate() -> None:
    pairs, records = known_set()
    records[1].ratings = []
    rep = score_recipe("rationale-int-both", pairs, records, ["j"], seconds=1.0)
    assert rep.n == 3 and rep.parse_rate == pytest.approx(0.75)


def test_default_recipe_is_the_pipelines() -> None:
    from edgepref.stages.config import PipelineConfig

    cfg = PipelineConfig()
    assert default_recipe(cfg) == cfg.judge.recipe  # the pairwise check decides chosen/rejected
    cfg.pair.decide, cfg.judge.mode = "ratings", "rationale"
    assert RATING_RECIPES[default_recipe(cfg)] == (cfg.judge.mode, cfg.pair.score, cfg.judge.both_orders)


def test_precision_at_coverage_on_known_answers() -> None:
    # confidence order: 4.0 (hit), -3.0 (hit), 2.0 (miss), 1.0 (hit), -0.5 (miss)
    margins = [1.0, -3.0, 2.0, 4.0, -0.5]
    hits = [1.0, 1.0, 0.0, 1.0, 0.0]
    precision, threshold = precision_at_coverage(margins, hits)
    assert precision == {"100%": pytest.approx(0.6), "80%": pytest.approx(0.75), "50%": pytest.approx(2 / 3)}
    assert threshold == {"100%": 0.5, "80%": 1.0, "50%": 2.0}


def test_pairwise_views_score_like_ratings() -> None:
    pairs = [JudgePair(str(i), "i", "a" * (i + 1), "b", label) for i, label in enumerate("abab")]
    # (margin, one-order leads for a: a shown first, then b shown first)
    judged = [
        Judged(0.8, [(1.0, True), (0.6, False)]),  # a wins both orders: hit
        Judged(0.1, [(0.9, True), (-0.7, False)]),  # the shown-first one wins each order; a by a hair: miss
        Judged(-0.4, [(-0.2, True), (-0.6, False)]),  # b wins both orders: miss
        None,  # the judge gave no answer
    ]
    rep = score_judged("x", pairs, judged, ["j"], seconds=4.0)
    assert rep.n == 3 and rep.parse_rate == pytest.approx(0.75)
    assert rep.agreement == pytest.approx(1 / 3) and rep.swap_consistency == pytest.approx(2 / 3)
    assert rep.position_bias == pytest.approx(4 / 6)  # a-first wins 1, 1, 0; b-first wins 0, 1, 1
    assert rep.precision_at_coverage["50%"] == pytest.approx(0.5)  # the two most confident: hit, miss


def test_bad_pairs_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"instruction": "i", "response_a": "x", "response_b": "y", "label": "c"}) + "\n")
    res = CliRunner().invoke(cli, ["eval-judge", str(bad)])
    assert res.exit_code == 1 and "label must be 'a' or 'b'" in res.output


PAIRS = [
    {"id": 1, "instruction": "What is the capital of France?", "response_a": "Paris.", "response_b": "Berlin.", "label": "a", "weak_model": "w1"},
    {"id": 2, "instruction": "What is 2 + 2?", "response_a": "5", "response_b": "2 + 2 = 4.", "label": "b", "weak_model": "w2"},
    {"id": 3, "instruction": "Name a mammal.", "response_a": "A dolphin is a mammal.", "response_b": "A shark.", "label": "a", "weak_model": "w1"},
]


def test_real_judge_eval_and_resume(tmp_path, qwen_engine, smol_engine) -> None:
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "eval.json"
    backends = {QWEN: qwen_engine, SMOL: smol_engine}
    first = run_eval(str(src), judges=[QWEN], recipe="score-only-expected-both", json_out=out, backends=backends,
                     self_preference_n=0)
    assert first.n == 3 and first.parse_rate == 1.0
    assert set(first.by_weak_model) == {"w1", "w2"}
    saved = json.loads(out.read_text())
    assert {"agreement", "agreement_ci95", "tie_rate", "parse_rate", "swap_consistency", "position_bias",
            "length_bias", "seconds_per_pair", "n"} <= set(saved)
    cache = Path(str(out) + ".cache")  # the requests, cached beside the JSON
    cached = {f.name: f.read_bytes() for f in cache.glob("*.jsonl")}
    assert cached and all(cached.values())
    served = qwen_engine.stats.requests
    again = run_eval(str(src), judges=[QWEN], recipe="score-only-expected-both", json_out=out, backends=backends,
                     self_preference_n=0)
    # resumed: every rating came from the cache, the judge was asked nothing, the cache is unchanged
    assert qwen_engine.stats.requests == served
    assert {f.name: f.read_bytes() for f in cache.glob("*.jsonl")} == cached
    assert again.agreement == first.agreement and again.swap_consistency == first.swap_consistency
    assert len(read_judge_pairs(str(src), limit=2)) == 2


def test_default_eval_reports_coverage_and_self_preference(tmp_path) -> None:
    """The plain command on the embedded judge: the default recipe, and the keys the issue names."""
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(cli, ["eval-judge", str(src), "--json", str(out), "--self-preference", "2", "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads(out.read_text())
    assert saved["recipe"] == "headings-ab" and saved["n"] == 3 and saved["parse_rate"] == 1.0
    assert set(saved["precision_at_coverage"]) == {"100%", "80%", "50%"}
    assert saved["self_preference"]["n"] == 2 and 0.0 <= saved["self_preference"]["share"] <= 1.0
    assert saved["prompt_tokens_per_pair"] > 0
    assert "self-preference" in res.output and "top 50%" in res.output
    # the judge's own answers were generated once: a rerun answers everything from the cache
    again = CliRunner().invoke(cli, ["eval-judge", str(src), "--json", str(out), "--self-preference", "2", "-q"])
    assert again.exit_code == 0 and json.loads(out.read_text())["self_preference"] == saved["self_preference"]
