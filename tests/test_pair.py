"""Stage 4 on hand-built records: which pair is picked, and why a record is dropped."""

from __future__ import annotations

import pytest

from edgepref.core.errors import ConfigError
from edgepref.stages.config import PairConfig
from edgepref.stages.pair import pair_records, pick_pair, rank_completions
from edgepref.core.records import Completion, Rating, Record


def Ratings(*args, **kwargs) -> PairConfig:
    """Chosen and rejected decided by the UltraFeedback scores alone."""
    return PairConfig(*args, decide="ratings", **kwargs)


def make_record(
    rated: list[tuple[str, float | list[float] | None, float | None]],
    record_id: str = "r1",
    instruction: str = "Explain DPO in one sentence.",
) -> Record:
    """rated: (text, score or one score per judge, expected) per completion.
    A score of None leaves that completion unrated."""
    completions, ratings = [], []
    for k, (text, scores, expected) in enumerate(rated):
        cid = f"m{k}:0"
        completions.append(Completion(id=cid, text=text, model=f"model-{k}"))
        if scores is None:
            continue
        for j, score in enumerate(scores if isinstance(scores, list) else [scores]):
            ratings.append(
                Rating(cid, judge=f"judge-{j}", aspect="overall", score=score,
                       expected=expected, rationale=f"why {k}.{j}")
            )
    return Record(id=record_id, instruction=instruction, completions=completions, ratings=ratings)


def test_best_worst_picks_extremes() -> None:
    record = make_record(
        [("middle", 3, None), ("top", 5, None), ("bottom", 1, None), ("ok", 4, None)]
    )
    pair, reason = pick_pair(record, Ratings())
    assert reason is None and pair is not None
    assert (pair.chosen, pair.rejected) == ("top", "bottom")
    assert (pair.score_chosen, pair.score_rejected, pair.margin) == (5, 1, 4)
    assert (pair.model_chosen, pair.model_rejected) == ("model-1", "model-2")
    assert (pair.completion_chosen, pair.completion_rejected) == ("m1:0", "m2:0")
    assert pair.prompt == record.instruction and pair.id == record.id


def test_scores_are_means_over_judges_and_rationales_joined() -> None:
    record = make_record([("a", [5, 3], None), ("b", [2, 2], None), ("c", [4, 5], None)])
    pair, _ = pick_pair(record, Ratings())
    assert (pair.chosen, pair.rejected) == ("c", "b")
    assert pair.score_chosen == 4.5 and pair.margin == 2.5
    assert pair.rationale_chosen == "why 2.0 | why 2.1"
    assert pair.rationale_rejected == "why 1.0 | why 1.1"


@pytest.mark.parametrize("min_margin", [0.0, 1.0])
def test_equal_ratings_are_dropped_as_tie_never_chosen_equals_rejected(min_margin: float) -> None:
    # distilabel's max/min would emit this record with chosen == rejected
    record = make_record([("first", 4, None), ("second", 4, None), ("third", 4, None)])
    pair, reason = pick_pair(record, Ratings(min_margin=min_margin))
    assert pair is None and reason == "tie"


def test_small_margin_dropped() -> None:
    record = make_record([("a", 4, None), ("b", 3.5, None)])
    assert pick_pair(record, Ratings(min_margin=1.0)) == (None, "small_margin")
    pair, reason = pick_pair(record, Ratings(min_margin=0.5))
    assert reason is None and pair.margin == 0.5


def test_margin_of_exactly_min_margin_is_kept_despite_float_error() -> None:
    # in floats 4.1 - 3.1 is 0.9999999999999996; it must still count as a margin of 1
    assert 4.1 - 3.1 < 1.0
    record = make_record([("a", 4.1, None), ("b", 3.1, None)])
    pair, reason = pick_pair(record, Ratings(min_margin=1.0, score="score"))
    assert reason is None and pair.margin == pytest.approx(1.0)


def test_expected_score_breaks_ties_on_score() -> None:
    record = make_record([("low-expected", 4, 3.6), ("high-expected", 4, 4.4), ("worst", 2, 2.1)])
    ranked = [r.completion.text for r in rank_completions(record, "score")]
    assert ranked == ["high-expected", "low-expected", "worst"]
    # with min_margin 0 the tie-break alone decides a two-way tie on score
    two = make_record([("low-expected", 4, 3.6), ("high-expected", 4, 4.4)])
    pair, reason = pick_pair(two, Ratings(min_margin=0.0, score="score"))
    assert reason is None
    assert (pair.chosen, pair.rejected, pair.margin) == ("high-expected", "low-expected", 0.0)
    assert pick_pair(two, Ratings(min_margin=0.5, score="score")) == (None, "small_margin")


