"""The whole pipeline on the real embedded models, with short generations."""

from __future__ import annotations

import json

import datasets
import pytest

from edgepref.stages.config import EvolveConfig, JudgeConfig, PipelineConfig, PoolMember
from edgepref.stages.config import PairConfig
from edgepref.stages.complete import CompleteStage
from edgepref.runs.pipeline import Runner, run_pipeline, run_single_stage
from edgepref.core.records import Record

from .conftest import QWEN, SMOL

INSTRUCTIONS = [
    "What is the capital of Australia?",
    "Give two tips for staying focused while studying.",
    "Write one sentence about autumn.",
]


def small_config(**judge) -> PipelineConfig:
    return PipelineConfig(
        pool=[PoolMember(QWEN, max_tokens=32), PoolMember(SMOL, max_tokens=32)],
        # the judge's own answer rewritten in place (every answer, the default: test_every_answer_*)
        evolve=EvolveConfig(num_evolutions=1, max_tokens=40, pick="own"),
        # the ratings on (the default rates nothing), so that every stage runs
        judge=JudgeConfig(models=[QWEN], max_rationale_chars=40, **{"mode": "rationale", **judge}),
        # a fixed threshold of 0: every verdict decides (calibrated chains: test_cascade_*); one
        # candidate pair per record, the ratings' best and worst (more: test_candidates_*)
        pair=PairConfig(min_margin=1.0, min_confidence=0.0, candidates=1),
    )


@pytest.fixture(scope="module")
def engines(qwen_engine, smol_engine):
    return {QWEN: qwen_engine, SMOL: smol_engine}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, engines):
    out = tmp_path_factory.mktemp("run")
    events = []
    result = run_pipeline(INSTRUCTIONS, out, small_config(), on_event=events.append, backends=engines)
    return out, result, events


def test_every_completion_is_rated_and_pairs_are_ordered(first_run) -> None:
    out, result, _ = first_run
    assert len(result.records) == 3
    for record in result.records:
        models = {c.model for c in record.completions if c.source == "pool"}
        assert models == {QWEN, SMOL}
        assert {r.completion_id for r in record.ratings} == {c.id for c in record.completions}
        for r in record.ratings:
            assert r.score in {1, 2, 3, 4, 5} and 1.0 <= r.expected <= 5.0
    cfg = small_config()
    for record in result.records:  # the shortlisted pair of every record got a pairwise verdict
        verdict = record.judge_info["verdict"]
        assert verdict["decided_by"] == [QWEN] and isinstance(verdict["margin"], float)
    for pair in result.pairs:
        assert pair.chosen.strip() != pair.rejected.strip()
        assert pair.confidence >= cfg.pair.min_confidence and pair.decided_by == QWEN
        assert pair.model_chosen and pair.model_rejected
    assert result.summary.pairs == len(result.pairs)
    assert result.summary.pairs + sum(result.summary.pairs_dropped.values()) == 3


def test_evolved_completions_keep_lineage(first_run) -> None:
    _, result, _ = first_run
    evolved = [c for r in result.records for c in r.completions if c.source == "evol"]
    dropped = [d for r in result.records for d in r.dropped if d["stage"] == "evolve"]
    assert len(evolved) + len(dropped) == 3  # one rewrite attempt per instruction: the judge's own answer
    for c in evolved:
        assert c.parent_id == f"{QWEN}:0" and c.id.startswith(c.parent_id) and c.criterion in EvolveConfig().criteria
        assert not c.text.lower().startswith(("# improved", "improved response"))


def test_rewrites_continue_the_conversation_in_the_completion_call(first_run) -> None:
    out, result, _ = first_run
    # every rewrite ran as a follow-up of its completion request: the evolve stage found all of
    # them in its cache, and their prompts reused the conversation's KV
    parents = [c for r in result.records for c in r.completions if c.id == f"{QWEN}:0"]
    rows = [json.loads(line) for line in (out / "cache" / "evolve.jsonl").read_text().splitlines()]
    # (a near-duplicate answer is asked again, and so is its rewrite)
    assert len(rows) == 3 + sum(c.regenerated for c in parents) and all(row["prefetched"] for row in rows)
    assert result.summary.cached_requests == 0  # prefetched answers are not resumed work
    evolve_stats = result.summary.stages["evolve"]
    # each rewrite's prompt reused its conversation: the instruction's prompt and the answer
    assert evolve_stats["prompt_cached"] >= sum(c.prompt_tokens + c.completion_tokens - 2 for c in parents)
    # every token was generated inside the complete stage's time: none is rated in the evolve stage's
    assert evolve_stats["completion_tokens"] == evolve_stats["continued_tokens"] > 0
    assert evolve_stats["continued_requests"] == len(rows)


