"""Judge evaluation: how often does a judge recipe agree with strong labels on response pairs?

Input rows: instruction, response_a, response_b, label ("a" or "b"), optionally id and
weak_model. Each pair becomes a Record with completions "a" and "b" and goes through the very
same `judge()` as the pipeline, always shown in both orders (a first, then b first), so that one
run yields the single-order figures (each order on its own: swap consistency, position bias)
and the both-orders average.

A recipe names a judge mode and how scores become a verdict:
  rationale / score-only / pairwise   what the judge writes (see judge.py)
  int | expected                      integer scores, or probability-weighted ones
  one-order | both-orders             the verdict of one showing order, or the mean of both
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from .backend import Backend
from .config import JudgeConfig
from .errors import ConfigError, InputError
from .inputs import iter_jsonl_rows, rows_from_datasets
from .judge import judge
from .records import Completion, Record, content_key

# name -> (judge mode, score key, both orders)
RECIPES: dict[str, tuple[str, str, bool]] = {
    "rationale-int": ("rationale", "score", False),
    "rationale-expected": ("rationale", "expected", False),
    "rationale-expected-both": ("rationale", "expected", True),
    "rationale-int-both": ("rationale", "score", True),
    "score-only-int": ("score-only", "score", False),
    "score-only-expected": ("score-only", "expected", False),
    "score-only-expected-both": ("score-only", "expected", True),
    "pairwise": ("pairwise", "expected", True),
}


@dataclass
class JudgePair:
    id: str
    instruction: str
    response_a: str
    response_b: str
    label: str
    weak_model: str | None = None


@dataclass
class EvalReport:
    recipe: str
    judges: list[str]
    n: int = 0
    agreement: float = 0.0
    agreement_ci95: tuple[float, float] = (0.0, 0.0)
    tie_rate: float = 0.0
    parse_rate: float = 0.0
    swap_consistency: float = 0.0  # same winner in both showing orders (one-order verdicts)
    position_bias: float = 0.0  # share of one-order wins that went to the response shown first
    length_bias: float = 0.0  # share of decided verdicts won by the longer response
    one_order_agreement: float = 0.0  # agreement of each showing order on its own
    seconds_per_pair: float = 0.0
    by_weak_model: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)


def read_judge_pairs(source: str, limit: int | None = None) -> list[JudgePair]:
    if source.endswith(".jsonl"):
        rows = []
        for n, row, problem in iter_jsonl_rows(Path(source)):
            if problem:
                raise InputError(f"{source} line {n}: {problem}", "fix or remove that line")
            rows.append(row)
    else:
        rows, _ = rows_from_datasets(source, None)
    pairs = []
    for i, row in enumerate(rows, start=1):
        missing = [k for k in ("instruction", "response_a", "response_b", "label") if k not in row]
        if missing:
            raise InputError(f"{source} row {i} lacks {', '.join(missing)}",
                             "judge pairs need instruction, response_a, response_b and label (a or b)")
        label = str(row["label"]).strip().lower()
        if label not in ("a", "b"):
            raise InputError(f"{source} row {i}: label must be 'a' or 'b', got {row['label']!r}")
        pairs.append(JudgePair(str(row.get("id", i)), row["instruction"], row["response_a"],
                               row["response_b"], label, row.get("weak_model")))
        if limit and len(pairs) >= limit:
            break
    return pairs


def pair_record(p: JudgePair) -> Record:
    return Record(
        id=content_key("judge-pair", p.id, p.instruction),
        instruction=p.instruction,
        completions=[Completion("a", p.response_a, "response_a"), Completion("b", p.response_b, "response_b")],
    )


def default_recipe(mode: str, pair_score: str, both_orders: bool) -> str:
    """The recipe that the pipeline's judge settings amount to."""
    for name, spec in RECIPES.items():
        if spec == (mode, "expected" if mode == "pairwise" else pair_score, both_orders or mode == "pairwise"):
            return name
    raise ConfigError(f"no recipe matches judge mode {mode!r} with score {pair_score!r}")


def judge_config_for(recipe: str, base: JudgeConfig) -> JudgeConfig:
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    mode, _, _ = RECIPES[recipe]
    cfg = JudgeConfig(**{**asdict(base), "mode": mode})
    # Always both orders, a first: each order on its own gives the one-order figures.
    cfg.both_orders, cfg.shuffle, cfg.expected = True, False, True
    return cfg


def _pass_values(record: Record, cid: str, key: str) -> list[list[float]] | None:
    """Per judge: [value in pass 0, value in pass 1] for completion cid."""
    out = []
    for r in record.ratings:
        if r.completion_id != cid:
            continue
        vals = r.pass_expected if key == "expected" else r.pass_scores
        if len(vals) != 2 or any(v is None for v in vals):
            return None
        out.append(list(vals))
    return out or None


def _verdict(a: float, b: float) -> float:
    """1.0 if a wins, 0.0 if b wins, 0.5 for a tie."""
    return 1.0 if a > b + 1e-9 else 0.0 if b > a + 1e-9 else 0.5