def test_expected_as_primary_with_score_fallback_and_tie_break() -> None:
    record = make_record([("a", 5, 3.0), ("b", 2, None), ("c", 4, 4.8)])
    pair, _ = pick_pair(record, Ratings(score="expected", min_margin=1.0))
    # b has no expected score, so its score 2 stands in
    assert (pair.chosen, pair.rejected) == ("c", "b")
    assert (pair.score_chosen, pair.score_rejected) == (4.8, 2.0)
    tied = make_record([("a", 5, 4.0), ("b", 3, 4.0)])
    pair, reason = pick_pair(tied, Ratings(score="expected", min_margin=0.0))
    assert reason is None and (pair.chosen, pair.rejected) == ("a", "b")


def test_identical_text_never_emitted_next_candidate_tried() -> None:
    record = make_record(
        [("Same answer.", 5, None), ("  Same\nanswer. ", 1, None), ("other", 2, None)]
    )
    pair, reason = pick_pair(record, Ratings())
    assert reason is None and (pair.chosen, pair.rejected) == ("Same answer.", "other")
    only_copies = make_record([("x y", 5, None), ("x  y", 1, None), ("x\ty\n", 2, None)])
    assert pick_pair(only_copies, Ratings()) == (None, "identical_text")
    copies_and_close = make_record([("x", 5, None), ("x", 1, None), ("z", 4.5, None)])
    assert pick_pair(copies_and_close, Ratings()) == (None, "small_margin")


def test_fewer_than_two_rated_and_unrated_counted() -> None:
    one = make_record([("a", 5, None), ("b", None, None)], record_id="one")
    none = make_record([("a", None, None)], record_id="none")
    good = make_record([("a", 5, None), ("b", 1, None), ("c", None, None)], record_id="good")
    assert pick_pair(one, Ratings()) == (None, "fewer_than_two_rated")
    report = pair_records([one, none, good], Ratings())
    assert [p.id for p in report.pairs] == ["good"]
    assert report.dropped == {"fewer_than_two_rated": 2}
    assert report.unrated_completions == 3
    assert report.margins == [4]


def test_ratings_for_unknown_completion_ids_are_ignored() -> None:
    record = make_record([("a", 5, None), ("b", 1, None)])
    record.ratings.append(Rating("ghost", judge="j", aspect="overall", score=1))
    pair, _ = pick_pair(record, Ratings())
    assert pair.completion_rejected == "m1:0"


def test_pair_records_counts_every_reason() -> None:
    records = [
        make_record([("a", 5, None), ("b", 1, None)], record_id="kept"),
        make_record([("a", 3, None), ("b", 3, None)], record_id="tie"),
        make_record([("a", 3, None), ("b", 2.5, None)], record_id="small"),
        make_record([("a", 5, None), ("a", 1, None)], record_id="same"),
        make_record([("a", 5, None)], record_id="single"),
    ]
    report = pair_records(records, Ratings())
    assert [p.id for p in report.pairs] == ["kept"]
    assert report.dropped == {
        "tie": 1, "small_margin": 1, "identical_text": 1, "fewer_than_two_rated": 1
    }


def spread_record(record_id: str) -> Record:
    scores = [5, 4.5, 3.5, 3, 2, 1, 1]
    return make_record([(f"text {s} {k}", s, None) for k, s in enumerate(scores)], record_id)


def test_best_random_is_deterministic_and_respects_margin() -> None:
    cfg = Ratings(strategy="best-random", min_margin=1.5, seed=7)
    seen = set()
    for i in range(60):
        record = spread_record(f"rec-{i}")
        first, _ = pick_pair(record, cfg)
        again, _ = pick_pair(spread_record(f"rec-{i}"), cfg)
        assert first == again
        assert first.chosen == "text 5 0"
        assert first.margin >= 1.5 and first.score_rejected <= 3.5
        seen.add(first.rejected)
    # it really is random: every eligible completion is picked for some record
    assert seen == {"text 3.5 2", "text 3 3", "text 2 4", "text 1 5", "text 1 6"}


def test_best_random_depends_on_seed_not_on_order() -> None:
    records = [spread_record(f"rec-{i}") for i in range(40)]
    def rejected(recs: list[Record], seed: int) -> list[str]:
        return [p.rejected for p in pair_records(recs, Ratings("best-random", seed=seed)).pairs]

    by_seed = {seed: rejected(records, seed) for seed in (0, 1)}
    assert by_seed[0] != by_seed[1]
    assert rejected(records[::-1], 0)[::-1] == by_seed[0]