def test_files_load_with_datasets_as_trl_expects(first_run) -> None:
    out, result, _ = first_run
    ds = datasets.load_dataset("json", data_files=str(out / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(ds.column_names)
    assert len(ds) == len(result.pairs) and isinstance(ds[0]["chosen"], str)
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == INSTRUCTIONS
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["pairs"] == len(result.pairs)


def test_prompt_tokens_are_counted_per_stage(first_run) -> None:
    out, result, _ = first_run
    stages = result.summary.stages
    assert list(stages)[-1] == "pair" and stages["pair"]["dropped"] == dict(result.summary.pairs_dropped)
    for stage, t in stages.items():
        if stage != "pair":
            assert t["prompt_decoded"] > 0 and t["prompt_cached"] >= 0, stage
    # the rating prompts share the rubric before the instruction: the engine decodes it once
    judge = next(t for s, t in stages.items() if s.startswith("judge-"))
    assert judge["prompt_cached"] > 0
    pool = [c for r in result.records for c in r.completions if c.source == "pool" and c.model == SMOL]
    smol = stages[f"complete-{SMOL}"]
    # one request per completion, and one more for each that was regenerated as a near-duplicate
    assert smol["prompt_decoded"] + smol["prompt_cached"] == sum(c.prompt_tokens * (1 + c.regenerated) for c in pool)
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["stages"] == stages


def test_self_preference_is_announced(first_run) -> None:
    """The notice quotes the figure the shipped self_preference.json records for the judge
    (also in the pool) and the run's recipe, read here from the file itself."""
    from pathlib import Path

    import edgepref

    _, _, events = first_run
    notices = [e.message for e in events if e.kind == "notice" and "self-preference" in e.message]
    shipped = json.loads((Path(edgepref.__file__).parent / "judging" / "self_preference.json").read_text())
    recipe = small_config().judge.recipe
    (figure,) = [f for f in shipped["figures"] if f["judge"] == QWEN and f["recipe"] == recipe]
    assert notices and f"in {round(100 * figure['share'])}% of {figure['n']} dev instructions" in notices[0]


def test_uncertain_pairs_are_dropped_and_counted(first_run, engines, tmp_path) -> None:
    out, result, _ = first_run
    margins = [abs(r.judge_info["verdict"]["margin"]) for r in result.records]
    cut = sorted(margins)[1] + 1e-6  # above the two least confident verdicts
    cfg = small_config()
    cfg.pair.min_confidence = cut
    # another threshold on the same directory: overwrite=True, or the run stops and lists the change
    again = run_pipeline(INSTRUCTIONS, out, cfg, backends=engines, overwrite=True)  # answered from the cache
    assert again.summary.completion_tokens == 0
    assert again.summary.pairs_dropped.get("uncertain") == 2 and again.summary.pairs == 1
    assert json.loads((out / "run.json").read_text())["summary"]["pairs_dropped"]["uncertain"] == 2
    run_pipeline(INSTRUCTIONS, out, small_config(), backends=engines, overwrite=True)  # leave the module's run as it was


def test_candidates_are_checked_until_one_is_decided(engines, tmp_path) -> None:
    """No ratings (judge mode none): the chain checks each record's candidate pairs in order and
    stops at the first it decides (one pair per instruction); when it decides none, it has
    checked them all."""
    cfg = small_config(mode="none")
    cfg.pair.candidates, cfg.pair.pairs_per_instruction = 3, 1
    out = tmp_path / "run"
    decided = run_pipeline(INSTRUCTIONS, out, cfg, backends=engines)  # |margin| >= 0: the first decides
    assert not any(name.startswith("judge-") for name in decided.summary.stages)
    for record in decided.records:
        assert not record.ratings and len(record.judge_info["verdicts"]) == 1
        assert record.judge_info["verdicts"][0]["decided_by"] == [QWEN]
        # no ratings: two different members' answers are the first candidate, in pool order
        assert (record.judge_info["verdict"]["x"], record.judge_info["verdict"]["y"]) == (f"{QWEN}:0", f"{SMOL}:0")
    assert len(decided.pairs) == 3 and all(p.score_chosen is None and p.margin is None for p in decided.pairs)
    assert decided.summary.instructions_paired == 3 and decided.summary.coverage == 1.0

    cfg.pair.min_confidence = 1e6  # nothing is decided: every candidate is asked, in order
    unsure = run_pipeline(INSTRUCTIONS, out, cfg, backends=engines, overwrite=True)
    assert unsure.summary.completion_tokens == 0  # the completions came from the cache
    for record in unsure.records:
        asked = [(v["x"], v["y"]) for v in record.judge_info["verdicts"]]
        q, s, rewrite = f"{QWEN}:0", f"{SMOL}:0", f"{QWEN}:0+evol1"
        # the two members' answers first, then each answer against the rewrite (when it was kept)
        kept = any(c.id == rewrite for c in record.completions)
        assert asked == ([(q, s), (s, rewrite), (q, rewrite)] if kept else [(q, s)])
    assert unsure.summary.pairs_dropped == {"uncertain": 3} and not unsure.pairs

    cfg.pair.min_confidence, cfg.pair.pairs_per_instruction = 0.0, 3  # several pairs per instruction
    several = run_pipeline(INSTRUCTIONS, out, cfg, backends=engines, overwrite=True)
    assert several.summary.stages[f"verify-{QWEN}"]["cached_requests"] > 0  # the verdicts asked before
    by_record: dict[str, list] = {}
    for p in several.pairs:
        by_record.setdefault(p.id.split("-")[0], []).append(p)
    assert len(by_record) == 3 and len(several.pairs) > 3 and len({p.id for p in several.pairs}) == len(several.pairs)
    for record in several.records:
        pairs = by_record[record.id]
        assert [p.id for p in pairs] == [record.id] + [f"{record.id}-{k}" for k in range(2, len(pairs) + 1)]
        beats = {(p.completion_chosen, p.completion_rejected) for p in pairs}
        assert not any((b, a) in beats for a, b in beats)  # no pair says the opposite of another
    lines = (out / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == len(several.pairs)


def test_every_answer_is_rewritten_and_every_pair_is_a_candidate(engines, tmp_path) -> None:
    """The defaults: every pool answer gets a rewrite (qwen's own as a follow-up turn of its
    completion request, smollm2's in a request of its own in the evolve stage), and every pair
    of a record's completions is a candidate the chain may check."""
    from edgepref.stages.pair import candidate_pairs

    cfg = small_config(mode="none")
    cfg.evolve, cfg.pair = EvolveConfig(num_evolutions=1, max_tokens=40), PairConfig(min_confidence=1e6)
    assert cfg.evolve.pick == "all" and cfg.pair.candidates == 6
    result = run_pipeline(INSTRUCTIONS[:2], tmp_path, cfg, backends=engines)
    evolved = [c for r in result.records for c in r.completions if c.source == "evol"]
    dropped = [d for r in result.records for d in r.dropped if d["stage"] == "evolve"]
    assert len(evolved) + len(dropped) == 4  # two answers per instruction, a rewrite attempt each
    assert {c.parent_id.split(":")[0] for c in evolved} <= {QWEN, SMOL} and any(c.parent_id == f"{SMOL}:0" for c in evolved)
    rows = [json.loads(line) for line in (tmp_path / "cache" / "evolve.jsonl").read_text().splitlines()]
    assert sum(not row.get("prefetched") for row in rows) == 2  # smollm2's: asked in the stage
    assert sum(bool(row.get("prefetched")) for row in rows) >= 2  # qwen's: inside the completion call
    for record in result.records:  # nothing decided: every candidate pair was asked
        n = len(record.completions)
        asked = [(v["x"], v["y"]) for v in record.judge_info["verdicts"]]
        assert asked == candidate_pairs(record, cfg.pair) and len(asked) == n * (n - 1) // 2
    assert max(len(r.completions) for r in result.records) >= 3
    assert result.summary.pairs_dropped == {"uncertain": 2}


def test_a_later_judge_checks_the_candidate_the_first_came_closest_to_deciding(engines, tmp_path) -> None:
    """Nothing is decided (threshold above any margin): smollm2, first in the chain, checks every
    candidate; qwen, the dearer judge after it, checks only `later_candidates` of them, the one
    with smollm2's largest |margin| first."""
    cfg = small_config(mode="none")
    cfg.judge.cascade = [SMOL, QWEN]
    cfg.pair.candidates, cfg.pair.later_candidates, cfg.pair.min_confidence = 3, 1, 1e6
    result = run_pipeline(INSTRUCTIONS[:2], tmp_path, cfg, backends=engines)
    for record in result.records:
        verdicts = record.judge_info["verdicts"]
        assert all(SMOL in v["margins"] for v in verdicts)
        asked_later = [v for v in verdicts if QWEN in v["margins"]]
        assert len(asked_later) == 1 and all(v["margin"] is not None for v in verdicts)  # only what was asked
        assert abs(asked_later[0]["margins"][SMOL]) == max(abs(v["margins"][SMOL]) for v in verdicts)
    assert max(len(r.judge_info["verdicts"]) for r in result.records) == 3  # a kept rewrite: 3 candidates
    assert result.summary.pairs_dropped == {"uncertain": 2}


def test_escalation_asks_the_next_judge_of_the_chain(engines, tmp_path) -> None:
    """smollm2 judges; every verdict it gives is uncertain (threshold above any margin), so
    qwen, the judge it escalates to, is asked about each pair."""
    cfg = small_config()
    cfg.evolve.num_evolutions = 0
    cfg.judge.models, cfg.judge.escalate_to = [SMOL], QWEN
    cfg.pair.min_confidence = 1e6
    events = []
    result = run_pipeline(INSTRUCTIONS[:2], tmp_path, cfg, backends=engines, on_event=events.append)
    for record in result.records:
        verdict = record.judge_info["verdict"]
        assert verdict["asked"] == [QWEN] and verdict["decided_by"] == []
        assert set(verdict["margins"]) == {SMOL, QWEN} and verdict["margin"] == verdict["margins"][QWEN]
    assert result.summary.pairs_dropped == {"uncertain": 2}  # qwen is no surer than 1e6 either
    assert [e.stage for e in events if e.kind == "stage-start" and e.stage.startswith("verify")] == [
        f"verify-{SMOL}", f"verify-{QWEN}"]
    cfg.pair.min_confidence = 0.0
    from edgepref.stages.pair import pair_records

    report = pair_records(result.records, cfg.pair)
    assert report.pairs and all(p.decided_by == QWEN for p in report.pairs)


def test_a_resumed_run_writes_the_same_pairs(first_run, engines, tmp_path) -> None:
    """Interrupted after its first verdict request, a run resumes and computes the other verdicts
    in a smaller call: the same margins to the last digit, so the same pairs, byte for byte."""
    import shutil

    out, result, _ = first_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "pairs.jsonl").unlink()
    cache = resumed / "cache" / f"verify-{QWEN}.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    assert len(lines) > 2
    cache.write_text(lines[0])
    again = run_pipeline(INSTRUCTIONS, resumed, small_config(), backends=engines)
    assert again.summary.completion_tokens == 0 and again.summary.stages[f"verify-{QWEN}"]["prompt_decoded"] > 0
    assert [r.judge_info["verdict"] for r in again.records] == [r.judge_info["verdict"] for r in result.records]
    assert (resumed / "pairs.jsonl").read_text() == (out / "pairs.jsonl").read_text()


def test_cascade_sends_unsure_pairs_to_the_next_judge(engines, judge15_engine, tmp_path) -> None:
    """A calibrated chain: qwen's threshold is above any margin it gives, so the 1.5B decides
    every pair, and each pair carries that judge and its calibrated agreement."""
    from edgepref.judging.calibration import Calibration, CalibrationFile, JudgeCalibration

    big = "qwen2.5-coder-1.5b"
    cal = Calibration(0.7, 0.1, 100, [
        JudgeCalibration(QWEN, "headings-ab", "split-512", 0.05, 100.0, 100, 0, None, 0.0),
        JudgeCalibration(big, "headings-ab", "split-512", 0.05, 1e-6, 100, 60, 0.8, 0.6),
    ])
    path = tmp_path / "cal.json"
    CalibrationFile([QWEN, big], "headings-ab", 0.1, [cal]).write(path)
    cfg = small_config()
    cfg.evolve.num_evolutions = 0
    cfg.judge.cascade = [QWEN, big]
    cfg.pair.min_confidence, cfg.pair.calibration, cfg.pair.target_agreement = None, str(path), 0.7
    backends = {**engines, big: judge15_engine}
    result = run_pipeline(INSTRUCTIONS[:2], tmp_path / "out", cfg, backends=backends)
    for record in result.records:
        verdict = record.judge_info["verdict"]
        assert set(verdict["margins"]) == {QWEN, big} and verdict["decided_by"] == [big]
        assert verdict["agreement"] == 0.8 and verdict["read_path"] == "split-512"
    assert result.pairs and all(p.decided_by == big and p.agreement == 0.8 for p in result.pairs)
    s = result.summary
    assert s.expected_agreement == 0.8 and s.target_agreement == 0.7 and s.coverage == 1.0
    assert big in s.verdict_chain and "calibrated agreement 80%" in s.verdict_chain
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["summary"]["expected_agreement"] == 0.8


def test_rerun_resumes_from_cache_with_identical_output(first_run, engines) -> None:
    out, result, _ = first_run
    before = (out / "pairs.jsonl").read_text()
    again = run_pipeline(INSTRUCTIONS, out, small_config(), backends=engines)
    assert again.summary.completion_tokens == 0  # nothing was generated again
    assert again.summary.cached_requests > 0
    assert (out / "pairs.jsonl").read_text() == before


def test_changed_settings_do_not_reuse_stale_answers(first_run, engines) -> None:
    out, result, _ = first_run
    cfg = small_config()
    cfg.pool[0].system_prompt = "Answer like a pirate."
    runner = Runner(cfg, out, backends=engines)
    try:
        fresh = [Record(id=r.id, instruction=r.instruction) for r in result.records[:1]]
        records = fresh
        runner.run_kind(CompleteStage, records)
    finally:
        runner.close()
    # the changed member missed the cache and was generated again; the unchanged one was replayed
    assert runner.units[f"complete-{QWEN}"].completion_tokens > 0
    assert runner.units[f"complete-{SMOL}"].completion_tokens == 0
    qwen = next(c for c in records[0].completions if c.model == QWEN)
    smol = next(c for c in records[0].completions if c.model == SMOL)
    assert qwen.system_prompt == "Answer like a pirate."
    assert smol.text == next(c for c in result.records[0].completions if c.id == smol.id).text


def test_conversational_format(engines, tmp_path) -> None:
    cfg = small_config()
    cfg.pair = PairConfig(min_confidence=0.0, format="conversational")  # every verdict makes a pair
    cfg.evolve.num_evolutions = 0
    result = run_pipeline(INSTRUCTIONS[:2], tmp_path, cfg, backends=engines)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    # every verdict decides: each instruction has pairs, in input order, its prompt the user turn
    prompts = [row["prompt"] for row in ds]
    assert prompts[0] == [{"role": "user", "content": INSTRUCTIONS[0]}]
    assert {p[0]["content"] for p in prompts} == set(INSTRUCTIONS[:2]) and all(len(p) == 1 for p in prompts)
    assert ds[0]["chosen"][0]["role"] == "assistant" and ds[0]["rejected"][0]["role"] == "assistant"
    assert len(result.pairs) == len(ds)


def test_diversity_guard_regenerates_near_duplicates(engines, tmp_path) -> None:
    # Two greedy members on the same model write the same text; the second is regenerated.
    cfg = small_config()
    cfg.pool = [PoolMember(SMOL, temperature=0.0, max_tokens=24, label="a"),
                PoolMember(SMOL, temperature=0.0, max_tokens=24, label="b")]
    runner = Runner(cfg, None, backends=engines)
    try:
        records = [Record(id="r1", instruction="Name a color.")]
        runner.run_kind(CompleteStage, records)
    finally:
        runner.close()
    a, b = records[0].completions
    assert b.regenerated and "near-duplicate of a:0" in b.note
    assert b.sampling["temperature"] > 0.0


def test_the_complete_command_alone_asks_for_no_rewrites(tmp_path, engines) -> None:
    # `edgepref complete` runs no evolve stage: a rewrite run in place would go to a cache that
    # no later command reads, so none is asked for
    records = [Record(id="a", instruction="Say hi.")]
    rows, errors = run_single_stage("complete", records, tmp_path / "out.jsonl", small_config(), backends=engines)
    assert rows == 1 and not errors
    assert {c.model for c in records[0].completions} == {QWEN, SMOL}
    assert sorted(p.name for p in (tmp_path / "out.jsonl.cache").iterdir()) == [f"complete-{QWEN}.jsonl",
                                                                               f"complete-{SMOL}.jsonl"]
