"""Stage 3, UltraFeedback: a judge model rates every completion of an instruction, 1 to 5.

Reads  Record.instruction, Record.completions.
Adds   Rating rows (one per completion and judge): `score` (the integer score, averaged over
       passes), `expected` (the probability-weighted score over 1..5 at the score token, averaged
       over passes), `rationale`, `positions` (where it was shown, per pass).
       Record.judge_info gets the shown orders and, for a panel, the agreement between judges.

The judge sees all responses of an instruction in one prompt and must answer one line per
response, `score - rationale` (or only the score in score-only mode). A GBNF grammar built for
exactly that many responses makes every answer parse; the strict parser double-checks.

Position bias: responses are shown in a seeded shuffled order; `both_orders` judges again in
the reversed order and averages. A small judge's ratings follow the shown position more than
the content (see the README's judge table), so they shortlist, and the verify stage decides
(verify.py): the shortlisted pair of each record gets a two-order pairwise verdict. Pairwise
mode compares every two responses that way and turns the margins into 1..5 scores.
"""

from __future__ import annotations

import itertools
import math
import random

from ..backends.base import Backend, ChatRequest, ChatResult, Sampling
from ..judging.cascade import check_chain
from ..judging.compare import compare, get_recipe, self_preference_notice
from .config import JudgeConfig
from ..judging.grammars import (
    SCORE_DIGITS, RatingParseError, build_rating_grammar, build_score_grammar, parse_rating_lines)
from ..backends.logprobs import weighted_score
from ..prompts import judge_template_name, render_prompt
from ..core.records import ErrorSink, Rating, Record, content_key
from .base import Stage, StageContext

SCORE_TOKENS = tuple(SCORE_DIGITS)  # the choices whose probabilities give the expected score


def shown_orders(record: Record, ids: list[str], cfg: JudgeConfig, seed: int) -> list[list[str]]:
    """The order(s) the responses are shown in: seeded shuffle, then its reverse if asked."""
    order = list(ids)
    if cfg.shuffle:
        random.Random(content_key("judge-order", seed, record.id)).shuffle(order)
    orders = [order]
    if cfg.both_orders and len(order) > 1:
        orders.append(order[::-1])
    return orders


def _rating_request(record: Record, texts: list[str], cfg: JudgeConfig) -> ChatRequest:
    with_rationale = cfg.mode == "rationale"
    prompt = render_prompt(
        judge_template_name(cfg.aspect),
        instruction=record.task_text(),
        responses=texts,
        with_rationale=with_rationale,
    )
    n = len(texts)
    if with_rationale:
        grammar = build_rating_grammar(n, cfg.max_rationale_chars)
        max_tokens = n * (cfg.max_rationale_chars + 8)  # a token is at least one character
    else:
        grammar = build_score_grammar(n)
        max_tokens = 2 * n + 2
    return ChatRequest(
        [{"role": "user", "content": prompt}],
        Sampling(temperature=0.0, max_tokens=max_tokens),
        grammar=grammar,
        trace_choices=SCORE_TOKENS if cfg.expected else None,
        id=record.id,
        validate=_validator(n, with_rationale),
    )


def _validator(n: int, with_rationale: bool):
    """The strict parser as a request hook: servers that ignore the grammar get a bounded retry."""

    def validate(text: str) -> str | None:
        try:
            parse_rating_lines(text, n, with_rationale=with_rationale)
        except RatingParseError as exc:
            return exc.message
        return None

    return validate


def _parse(result: ChatResult, n: int, cfg: JudgeConfig) -> list[tuple[int, float | None, str]]:
    gen = result.generations[0]
    lines = parse_rating_lines(gen.text, n, with_rationale=cfg.mode == "rationale")
    trace = dict(gen.choice_trace)
    return [
        (ln.score, weighted_score(trace[ln.offset], SCORE_TOKENS) if ln.offset in trace else None, ln.rationale)
        for ln in lines
    ]


