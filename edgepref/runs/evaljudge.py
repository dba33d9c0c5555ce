"""Judge evaluation: how often does a judge recipe agree with strong labels on response pairs?

Input rows: instruction, response_a, response_b, label ("a" or "b"), optionally id and
weak_model. Every pair is always judged in both showing orders (a first, then b first), so one
run yields the single-order figures (each order on its own: swap consistency, position bias)
and the verdict of the recipe.

Two kinds of recipe:
  rating recipes (RATING_RECIPES)  UltraFeedback ratings through the pipeline's judge():
      rationale / score-only       what the judge writes (see judge.py)
      int | expected               integer scores, or probability-weighted ones
      one-order | both-orders      the verdict of one showing order, or the mean of both
  pairwise recipes (compare.PAIRWISE_RECIPES)  two-order log-odds verdicts, as the pipeline's pairwise
      check decides chosen and rejected; margin = mean log-odds for a over b

Every verdict has a margin (score difference, or log-odds); its size is the confidence, and
precision at coverage is the agreement on the most confident 100% / 80% / 50% of the pairs.
Self-preference: the judge's own greedy answer to an instruction against the pair's better
response, judged by the same recipe; how often the judge prefers its own.

Failure is not a figure: when a unit's every request failed (a server that answers 501 to
everything; one whose answers lack the log probabilities a pairwise verdict reads, or never
match the rating format, which the server client counts as failed requests), `run_eval` and
`run_calibrate` raise EvalFailed with the server's status and an excerpt of its answer, instead
of reporting 0% agreement or a threshold calibrated on nothing.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from ..backends.base import Backend
from ..stages.config import JudgeConfig
from ..core.errors import ConfigError, EdgeprefError, InputError
from ..core.machine import cpu_model
from ..data.inputs import iter_jsonl_rows, rows_from_datasets
from ..backends.base import ChatRequest, Sampling
from ..judging.compare import PAIRWISE_RECIPES
from ..judging.compare import Verdict, compare, get_recipe
from ..judging.calibration import CalibrationFile, JudgeMargins, calibrate_chain, read_calibration
from ..judging.cascade import Chain, decide, group
from .hosting import read_path
from ..stages.judge import judge
from ..core.records import Completion, Record, content_key
from .summary import UnitOutcome, run_failures
from .review import labelled_pairs

# name -> (judge mode, score key, both orders)
RATING_RECIPES: dict[str, tuple[str, str, bool]] = {
    "rationale-int": ("rationale", "score", False),
    "rationale-expected": ("rationale", "expected", False),
    "rationale-expected-both": ("rationale", "expected", True),
    "rationale-int-both": ("rationale", "score", True),
    "score-only-int": ("score-only", "score", False),
    "score-only-expected": ("score-only", "expected", False),
    "score-only-expected-both": ("score-only", "expected", True),
}
COVERAGES = (1.0, 0.8, 0.5)
SELF_PREFERENCE_N = 40


class EvalFailed(EdgeprefError):
    """Judging gave nothing to measure: every request of one of its units failed."""


RETRY_HINT = "failed requests are not cached, so the same command retries only them"


def recipe_names() -> list[str]:
    return list(RATING_RECIPES) + list(PAIRWISE_RECIPES)


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
    prompt_tokens_per_pair: float | None = None  # pairwise recipes: the prompts it asks per pair
    # agreement on the most confident share of pairs ("100%", "80%", "50%") and the |margin|
    # at which each share starts
    precision_at_coverage: dict = field(default_factory=dict)
    confidence_at_coverage: dict = field(default_factory=dict)
    self_preference: dict | None = None  # {"share": ..., "n": ...}: own answer preferred
    # the pipeline's verdict chain on these pairs: coverage, agreement, by_judge (run_eval)
    selective: dict | None = None
    # judge -> how far its margins move across numerical paths (evaljudge.noise_floor)
    noise_floor: dict = field(default_factory=dict)
    by_weak_model: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)


def read_judge_pairs(source: str, limit: int | None = None) -> list[JudgePair]:
    """Labelled pairs from a JSONL file, a dataset, or a reviewed run directory (its kept and
    swapped pairs, review.labelled_pairs)."""
    if Path(source).is_dir():
        rows = labelled_pairs(source)
    elif source.endswith(".jsonl"):
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


def default_recipe(cfg) -> str:
    """The recipe that decides chosen/rejected with these pipeline settings (a PipelineConfig)."""
    if cfg.pair.decide == "pairwise" or cfg.judge.mode == "pairwise":
        return cfg.judge.recipe
    key = cfg.pair.score
    for name, spec in RATING_RECIPES.items():
        if spec == (cfg.judge.mode, key, cfg.judge.both_orders):
            return name
    raise ConfigError(f"no recipe matches judge mode {cfg.judge.mode!r} with score {key!r}")


def judge_config_for(recipe: str, base: JudgeConfig) -> JudgeConfig:
    if recipe not in RATING_RECIPES:
        raise ConfigError(f"unknown rating recipe {recipe!r}; choose from {', '.join(RATING_RECIPES)}")
    mode, _, _ = RATING_RECIPES[recipe]
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


@dataclass
class Judged:
    """One pair as a recipe saw it. margin > 0: a preferred. `orders`: per single showing order,
    (a's lead in that order alone, whether a was shown first)."""

    margin: float
    orders: list[tuple[float, bool]]


def judged_from_ratings(recipe: str, pairs: list[JudgePair], records: list[Record], seed: int = 0) -> list[Judged | None]:
    """Rating recipes: a panel averages its judges per pass; both-orders recipes average the passes,
    one-order recipes take one seeded pass, as the pipeline's shuffle would."""
    _, key, both = RATING_RECIPES[recipe]
    out: list[Judged | None] = []
    for p, rec in zip(pairs, records):
        va, vb = _pass_values(rec, "a", key), _pass_values(rec, "b", key)
        if va is None or vb is None:
            out.append(None)
            continue
        lead = [sum(v[k] for v in va) / len(va) - sum(v[k] for v in vb) / len(vb) for k in (0, 1)]
        margin = sum(lead) / 2 if both else lead[random.Random(content_key("eval-order", seed, p.id)).randrange(2)]
        out.append(Judged(margin, [(lead[0], True), (lead[1], False)]))
    return out


def judged_from_verdicts(verdicts: list[Verdict]) -> list[Judged | None]:
    """Pairwise recipes: one judge's verdicts of x=a over y=b. A pointwise recipe shows no order:
    its one lead stands for both (swap consistency 1, position bias one half)."""
    return [
        None if not v.ok
        else Judged(v.margin, [(v.margin, True), (v.margin, False)]) if v.pointwise
        else Judged(v.margin, [(lx, True) for lx, _ in v.logodds] + [(-ly, False) for _, ly in v.logodds])
        for v in verdicts
    ]


def _verdict(lead: float) -> float:
    """1.0 if a wins, 0.0 if b wins, 0.5 for a tie."""
    return 1.0 if lead > 1e-9 else 0.0 if lead < -1e-9 else 0.5


def precision_at_coverage(margins: list[float], hits: list[float],
                          coverages=COVERAGES) -> tuple[dict[str, float], dict[str, float]]:
    """Agreement on the most confident share of pairs (confidence = |margin|), and the |margin|
    from which each share is kept. Pairs of equal confidence keep their input order."""
    order = sorted(range(len(margins)), key=lambda i: -abs(margins[i]))
    precision, threshold = {}, {}
    for c in coverages:
        k = max(1, math.ceil(c * len(order) - 1e-9))
        kept = order[:k]
        precision[f"{c:.0%}"] = sum(hits[i] for i in kept) / k
        threshold[f"{c:.0%}"] = abs(margins[kept[-1]])
    return precision, threshold


def score_judged(recipe: str, pairs: list[JudgePair], judged: list[Judged | None], judges: list[str],
                 seconds: float, seed: int = 0) -> EvalReport:
    """Metrics of one recipe from its view of each pair (None: the judge gave no usable answer).
    Ties count one half as agreement."""
    rep = EvalReport(recipe=recipe, judges=list(judges))
    hits, margins, one_hits = [], [], []
    first_wins = decided_one = consistent = ties = long_wins = decided = 0
    by_weak: dict[str, list[float]] = defaultdict(list)
    for p, j in zip(pairs, judged):
        if j is None:
            continue
        label_a = p.label == "a"
        one = [_verdict(lead) for lead, _ in j.orders]
        for v, (_, a_first) in zip(one, j.orders):
            if v != 0.5:
                decided_one += 1
                first_wins += (v == 1.0) == a_first
            one_hits.append(v if label_a else 1.0 - v)
        consistent += len(set(one)) == 1
        v = _verdict(j.margin)
        hit = v if label_a else 1.0 - v
        hits.append(hit)
        margins.append(j.margin)
        ties += v == 0.5
        if v != 0.5 and len(p.response_a) != len(p.response_b):
            decided += 1
            long_wins += (v == 1.0) == (len(p.response_a) > len(p.response_b))
        by_weak[p.weak_model or "-"].append(hit)
    n = len(hits)
    rep.n = n
    rep.parse_rate = n / len(pairs) if pairs else 0.0
    if n:
        rep.agreement = sum(hits) / n
        rep.agreement_ci95 = bootstrap_ci(hits, seed)
        rep.tie_rate = ties / n
        rep.swap_consistency = consistent / n
        rep.position_bias = first_wins / decided_one if decided_one else 0.5
        rep.length_bias = long_wins / decided if decided else 0.5
        rep.one_order_agreement = sum(one_hits) / len(one_hits)
        rep.precision_at_coverage, rep.confidence_at_coverage = precision_at_coverage(margins, hits)
    rep.seconds_per_pair = seconds / len(pairs) if pairs else 0.0
    if any(k != "-" for k in by_weak):
        rep.by_weak_model = {k: {"n": len(v), "agreement": sum(v) / len(v)} for k, v in sorted(by_weak.items())}
    return rep


def score_recipe(recipe: str, pairs: list[JudgePair], records: list[Record], judges: list[str],
                 seconds: float, seed: int = 0) -> EvalReport:
    """Metrics of a rating recipe from records rated in both orders (pass 0: a first)."""
    return score_judged(recipe, pairs, judged_from_ratings(recipe, pairs, records, seed), judges, seconds, seed)


def bootstrap_ci(hits: list[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(hits)
    means = sorted(sum(hits[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])


def run_counted(runner, name: str, model: str, n_ctx: int, total: int, fn, reads: bool = False) -> None:
    """`runner.run_requests` with each failed request counted against its unit, the first one's
    error kept (the server's status and answer): the stages count theirs through the records'
    errors, which an evaluation does not keep. Then EvalFailed if none of the unit's requests
    got an answer."""
    outcome = runner.outcomes.setdefault(name, UnitOutcome())

    def counted(backend, callback):
        def on_result(progress, result) -> None:
            callback(progress, result)
            if not result.ok:
                outcome.fail(f"{model}: {result.error}")
        return fn(backend, on_result)

    runner.run_requests(name, model, n_ctx, total, counted, reads=reads)
    failures = run_failures(None, [], {name: outcome})
    if failures:
        raise EvalFailed(failures[0], RETRY_HINT)


def rate_pairs(runner, model: str, pairs: list, jcfg: JudgeConfig) -> tuple[list[Record], float]:
    """One judge rates every pair through the pipeline's judge stage (cached, resumable);
    returns the rated records and the seconds it took."""
    records = [pair_record(p) for p in pairs]
    start = time.perf_counter()
    run_counted(runner, f"eval-{jcfg.mode}-{model}", model, runner.judge_n_ctx, len(records),
                lambda be, cb: judge(records, model, be, jcfg, on_result=cb))
    return records, time.perf_counter() - start


def compare_pairs(runner, model: str, pairs: list, recipes: list) -> tuple[dict[str, list[Verdict]], float]:
    """One judge gives pairwise verdicts (response_a over response_b) on every pair for each
    recipe, in one cached, resumable stage; returns recipe name -> verdicts, and the seconds per
    prompt token of distinct requests (prompts shared by recipes are decoded once)."""
    out: dict[str, list[Verdict]] = {}
    stats: dict = {}
    start = time.perf_counter()
    items = [(p.instruction, p.response_a, p.response_b) for p in pairs]
    run_counted(runner, f"eval-compare-{model}", model, runner.judge_n_ctx, len(items),
                lambda be, cb: out.update(compare(items, recipes, be, model, on_result=cb, stats=stats)), reads=True)
    return out, (time.perf_counter() - start) / max(1, stats.get("prompt_tokens", 0))


@dataclass
class RecipeRun:
    judged: list  # Judged | None per pair
    seconds: float
    prompt_tokens_per_pair: float | None = None


def judge_recipes(runner, recipes: list[str], pairs: list[JudgePair], judges: list[str],
                  seed: int = 0) -> dict[str, RecipeRun]:
    """Each recipe's view of every pair with `judges` as a panel, its seconds and prompt tokens.
    Pairwise recipes are asked together (a prompt shared by recipes is decoded once); each is
    charged its own prompt tokens at the measured seconds per token, as if asked alone.
    One-order rating recipes are charged half of their mode's two passes."""
    per_judge = [judge_recipes_alone(runner, recipes, pairs, model, seed) for model in judges]
    return {name: panel_run([runs[name] for runs in per_judge]) for name in recipes}


def judge_recipes_alone(runner, recipes: list[str], pairs: list[JudgePair], model: str,
                        seed: int = 0) -> dict[str, RecipeRun]:
    out: dict[str, RecipeRun] = {}
    pairwise = [get_recipe(r) for r in recipes if r in PAIRWISE_RECIPES]
    if pairwise:
        got, per_token = compare_pairs(runner, model, pairs, pairwise)
        for name, vs in got.items():
            tokens = sum(v.prompt_tokens for v in vs)
            out[name] = RecipeRun(judged_from_verdicts(vs), per_token * tokens, tokens / max(1, len(pairs)))
    for mode in dict.fromkeys(RATING_RECIPES[r][0] for r in recipes if r in RATING_RECIPES):
        names = [r for r in recipes if r in RATING_RECIPES and RATING_RECIPES[r][0] == mode]
        records, seconds = rate_pairs(runner, model, pairs, judge_config_for(names[0], runner.cfg.judge))
        for name in names:
            out[name] = RecipeRun(judged_from_ratings(name, pairs, records, seed),
                                  seconds if RATING_RECIPES[name][2] else seconds / 2)
    return out


def panel_run(runs: list[RecipeRun]) -> RecipeRun:
    """A panel from its members' runs of one recipe: the mean margin per pair, every member's
    single-order leads, the members' seconds and prompt tokens added up."""
    if len(runs) == 1:
        return runs[0]
    judged: list[Judged | None] = []
    for views in zip(*(r.judged for r in runs)):
        if any(v is None for v in views):
            judged.append(None)
        else:
            judged.append(Judged(sum(v.margin for v in views) / len(views), [o for v in views for o in v.orders]))
    tokens = [r.prompt_tokens_per_pair for r in runs]
    return RecipeRun(judged, sum(r.seconds for r in runs), None if None in tokens else sum(tokens))


def own_answers(runner, model: str, pairs: list[JudgePair]) -> list[JudgePair]:
    """The judge's greedy answer to each instruction (response_a) against the pair's better
    response (response_b, the label): the pairs of the self-preference check."""
    reqs = [ChatRequest([{"role": "user", "content": p.instruction}], Sampling(temperature=0.0, max_tokens=512),
                        id=p.id) for p in pairs]
    results: list = []
    run_counted(runner, f"eval-own-{model}", model, runner.cfg.engine.n_ctx, len(reqs),
                lambda be, cb: results.extend(be.chat(reqs, on_result=cb)))
    return [JudgePair(f"own-{p.id}", p.instruction, res.text.strip(),
                      p.response_a if p.label == "a" else p.response_b, "b", model)
            for p, res in zip(pairs, results) if res.ok and res.text.strip()]


def self_preference(runner, recipes: list[str], pairs: list[JudgePair], judges: list[str],
                    seed: int = 0) -> dict[str, dict]:
    """Per recipe: how often each judge prefers its own answer to the better response (ties count
    half), and the mean over judges. `pairs`: the first N labelled pairs."""
    by_judge: dict[str, dict[str, float]] = {r: {} for r in recipes}
    n = 0
    for model in judges:
        own = own_answers(runner, model, pairs)
        n = len(own)
        for name, run in judge_recipes(runner, recipes, own, [model], seed).items():
            rep = score_judged(name, own, run.judged, [model], 0.0, seed)
            by_judge[name][model] = round(1.0 - rep.agreement, 4) if rep.n else None
    return {name: {"share": (sum(v.values()) / len(v)) if v and None not in v.values() else None,
                   "n": n, "by_judge": v}
            for name, v in by_judge.items()}


# ---------------------------------------------------------------- cascade, noise, calibration

# The numerical paths a verdict's margin is compared across to measure its noise floor, beside
# the engine's own (each prompt alone, split where the responses start, 512-token blocks): whole
# in 512-token and in 128-token blocks, and scheduled beside the other requests as generation is
# (16 slots, 32-token blocks).
NOISE_PATHS = ({"split_reads": False}, {"split_reads": False, "read_block": 128},
               {"reads_alone": False, "slots": 16, "prompt_block": 32})


NOISE_MACHINE_NOTE = ("The noise floors (and the margins) depend on the CPU they were computed on: llama.cpp's "
                      "kernels round differently on another, where they are an estimate; `edgepref calibrate "
                      "--noise-pairs N` there measures its own.")


def chain_margins(runner, models: list[str], pairs: list[JudgePair], recipe: str) -> dict[str, list[float | None]]:
    """Each judge's pairwise margin of response_a over response_b on every pair (None: no verdict)."""
    out = {}
    for model in models:
        got, _ = compare_pairs(runner, model, pairs, [get_recipe(recipe)])
        out[model] = [v.margin if v.ok else None for v in got[recipe]]
    return out


def noise_floor(cfg, cache_dir, model: str, pairs: list[JudgePair], recipe: str, reference: list[float | None],
                reference_path: str, on_event=None, backends=None) -> dict:
    """How far a verdict's margin moves when its prompts are computed another way (NOISE_PATHS)
    than the engine's (`reference`, its margins on the same pairs). Per pair the spread is the
    largest minus the smallest margin over the paths; `floor` is the spread's 90th percentile:
    a |margin| below it could change sign with how the prompt was decoded."""
    from dataclasses import replace

    from .pipeline import Runner

    margins = [reference]
    paths, seconds = [], {}
    for change in NOISE_PATHS:
        alt = replace(cfg, engine=replace(cfg.engine, **change))
        runner = Runner(alt, None, on_event, cache_dir=cache_dir, backends=backends)
        try:
            start = time.perf_counter()
            margins.append(chain_margins(runner, [model], pairs, recipe)[model])
            paths.append(read_path(model, alt, runner.host.registry))
            if not any(u.cached_requests for u in runner.units.values()):  # timed only when computed, not replayed from the cache
                seconds[paths[-1]] = round((time.perf_counter() - start) / max(1, len(pairs)), 2)
        finally:
            runner.close()
    spreads = sorted(max(ms) - min(ms) for ms in zip(*margins) if None not in ms)
    if not spreads:
        return {"pairs": 0, "floor": 0.0}

    def q(f: float) -> float:
        return round(spreads[min(len(spreads) - 1, math.ceil(f * len(spreads)) - 1)], 4)

    return {"pairs": len(spreads), "paths": [reference_path] + paths,
            "median": q(0.5), "p90": q(0.9), "max": round(spreads[-1], 4), "floor": q(0.9),
            "seconds_per_pair": seconds}


def selective(chain: Chain, margins: dict[str, list[float | None]], pairs: list[JudgePair]) -> tuple[dict, list]:
    """The verdict chain's decisions on labelled pairs: coverage and agreement of what it decided,
    per judge too, and per pair (decider name or None, margin). `margins`: decider name -> margin
    per pair."""
    decided = []
    by_judge: dict[str, dict] = {}
    hits = []
    for i, p in enumerate(pairs):
        d, m = decide(chain, {name: ms[i] for name, ms in margins.items()})
        decided.append((d.name if d else None, m))
        if d is None:
            continue
        hit = (m > 0) == (p.label == "a")
        hits.append(hit)
        row = by_judge.setdefault(d.name, {"decided": 0, "agree": 0, "threshold": d.threshold,
                                           "calibrated_agreement": d.agreement})
        row["decided"] += 1
        row["agree"] += hit
    for row in by_judge.values():
        row["agreement"] = round(row.pop("agree") / row["decided"], 4)
    n = len(pairs)
    report = {"chain": chain.describe(), "target": chain.target, "risk": chain.risk, "pairs": n,
              "coverage": round(len(hits) / n, 4) if n else 0.0,
              "agreement": round(sum(hits) / len(hits), 4) if hits else None,
              "by_judge": by_judge}
    return report, decided


def write_verdicts(path, pairs: list[JudgePair], margins: dict[str, list[float | None]], decided: list) -> None:
    """One JSONL row per pair: its index and id, the label, each judge's margin (> 0: a
    preferred), the judge that decided it (None: uncertain) and whether it agrees."""
    from ..core.files import write_jsonl_atomic

    rows = []
    for i, p in enumerate(pairs):
        judge, m = decided[i] if decided else (None, None)
        rows.append({"pair": i, "id": p.id, "label": p.label,
                     "margins": {j: (None if ms[i] is None else round(ms[i], 4)) for j, ms in margins.items()},
                     "decided_by": judge, "hit": None if judge is None else (m > 0) == (p.label == "a")})
    write_jsonl_atomic(Path(path), rows)


def slice_pairs(pairs_path: str, skip: int = 0, limit: int | None = None) -> list[JudgePair]:
    pairs = read_judge_pairs(str(pairs_path))[skip:]
    pairs = pairs[:limit] if limit else pairs
    if not pairs:
        raise InputError(f"no judge pairs in {pairs_path} after skipping {skip}")
    return pairs


def run_calibrate(
    pairs_path: str,
    *,
    targets: list[float],
    risk: float = 0.1,
    out: str | Path,
    chain: list[str] | None = None,
    skip: int = 0,
    limit: int | None = None,
    noise_pairs: int = 24,
    cache_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    models_file: str | Path | None = None,
    on_event=None,
    backends: dict[str, Backend] | None = None,
    command: str = "",
) -> CalibrationFile:
    """Calibrate a verdict chain on labelled pairs (see edgepref.judging.calibration) for each target:
    every judge's margins on every pair, its noise floor on the first `noise_pairs`, then the
    thresholds. Requests are cached (`cache_dir`, default beside `out`), so a rerun resumes.
    The file records the command, its inputs and the CPU, and no time: the noise paths' seconds
    per pair are in the returned file's `seconds`, not written, so a rerun writes the same bytes."""
    from ..stages.config import load_config
    from .pipeline import Runner
    from .settings import apply_overrides

    cfg = apply_overrides(load_config(config_file), models_file=models_file)
    recipe = cfg.judge.recipe
    pairs = slice_pairs(pairs_path, skip, limit)
    cache_dir = Path(cache_dir) if cache_dir else Path(str(out) + ".cache")
    runner = Runner(cfg, None, on_event, cache_dir=cache_dir, backends=backends)
    try:
        # default: the chain of the shipped calibration (the embedded judges), those installed
        chain = chain or [m for m in read_calibration().chain if all(runner.available(j) for j in group(m))]
        models = list(dict.fromkeys(m for name in chain for m in group(name)))
        margins = chain_margins(runner, models, pairs, recipe)
        path = {m: read_path(m, cfg, runner.host.registry) for m in models}
    finally:
        runner.close()
    floors = {m: noise_floor(cfg, cache_dir, m, pairs[:noise_pairs], recipe, margins[m][:noise_pairs],
                             path[m], on_event, backends) if noise_pairs > 0 else {"pairs": 0, "floor": 0.0}
              for m in models}
    seconds = {m: floor.pop("seconds_per_pair", {}) for m, floor in floors.items()}
    labels_a = [p.label == "a" for p in pairs]
    source = f"{pairs_path}, pairs {skip + 1}-{skip + len(pairs)}"
    cal_file = CalibrationFile(chain, recipe, risk, source=source, command=command, noise=floors,
                               inputs={"pairs_file": str(pairs_path), "skip": skip, "limit": limit,
                                       "noise_pairs": noise_pairs},
                               machine={"cpu": cpu_model(), "note": NOISE_MACHINE_NOTE}, seconds=seconds)
    # a panel ("a+b") decides with its judges' mean margin, above the larger of their noise floors
    deciders = [JudgeMargins(name, recipe, path[group(name)[0]], _mean_margins([margins[m] for m in group(name)]),
                             max(floors[m]["floor"] for m in group(name))) for name in chain]
    cal_file.calibrations = [calibrate_chain(deciders, labels_a, t, risk, source) for t in targets]
    cal_file.write(out)
    return cal_file


def run_eval(
    pairs_path: str,
    *,
    judges: list[str] | None = None,
    recipe: str | None = None,
    skip: int = 0,
    limit: int | None = None,
    json_out: str | Path | None = None,
    verdicts_out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    models_file: str | Path | None = None,
    calibration: str | Path | None = None,
    target: float | None = None,
    noise_pairs: int = 0,
    on_event=None,
    backends: dict[str, Backend] | None = None,
    self_preference_n: int = SELF_PREFERENCE_N,
) -> EvalReport:
    """Judge labelled pairs with one recipe and score it; with the pipeline's pairwise recipe,
    also the verdict chain the pipeline decides with (`selective`: what it decides and how often
    that agrees); the noise floor of each judge of the chain (measured on the first
    `noise_pairs` pairs, else as its calibration recorded it); then the self-preference check on
    the first `self_preference_n` pairs (0: skip it).

    With no judges/recipe, the pipeline's default judge, recipe and chain are used exactly.
    Requests are cached (`cache_dir`, default beside `json_out`), so an interrupted evaluation
    resumes.
    """
    import json

    from ..stages.config import load_config
    from .settings import apply_overrides
    from .pipeline import Runner

    cfg = apply_overrides(load_config(config_file), judges=judges or (), models_file=models_file)
    if calibration is not None:
        cfg.pair.calibration = str(calibration)
    if target is not None:
        cfg.pair.target_agreement = target
    recipe = recipe or default_recipe(cfg)
    if recipe not in recipe_names():
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {', '.join(recipe_names())}")
    pairs = slice_pairs(pairs_path, skip, limit)
    if cache_dir is None and json_out:
        cache_dir = Path(str(json_out) + ".cache")
    runner = Runner(cfg, None, on_event, cache_dir=cache_dir, backends=backends)
    try:
        run = judge_recipes(runner, [recipe], pairs, runner.judges, cfg.seed)[recipe]
        report = score_judged(recipe, pairs, run.judged, runner.judges, run.seconds, cfg.seed)
        report.prompt_tokens_per_pair = run.prompt_tokens_per_pair
        decided: list = []
        margins: dict[str, list[float | None]] = {}
        per_model: dict[str, list[float | None]] = {}
        if recipe == cfg.judge.recipe and cfg.pair.decide == "pairwise":
            chain = runner.chain
            per_model = chain_margins(runner, list(dict.fromkeys(m for d in chain.deciders for m in d.models)),
                                      pairs, recipe)
            margins = {d.name: _mean_margins([per_model[m] for m in d.models]) for d in chain.deciders}
            report.selective, decided = selective(chain, margins, pairs)
            report.noise_floor = {m: chain.noise[m] for m in per_model if m in chain.noise}
            margins = {**per_model, **margins}
        if self_preference_n > 0:
            report.self_preference = self_preference(
                runner, [recipe], pairs[:self_preference_n], runner.judges, cfg.seed)[recipe]
    finally:
        runner.close()
    for m in per_model if noise_pairs > 0 else ():
        report.noise_floor[m] = noise_floor(cfg, cache_dir, m, pairs[:noise_pairs], recipe, per_model[m][:noise_pairs],
                                            read_path(m, cfg, runner.host.registry), on_event, backends)
    if verdicts_out:
        write_verdicts(verdicts_out, pairs, margins or {"+".join(report.judges): [j.margin if j else None for j in run.judged]},
                       decided)
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_row(), indent=2))
    return report


def _mean_margins(columns: list[list[float | None]]) -> list[float | None]:
    return [None if None in ms else sum(ms) / len(ms) for ms in zip(*columns)]