def test_best_random_drops_like_best_worst_when_nothing_is_far_enough() -> None:
    record = make_record([("a", 5, None), ("b", 4.5, None), ("c", 4.5, None)])
    assert pick_pair(record, Ratings("best-random")) == (None, "small_margin")


def test_conversational_format() -> None:
    record = make_record([("good", 5, None), ("bad", 1, None)])
    pair, _ = pick_pair(record, Ratings(format="conversational"))
    assert pair.prompt == [{"role": "user", "content": record.instruction}]
    assert pair.chosen == [{"role": "assistant", "content": "good"}]
    assert pair.rejected == [{"role": "assistant", "content": "bad"}]
    cfg = Ratings(format="conversational", system_prompt="Be brief.")
    with_system, _ = pick_pair(record, cfg)
    assert with_system.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": record.instruction},
    ]
    standard, _ = pick_pair(record, Ratings(system_prompt="ignored in standard"))
    assert standard.prompt == record.instruction


def test_bad_config_raises() -> None:
    with pytest.raises(ConfigError, match="best-worst"):
        Ratings(strategy="worst-best")
    with pytest.raises(ConfigError):
        Ratings(score="median")
    with pytest.raises(ConfigError):
        Ratings(format="chatml")
    with pytest.raises(ConfigError):
        Ratings(min_margin=-1)


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_rows_load_into_datasets(fmt: str) -> None:
    datasets = pytest.importorskip("datasets")
    records = [
        make_record([(f"good {i}", 5, 4.6), (f"bad {i}", 2, 2.2)], record_id=f"r{i}")
        for i in range(3)
    ]
    report = pair_records(records, Ratings(format=fmt))
    ds = datasets.Dataset.from_list([p.to_row() for p in report.pairs])
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert len(ds) == 3
    if fmt == "standard":
        assert ds[0]["prompt"] == records[0].instruction
        assert ds[0]["chosen"] == "good 0" and ds[0]["rejected"] == "bad 0"
    else:
        assert ds[0]["chosen"] == [{"role": "assistant", "content": "good 0"}]
        assert ds[0]["prompt"][0]["role"] == "user"


# ---------------------------------------------------------------- decided by the pairwise verdict


def with_verdict(record: Record, x: str, y: str, margin: float | None, by=("judge-0",)) -> Record:
    record.judge_info["verdict"] = {"x": x, "y": y, "margins": {}, "margin": margin, "decided_by": list(by)}
    return record


def test_pairwise_verdict_decides_and_can_swap_the_ratings() -> None:
    # the ratings shortlist m0 (5) and m1 (1); the verdict says m1 is better by a clear margin
    record = with_verdict(make_record([("rated high", 5, None), ("rated low", 1, None)]), "m0:0", "m1:0", -1.2)
    pair, reason = pick_pair(record, PairConfig())
    assert reason is None and (pair.chosen, pair.rejected) == ("rated low", "rated high")
    assert pair.confidence == pytest.approx(1.2) and pair.decided_by == "judge-0"
    # the same verdict stated as m1 over m0 gives the same pair
    same = with_verdict(make_record([("rated high", 5, None), ("rated low", 1, None)]), "m1:0", "m0:0", 1.2)
    assert pick_pair(same, PairConfig())[0].chosen == "rated low"


def test_uncertain_and_missing_verdicts_are_drop_reasons() -> None:
    records = [
        with_verdict(make_record([("a", 4, None), ("b", 4, None)], "tied"), "m0:0", "m1:0", 0.9),  # a tie is fine
        with_verdict(make_record([("a", 5, None), ("b", 1, None)], "unsure"), "m0:0", "m1:0", -0.2),
        make_record([("a", 5, None), ("b", 1, None)], "unchecked"),
        with_verdict(make_record([("a", 5, None), ("b", 1, None)], "failed"), "m0:0", "m1:0", None),
    ]
    report = pair_records(records, PairConfig(min_confidence=0.5))
    assert [p.id for p in report.pairs] == ["tied"] and report.confidences == [pytest.approx(0.9)]
    assert report.dropped == {"uncertain": 1, "no_verdict": 2}
    # a lower threshold keeps the unsure one, decided the other way round from the ratings
    pair, _ = pick_pair(records[1], PairConfig(min_confidence=0.1))
    assert (pair.chosen, pair.rejected) == ("b", "a")
    with pytest.raises(ConfigError, match="min_confidence"):
        PairConfig(min_confidence=-0.1)
    with pytest.raises(ConfigError, match="decide"):
        PairConfig(decide="vibes")


