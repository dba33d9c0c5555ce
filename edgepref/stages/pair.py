"""Stage 4: pick a chosen and a rejected completion per record from its ratings. No model.

Reads  Record.instruction, Record.completions (id, text, model), Record.ratings
       (completion_id, score, expected, rationale).
       Record.judge_info["verdict"] (decide = "pairwise"): the two-order pairwise verdict on
       the shortlisted pair, written by the verify stage (verify.py).
Writes one `Pair` per record that survives, or a drop reason:
  fewer_than_two_rated  fewer than two completions have a rating
  tie                   best and rejected have equal primary score and equal tie-break score
  small_margin          primary-score margin below `min_margin`
  identical_text        every candidate for rejected has the same text as the best one
  no_verdict            (pairwise) the pairwise check of the shortlist failed
  uncertain             (pairwise) no judge of the verdict chain was sure enough (its calibrated
                        threshold, or a fixed `min_confidence`)

How chosen and rejected are decided (`decide`):
  pairwise  the default. The UltraFeedback ranking shortlists two completions (the best and,
            by `strategy`, the worst or a random other with different text); a two-order
            pairwise judge (edgepref.judging.compare) decides which of them is chosen; the chain of
            judges (edgepref.judging.cascade) says whether any was sure, else the pair is uncertain. Score ties
            and small score margins are not drop reasons here: the verdict decides.
  ratings   UltraFeedback scores alone decide: best against worst, `min_margin` apart.
An emitted pair never has chosen text == rejected text (distilabel's max/min without a tie
check can emit that; a DPO loss on such a pair is zero signal at best, noise at worst).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from ..core.records import Completion, Pair, Rating, Record, content_key, normalise_text
from .base import Stage, StageContext
from .config import PairConfig

# Means of floats are compared with a little slack so a margin of exactly 1.0 computed as
# 0.9999999999999996 is not dropped as small.
_EPS = 1e-9


@dataclass
class PairReport:
    pairs: list[Pair] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> number of records
    drop_reasons: dict[str, str] = field(default_factory=dict)  # record id -> why it has no pair
    margins: list[float] = field(default_factory=list)  # one per emitted pair
    confidences: list[float] = field(default_factory=list)  # pairwise margins of emitted pairs
    unrated_completions: int = 0  # completions with no rating at all, left out of ranking


@dataclass(frozen=True)
class RankedCompletion:
    """A rated completion with its mean scores over all its ratings (judges, passes, aspects)."""

    completion: Completion
    primary: float
    secondary: float  # the other score, used only to break ties
    rationale: str


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def rank_completions(record: Record, score: str = "score") -> list[RankedCompletion]:
    """The rated completions of `record`, best first. Ties keep completion order (stable sort)."""
    by_completion: dict[str, list[Rating]] = defaultdict(list)
    for rating in record.ratings:
        by_completion[rating.completion_id].append(rating)
    scored = []
    for completion in record.completions:
        ratings = by_completion.get(completion.id)
        if not ratings:
            continue
        plain = _mean([r.score for r in ratings])
        expected = _mean([r.score if r.expected is None else r.expected for r in ratings])
        primary, secondary = (plain, expected) if score == "score" else (expected, plain)
        rationale = " | ".join(r.rationale for r in ratings if r.rationale)
        scored.append(RankedCompletion(completion, primary, secondary, rationale))
    scored.sort(key=lambda s: (s.primary, s.secondary), reverse=True)
    return scored


def _reject_reason(
    best: RankedCompletion, other: RankedCompletion, min_margin: float, by_scores: bool = True
) -> str | None:
    """Why `other` cannot be the rejected side against `best`, or None if it can."""
    if normalise_text(best.completion.text) == normalise_text(other.completion.text):
        return "identical_text"
    if not by_scores:
        return None
    if best.primary == other.primary and best.secondary == other.secondary:
        return "tie"
    if best.primary - other.primary + _EPS < min_margin:
        return "small_margin"
    return None


def _pick_rejected(
    ranked: list[RankedCompletion], cfg: PairConfig, record_id: str
) -> RankedCompletion | str:
    """The rejected completion against ranked[0], or the reason there is none."""
    best, others = ranked[0], ranked[1:]
    by_scores = cfg.decide == "ratings"
    reasons = [(other, _reject_reason(best, other, cfg.min_margin, by_scores)) for other in others]
    eligible = [other for other, reason in reasons if reason is None]
    if not eligible:
        # The worst candidate with different text names the reason: everyone above it scores
        # at least as high, so fails the same tie or margin test.
        failed = [reason for _, reason in reasons if reason and reason != "identical_text"]
        return failed[-1] if failed else "identical_text"
    if cfg.strategy == "best-worst":
        return eligible[-1]
    # Seeded per record from content, not from a shared generator, so a pair does not depend
    # on which other records ran before it (resume, filtering, parallel runs).
    rng = random.Random(int(content_key("pair", cfg.seed, record_id), 16))
    return rng.choice(eligible)


def _formatted(
    cfg: PairConfig, instruction: str, chosen: str, rejected: str
) -> tuple[object, object, object]:
    """prompt, chosen, rejected in TRL's standard (strings) or conversational (messages) form."""
    if cfg.format == "standard":
        return instruction, chosen, rejected
    prompt = [{"role": "user", "content": instruction}]
    if cfg.system_prompt:
        prompt.insert(0, {"role": "system", "content": cfg.system_prompt})
    return (
        prompt,
        [{"role": "assistant", "content": chosen}],
        [{"role": "assistant", "content": rejected}],
    )