def judge(
    records: list[Record],
    judge_model: str,
    backend: Backend,
    cfg: JudgeConfig,
    *,
    seed: int = 0,
    on_result=None,
    on_error: ErrorSink | None = None,
) -> list[Record]:
    """Add this judge's ratings to every record (in place)."""
    if cfg.mode == "pairwise":
        return _judge_pairwise(records, judge_model, backend, cfg, on_result, on_error)
    jobs: list[tuple[Record, list[str]]] = []
    reqs: list[ChatRequest] = []
    for record in records:
        if any(r.judge == judge_model and r.aspect == cfg.aspect for r in record.ratings):
            continue  # already rated by this judge (a rerun of the stage on its own output)
        ids = [c.id for c in record.completions]
        if not ids:
            continue
        orders = shown_orders(record, ids, cfg, seed)
        record.judge_info.setdefault("orders", {})[judge_model] = orders
        for order in orders:
            jobs.append((record, order))
            reqs.append(_rating_request(record, [record.completion(i).text for i in order], cfg))
    results = backend.chat(reqs, on_result=on_result)
    collected: dict[tuple[str, str], list] = {}
    failed: set[str] = set()
    for (record, order), res in zip(jobs, results):
        if not res.ok:
            failed.add(record.id)
            if on_error:
                on_error(record, "judge", f"{judge_model}: {res.error}")
            continue
        try:
            parsed = _parse(res, len(order), cfg)
        except RatingParseError as exc:  # only a cut-off answer can get here: the grammar holds
            failed.add(record.id)
            if on_error:
                on_error(record, "judge", f"{judge_model}: {exc.message}")
            continue
        for pos, (cid, (score, exp, why)) in enumerate(zip(order, parsed), start=1):
            collected.setdefault((record.id, cid), []).append((score, exp, why, pos))
    for record in records:
        if record.id in failed:
            continue
        for c in record.completions:
            passes = collected.get((record.id, c.id))
            if not passes:
                continue
            if cfg.exclude_self and c.model == judge_model:
                continue
            record.ratings.append(_merge(c.id, judge_model, cfg.aspect, passes))
    return records


def _merge(cid: str, judge_model: str, aspect: str, passes: list) -> Rating:
    exps = [p[1] for p in passes if p[1] is not None]
    return Rating(
        completion_id=cid,
        judge=judge_model,
        aspect=aspect,
        score=sum(p[0] for p in passes) / len(passes),
        expected=sum(exps) / len(exps) if len(exps) == len(passes) else None,
        rationale=" / ".join(p[2] for p in passes if p[2]),
        positions=[p[3] for p in passes],
        pass_scores=[float(p[0]) for p in passes],
        pass_expected=[p[1] for p in passes],
    )


# ---------------------------------------------------------------- pairwise


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -50 else 0.0


def bradley_terry(ids: list[str], wins: dict[tuple[str, str], float], iters: int = 200) -> dict[str, float]:
    """Strengths from soft win rates: wins[(i, j)] = P(i beats j). Minorisation-maximisation."""
    strength = {i: 1.0 for i in ids}
    for _ in range(iters):
        new = {}
        for i in ids:
            w = sum(wins.get((i, j), 0.0) for j in ids if j != i) + 1e-3
            denom = sum(1.0 / (strength[i] + strength[j]) for j in ids if j != i)
            new[i] = w / denom if denom else strength[i]
        norm = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        strength = {i: v / norm for i, v in new.items()}
    return strength