def score_recipe(recipe: str, pairs: list[JudgePair], records: list[Record], judges: list[str],
                 seconds: float, seed: int = 0) -> EvalReport:
    """Metrics of one recipe from records rated in both orders (pass 0: a first, pass 1: b first)."""
    _, key, both = RECIPES[recipe]
    rep = EvalReport(recipe=recipe, judges=list(judges))
    hits, one_hits, first_wins, decided_one, consistent, ties, long_wins, decided = [], [], 0, 0, 0, 0, 0, 0
    by_weak: dict[str, list[float]] = defaultdict(list)
    parsed = 0
    for p, rec in zip(pairs, records):
        va, vb = _pass_values(rec, "a", key), _pass_values(rec, "b", key)
        if va is None or vb is None:
            continue
        parsed += 1
        # panel: mean over judges, per pass
        a_pass = [sum(v[k] for v in va) / len(va) for k in (0, 1)]
        b_pass = [sum(v[k] for v in vb) / len(vb) for k in (0, 1)]
        one = [_verdict(a_pass[k], b_pass[k]) for k in (0, 1)]  # P(a wins) per showing order
        for k, v in enumerate(one):
            if v != 0.5:
                decided_one += 1
                shown_first_won = (v == 1.0) == (k == 0)
                first_wins += shown_first_won
        consistent += one[0] == one[1]
        label_a = p.label == "a"
        one_hits += [(v if label_a else 1.0 - v) for v in one]
        if both:
            v = _verdict(sum(a_pass) / 2, sum(b_pass) / 2)
        else:  # one seeded showing order, as the pipeline's shuffle would pick
            v = one[random.Random(content_key("eval-order", seed, p.id)).randrange(2)]
        hit = v if label_a else 1.0 - v
        hits.append(hit)
        ties += v == 0.5
        if v != 0.5 and len(p.response_a) != len(p.response_b):
            decided += 1
            long_wins += (v == 1.0) == (len(p.response_a) > len(p.response_b))
        by_weak[p.weak_model or "-"].append(hit)
    n = len(hits)
    rep.n = n
    rep.parse_rate = parsed / len(pairs) if pairs else 0.0
    if n:
        rep.agreement = sum(hits) / n
        rep.agreement_ci95 = bootstrap_ci(hits, seed)
        rep.tie_rate = ties / n
        rep.swap_consistency = consistent / n
        rep.position_bias = first_wins / decided_one if decided_one else 0.5
        rep.length_bias = long_wins / decided if decided else 0.5
        rep.one_order_agreement = sum(one_hits) / len(one_hits)
    rep.seconds_per_pair = seconds / len(pairs) if pairs else 0.0
    if any(k != "-" for k in by_weak):
        rep.by_weak_model = {k: {"n": len(v), "agreement": sum(v) / len(v)} for k, v in sorted(by_weak.items())}
    return rep


def bootstrap_ci(hits: list[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(hits)
    means = sorted(sum(hits[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])


def rate_pairs(runner, model: str, pairs: list, jcfg: JudgeConfig) -> tuple[list[Record], float]:
    """One judge rates every pair through the pipeline's judge stage (cached, resumable);
    returns the rated records and the seconds it took."""
    records = [pair_record(p) for p in pairs]
    start = time.perf_counter()
    n_ctx = max(runner.cfg.judge.n_ctx, runner.cfg.engine.n_ctx)
    runner.run_stage(f"eval-{jcfg.mode}-{model}", model, n_ctx, len(records),
                     lambda be, cb: judge(records, model, be, jcfg, on_result=cb))
    return records, time.perf_counter() - start


def panel_records(pairs: list, rated: list[list[Record]]) -> list[Record]:
    """Fresh records holding the ratings of every judge in `rated` (a panel from its members)."""
    merged = [pair_record(p) for p in pairs]
    for records in rated:
        for rec, src in zip(merged, records):
            rec.ratings += src.ratings
    return merged


def run_eval(
    pairs_path: str,
    *,
    judges: list[str] | None = None,
    recipe: str | None = None,
    limit: int | None = None,
    json_out: str | Path | None = None,
    config_file: str | Path | None = None,
    models_file: str | Path | None = None,
    on_event=None,
    backends: dict[str, Backend] | None = None,
) -> EvalReport:
    """Rate labelled pairs through the pipeline's judge stage and score one recipe.

    With no judges/recipe, the pipeline's default judge settings are used exactly. Requests are
    cached beside `json_out`, so an interrupted evaluation resumes.
    """
    import json

    from .config import apply_overrides, load_config
    from .pipeline import Runner

    cfg = apply_overrides(load_config(config_file), judges=judges or (), models_file=models_file)
    recipe = recipe or default_recipe(cfg.judge.mode, cfg.pair.score, cfg.judge.both_orders)
    jcfg = judge_config_for(recipe, cfg.judge)
    pairs = read_judge_pairs(str(pairs_path), limit)
    if not pairs:
        raise InputError(f"no judge pairs in {pairs_path}")
    cache_dir = Path(str(json_out) + ".cache") if json_out else None
    runner = Runner(cfg, None, on_event, cache_dir=cache_dir, backends=backends)
    try:
        rated = [rate_pairs(runner, name, pairs, jcfg) for name in runner.judges]
    finally:
        runner.close()
    records = panel_records(pairs, [recs for recs, _ in rated])
    seconds = sum(secs for _, secs in rated)
    if not RECIPES[recipe][2]:
        seconds /= 2  # a one-order recipe needs only one of the two passes we ran
    report = score_recipe(recipe, pairs, records, runner.judges, seconds, cfg.seed)
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_row(), indent=2))
    return report