def uncertain(verdict: dict, margin: float, cfg: PairConfig) -> bool:
    """Whether a pairwise verdict is too weak to decide a pair: no judge of the chain decided it
    (calibrated thresholds), or its |margin| is under a fixed `min_confidence`."""
    if cfg.min_confidence is None:
        return not verdict.get("decided_by")
    return abs(margin) < cfg.min_confidence


def shortlist(record: Record, cfg: PairConfig) -> tuple[RankedCompletion, RankedCompletion] | str:
    """The two completions the ratings propose (best, then rejected), or the reason there are none."""
    ranked = rank_completions(record, cfg.score)
    if len(ranked) < 2:
        return "fewer_than_two_rated"
    picked = _pick_rejected(ranked, cfg, record.id)
    if isinstance(picked, str):
        return picked
    return ranked[0], picked


def pick_pair(record: Record, cfg: PairConfig) -> tuple[Pair | None, str | None]:
    """The preference pair for `record` and None, or None and the reason it was dropped."""
    proposed = shortlist(record, cfg)
    if isinstance(proposed, str):
        return None, proposed
    best, worst = proposed
    confidence, decided_by, agreement = None, "", None
    if cfg.decide == "pairwise":
        verdict = record.judge_info.get("verdict")
        ids = (best.completion.id, worst.completion.id)
        if not verdict or verdict.get("margin") is None or {verdict["x"], verdict["y"]} != set(ids):
            return None, "no_verdict"
        margin = verdict["margin"] if verdict["x"] == ids[0] else -verdict["margin"]
        if uncertain(verdict, margin, cfg):
            return None, "uncertain"
        if margin < 0:
            best, worst, margin = worst, best, -margin
        # a fixed threshold decides with the last margin asked, whoever gave it
        judges = verdict["decided_by"] if cfg.min_confidence is None else verdict.get("asked") or verdict["decided_by"]
        confidence, decided_by = margin, "+".join(judges)
        agreement = verdict.get("agreement") if cfg.min_confidence is None else None
    prompt, chosen, rejected = _formatted(
        cfg, record.instruction, best.completion.text, worst.completion.text
    )
    pair = Pair(
        id=record.id,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=best.primary,
        score_rejected=worst.primary,
        margin=best.primary - worst.primary,
        model_chosen=best.completion.model,
        model_rejected=worst.completion.model,
        rationale_chosen=best.rationale,
        rationale_rejected=worst.rationale,
        completion_chosen=best.completion.id,
        completion_rejected=worst.completion.id,
        confidence=confidence,
        decided_by=decided_by,
        agreement=agreement,
    )
    return pair, None


def pair_records(records: Iterable[Record], cfg: PairConfig) -> PairReport:
    """Pairs for every record that yields one, with counted drop reasons."""
    report = PairReport()
    for record in records:
        rated = {r.completion_id for r in record.ratings}
        report.unrated_completions += sum(1 for c in record.completions if c.id not in rated)
        pair, reason = pick_pair(record, cfg)
        if pair is None:
            report.dropped[reason] += 1
            report.drop_reasons[record.id] = reason
        else:
            report.pairs.append(pair)
            report.margins.append(pair.margin)
            if pair.confidence is not None:
                report.confidences.append(pair.confidence)
    return report


class PairStage(Stage):
    """Stage 4, one unit and no model: the run's pairs, in `report`."""

    kind = "pair"
    # no `help`: the `pair` command needs no model options, cli/pipeline.py declares it

    def __init__(self):
        super().__init__(self.kind, None)
        self.report = PairReport()

    @classmethod
    def plan(cls, ctx: StageContext) -> list[Stage]:
        return [cls()]

    def run(self, records: list[Record], backend, ctx: StageContext, on_result) -> None:
        self.report = pair_records(records, ctx.cfg.pair)
        ctx.stats(self.name).dropped.update(self.report.dropped)