def _judge_pairwise(records: list[Record], judge_model: str, backend: Backend, cfg: JudgeConfig,
                    on_result, on_error: ErrorSink | None) -> list[Record]:
    """Compare every two completions with the pairwise recipe (edgepref.judging.compare: both orders,
    log-odds), so this judge is order-invariant by construction. P(i beats j) = sigmoid(margin);
    a score is 1 + 4 * the mean win probability against the others (Bradley-Terry strengths are
    recorded beside them). Each two-completion verdict is kept for the pair stage."""
    recipe = get_recipe(cfg.recipe)
    jobs: list[tuple[Record, str, str]] = []
    items: list[tuple[str, str, str]] = []
    for record in records:
        if any(r.judge == judge_model and r.aspect == "pairwise" for r in record.ratings):
            continue
        for i, j in itertools.combinations([c.id for c in record.completions], 2):
            jobs.append((record, i, j))
            items.append((record.task_text(), record.completion(i).text, record.completion(j).text))
    verdicts = compare(items, [recipe], backend, judge_model, on_result=on_result)[recipe.name]
    margins: dict[str, dict[tuple[str, str], float]] = {}
    failed: set[str] = set()
    for (record, i, j), v in zip(jobs, verdicts):
        if not v.ok:
            failed.add(record.id)
            if on_error:
                on_error(record, "judge", f"{judge_model}: {v.error}")
            continue
        margins.setdefault(record.id, {})[(i, j)] = v.margin
        record.judge_info.setdefault("margins", {}).setdefault(judge_model, {})[f"{i}>{j}"] = round(v.margin, 4)
    for record in records:
        if record.id in failed or record.id not in margins:
            continue
        ids = [c.id for c in record.completions]
        wins: dict[tuple[str, str], float] = {}
        for (i, j), m in margins[record.id].items():
            wins[(i, j)], wins[(j, i)] = _sigmoid(m), _sigmoid(-m)
        strength = bradley_terry(ids, wins)
        record.judge_info.setdefault("bradley_terry", {})[judge_model] = {i: round(s, 4) for i, s in strength.items()}
        for c in record.completions:
            if cfg.exclude_self and c.model == judge_model:
                continue
            mean_win = sum(wins[(c.id, o)] for o in ids if o != c.id) / max(1, len(ids) - 1)
            score = 1.0 + 4.0 * mean_win
            record.ratings.append(
                Rating(c.id, judge_model, "pairwise", score=score, expected=score,
                       rationale=f"mean win probability {mean_win:.2f}", pass_scores=[score], pass_expected=[score])
            )
    return records


# ---------------------------------------------------------------- panels


def panel_agreement(record: Record) -> float | None:
    """Share of completion pairs that every two judges order the same way (ties count half)."""
    by_judge: dict[str, dict[str, float]] = {}
    for r in record.ratings:
        value = r.expected if r.expected is not None else r.score
        by_judge.setdefault(r.judge, {})[r.completion_id] = value
    judges = sorted(by_judge)
    if len(judges) < 2:
        return None
    agree, total = 0.0, 0
    for ja, jb in itertools.combinations(judges, 2):
        common = sorted(set(by_judge[ja]) & set(by_judge[jb]))
        for x, y in itertools.combinations(common, 2):
            da = by_judge[ja][x] - by_judge[ja][y]
            db = by_judge[jb][x] - by_judge[jb][y]
            agree += 1.0 if da * db > 0 else 0.5 if da == 0 and db == 0 else 0.0
            total += 1
    return agree / total if total else None


class JudgeStage(Stage):
    """Stage 3: one unit per judge; a panel's agreement is added once all have rated."""

    kind = "judge"
    help = """Stage 3 alone: ratings and pairwise verdicts.

    UltraFeedback ratings for every completion in INPUT (records JSONL), then the verdict
    chain's pairwise check of each shortlisted pair.

    \b
    Example:
      edgepref judge evolved.jsonl --out judged.jsonl --aspect helpfulness
    """

    @classmethod
    def plan(cls, ctx: StageContext) -> list[Stage]:
        if ctx.cfg.pair.decide == "pairwise":
            check_chain(ctx.chain)  # before the ratings: a chain that decides nothing is an error
        pool_models = {m.model for m in ctx.cfg.pool}
        for j in ctx.judges:
            if j in pool_models and not (ctx.cfg.judge.exclude_self and len(ctx.judges) > 1):
                ctx.notice(self_preference_notice(j, ctx.cfg.judge.recipe), cls.kind, j)
        if ctx.cfg.judge.mode == "none":
            return []  # no ratings: the verdict chain alone decides (verify.py)
        return [cls(f"{cls.kind}-{j}", j, ctx.judge_n_ctx) for j in ctx.judges]

    @classmethod
    def after(cls, records: list[Record], ctx: StageContext) -> None:
        if len(ctx.judges) > 1:
            for r in records:
                r.judge_info["panel_agreement"] = panel_agreement(r)

    def run(self, records: list[Record], backend: Backend | None, ctx: StageContext, on_result) -> None:
        judge(records, self.model, backend, ctx.cfg.judge, seed=ctx.cfg.seed, on_result=on_result, on_error=ctx.error)