def test_calibrated_mode_writes_what_a_judge_of_the_chain_decided() -> None:
    decided = with_verdict(make_record([("a", 5, None), ("b", 1, None)], "sure"), "m0:0", "m1:0", 0.3, by=("big",))
    decided.judge_info["verdict"]["agreement"] = 0.81
    undecided = with_verdict(make_record([("a", 5, None), ("b", 1, None)], "unsure"), "m0:0", "m1:0", 0.9, by=())
    report = pair_records([decided, undecided], PairConfig())
    assert [p.id for p in report.pairs] == ["sure"] and report.dropped == {"uncertain": 1}
    assert report.pairs[0].agreement == 0.81 and report.pairs[0].decided_by == "big"
    # a fixed threshold instead decides on the margin alone, and promises no agreement
    undecided.judge_info["verdict"]["asked"] = ["big"]
    fixed = pair_records([decided, undecided], PairConfig(min_confidence=0.5))
    assert [p.id for p in fixed.pairs] == ["unsure"] and fixed.pairs[0].agreement is None
    assert fixed.pairs[0].decided_by == "big"


# ---------------------------------------------------------------- candidate pairs

from edgepref.stages.pair import candidate_pairs, pick_pairs  # noqa: E402


def unrated(texts: list[tuple[str, str]], record_id: str = "u1") -> Record:
    """Completions (member, text) with no ratings, ids "<member>:<k>" as the pool writes them."""
    seen: dict[str, int] = {}
    completions = []
    for member, text in texts:
        k = seen.get(member, 0)
        seen[member] = k + 1
        completions.append(Completion(id=f"{member}:{k}", text=text, model=member))
    return Record(id=record_id, instruction="Say hi.", completions=completions)


def with_verdicts(record: Record, *verdicts: tuple[str, str, float | None, tuple, int]) -> Record:
    """verdicts: (x, y, margin, decided_by, decided_at) in check order."""
    record.judge_info["verdicts"] = [
        {"x": x, "y": y, "margins": {}, "margin": m, "decided_by": list(by), "decided_at": at, "threshold": 0.1}
        for x, y, m, by, at in verdicts
    ]
    return record


def test_rated_candidates_are_the_most_separated_first() -> None:
    record = make_record([("middle", 3, None), ("top", 5, None), ("bottom", 1, None), ("same as top", 5, None)])
    record.completions[3].text = "TOP "  # the same text as m1 once case and spaces are ignored
    pairs = candidate_pairs(record, PairConfig(candidates=10))
    assert pairs[0] == ("m1:0", "m2:0")  # 5 against 1: the ratings' best-worst pair leads
    assert ("m1:0", "m3:0") not in pairs and ("m3:0", "m1:0") not in pairs  # same text: never a pair
    gaps = {"m0:0": 3, "m1:0": 5, "m2:0": 1, "m3:0": 5}
    assert [gaps[x] - gaps[y] for x, y in pairs] == sorted((gaps[x] - gaps[y] for x, y in pairs), reverse=True)
    assert candidate_pairs(record, PairConfig(candidates=2)) == pairs[:2]


def test_unrated_candidates_put_different_members_first() -> None:
    record = unrated([("qwen", "an answer"), ("smol", "another answer"), ("qwen", "a rewrite")])
    record.completions[2].id, record.completions[2].member = "qwen:0+evol1", "qwen"
    assert candidate_pairs(record, PairConfig()) == [
        ("qwen:0", "smol:0"), ("smol:0", "qwen:0+evol1"), ("qwen:0", "qwen:0+evol1")]
    assert candidate_pairs(unrated([("qwen", "only one")]), PairConfig()) == "fewer_than_two_completions"
    assert candidate_pairs(unrated([("a", "Same"), ("b", "same ")]), PairConfig()) == "identical_text"


def test_the_surest_decided_candidate_is_written_with_no_scores() -> None:
    record = with_verdicts(
        unrated([("a", "one"), ("b", "two"), ("c", "three")]),
        ("a:0", "b:0", 0.05, (), 0),            # asked, not decided
        ("a:0", "c:0", -0.4, ("big",), 1),      # decided by the second judge: c over a
        ("b:0", "c:0", 0.3, ("small",), 0),     # decided by the first judge: b over c
    )
    pairs, reason = pick_pairs(record, PairConfig(pairs_per_instruction=1))
    assert reason is None and len(pairs) == 1
    p = pairs[0]
    assert (p.chosen, p.rejected, p.decided_by, p.id) == ("two", "three", "small", "u1")
    assert p.score_chosen is None and p.margin is None and p.confidence == pytest.approx(0.3)
    # two pairs per instruction: the next surest too, with its own id
    two, _ = pick_pairs(record, PairConfig(pairs_per_instruction=2))
    assert [(q.chosen, q.rejected, q.id) for q in two] == [("two", "three", "u1"), ("three", "one", "u1-2")]
    # the default: up to 3 with the pairwise verdicts (here the two decided), 1 with the ratings
    assert pick_pairs(record, PairConfig()) == (two, None)
    assert PairConfig().pairs_wanted == 3 and PairConfig(decide="ratings").pairs_wanted == 1


def test_try_shows_every_pair_an_instruction_wrote(capsys) -> None:
    from types import SimpleNamespace

    from edgepref.stages.config import PipelineConfig
    from edgepref.ui.display import render_try

    record = with_verdicts(
        unrated([("a", "one"), ("b", "two"), ("c", "three")]),
        ("a:0", "c:0", -0.4, ("big",), 1), ("b:0", "c:0", 0.3, ("small",), 0),
    )
    cfg = PipelineConfig()  # the default: up to 3 pairs per instruction
    report = pair_records([record], cfg.pair)
    assert [p.id for p in report.pairs] == ["u1", "u1-2"]
    render_try(SimpleNamespace(records=[record], pairs=report.pairs, drop_reasons=report.drop_reasons), cfg)
    out = capsys.readouterr().out
    assert "pair: b:0 over c:0" in out and "pair: c:0 over a:0" in out and "no pair" not in out


def test_several_pairs_never_contradict_each_other() -> None:
    # a > b, b > c, then c > a would close a cycle: it is not written
    record = with_verdicts(
        unrated([("a", "A"), ("b", "B"), ("c", "C")]),
        ("a:0", "b:0", 0.9, ("j",), 0), ("b:0", "c:0", 0.8, ("j",), 0), ("a:0", "c:0", -0.7, ("j",), 0),
    )
    pairs, _ = pick_pairs(record, PairConfig(pairs_per_instruction=3))
    assert [(p.chosen, p.rejected) for p in pairs] == [("A", "B"), ("B", "C")]
    report = pair_records([record], PairConfig(pairs_per_instruction=3))
    assert [p.id for p in report.pairs] == ["u1", "u1-2"] and report.margins == []


def test_a_later_judge_looks_only_at_instructions_without_a_pair() -> None:
    """With several pairs per instruction the chain's first judge keeps checking a record until
    it has them; a later, dearer judge takes only the records left with no pair at all."""
    from edgepref.stages.verify import Pending

    pending = Pending()
    pending.pairs = {"one": [("a:0", "c:0"), ("b:0", "c:0")], "none": [("a:0", "b:0"), ("a:0", "c:0")], "done": []}
    pending.wanted = 3
    pending.decided["one"] = 1
    assert pending.open() == {"one": pending.pairs["one"], "none": pending.pairs["none"]}
    assert pending.open(1, later=True) == {"none": [("a:0", "b:0")]} and pending.size(1, later=True) == 1
    pending.wanted = 1  # one pair per instruction: the same records for every judge
    assert pending.open(later=True) == pending.open() == {"none": pending.pairs["none"]}


def test_no_decided_candidate_is_uncertain_and_none_asked_is_no_verdict() -> None:
    asked = with_verdicts(unrated([("a", "A"), ("b", "B")]), ("a:0", "b:0", 0.01, (), 0))
    assert pick_pairs(asked, PairConfig()) == ([], "uncertain")
    failed = with_verdicts(unrated([("a", "A"), ("b", "B")]), ("a:0", "b:0", None, (), 0))
    assert pick_pairs(failed, PairConfig()) == ([], "no_verdict")
    # a verdict on a pair that is no longer a candidate (fewer candidates asked) does not count
    stale = with_verdicts(unrated([("a", "A"), ("b", "B"), ("c", "C")]), ("b:0", "c:0", 0.9, ("j",), 0))
    assert pick_pairs(stale, PairConfig(candidates=1)) == ([], "no_verdict")


def test_ratings_and_no_ratings_cannot_be_combined() -> None:
    from edgepref.stages.config import JudgeConfig, PipelineConfig

    from edgepref.runs.pipeline import run_pipeline

    with pytest.raises(ConfigError, match="needs ratings"):  # a run: before any model loads
        run_pipeline(["Say hi."], None, PipelineConfig(judge=JudgeConfig(mode="none"), pair=PairConfig(decide="ratings")))
    with pytest.raises(ConfigError, match="pairs_per_instruction"):
        PipelineConfig(judge=JudgeConfig(mode="rationale"),
                       pair=PairConfig(decide="ratings", pairs_per_instruction=2)).validate()
    with pytest.raises(ConfigError, match="candidates"):
        PairConfig(candidates=0)
