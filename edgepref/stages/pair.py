"""Stage 4: pick chosen and rejected completions per record. No model.

Reads  Record.instruction, Record.completions (id, text, model), Record.ratings
       (completion_id, score, expected, rationale) when the judge stage rated.
       Record.judge_info["verdicts"] (decide = "pairwise"): the two-order pairwise verdicts on
       the record's candidate pairs, written by the verify stage (verify.py).
Writes up to `pairs_per_instruction` `Pair`s per record (ids: the record's id, then "<id>-2",
"<id>-3", ...), or a drop reason:
  fewer_than_two_rated        fewer than two completions have a rating
  fewer_than_two_completions  (unrated records) fewer than two completions
  tie                   best and rejected have equal primary score and equal tie-break score
  small_margin          primary-score margin below `min_margin`
  identical_text        every candidate for rejected has the same text as the best one
  no_verdict            (pairwise) every pairwise check of the candidates failed
  uncertain             (pairwise) no judge of the verdict chain was sure enough of any candidate
                        pair (its calibrated threshold, or a fixed `min_confidence`)

How chosen and rejected are decided (`decide`):
  pairwise  the default. `candidate_pairs` lists the pairs the verdict chain may check (at most
            `candidates`): by the UltraFeedback ratings' separation when the run rated, else in a
            fixed order. The verify stage asks each judge of the chain (edgepref.judging.cascade)
            about them in that order until one is decided; the decided pairs are written surest
            first, skipping one that would contradict a pair already written (a cycle). Score
            ties and small score margins are not drop reasons here: the verdict decides.
  ratings   UltraFeedback scores alone decide: best against worst (or a random lower one, by
            `strategy`), `min_margin` apart. One pair per record.
An emitted pair never has chosen text == rejected text (distilabel's max/min without a tie
check can emit that; a DPO loss on such a pair is zero signal at best, noise at worst).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from ..core.errors import ConfigError
from ..core.records import Completion, Pair, Rating, Record, content_key, normalise_text
from .base import Stage, StageContext
from .config import PairConfig

# Means of floats are compared with a little slack so a margin of exactly 1.0 computed as
# 0.9999999999999996 is not dropped as small.
_EPS = 1e-9


@dataclass
class PairReport:
    pairs: list[Pair] = field(default_factory=list)
    paired: int = 0  # records with at least one pair (several pairs per record are possible)
    dropped: Counter = field(default_factory=Counter)  # reason -> number of records
    drop_reasons: dict[str, str] = field(default_factory=dict)  # record id -> why it has no pair
    margins: list[float] = field(default_factory=list)  # one per emitted pair
    confidences: list[float] = field(default_factory=list)  # pairwise margins of emitted pairs
    unrated_completions: int = 0  # completions with no rating at all, left out of ranking


@dataclass(frozen=True)
class RankedCompletion:
    """A rated completion with its mean scores over all its ratings (judges, passes, aspects)."""

    completion: Completion
    primary: float | None  # None: not rated (judge mode "none")
    secondary: float | None  # the other score, used only to break ties
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


def pair_layout(records: Iterable[Record], cfg: PairConfig) -> str:
    """How this run writes its pairs: "standard" (strings) or "conversational" (message lists).
    "auto" is conversational when any record is a conversation, so that one file never mixes the
    two (TRL, and `datasets`, read one layout per file). A conversation's earlier turns have no
    place in a string prompt, and flattening them would need the trained model's chat template,
    which is not known here: "standard" with a conversation is refused."""
    conversations = [r for r in records if r.is_conversation]
    if cfg.format == "auto":
        return "conversational" if conversations else "standard"
    if cfg.format == "standard" and conversations:
        raise ConfigError(
            f"--pair-format standard cannot hold a conversation ({len(conversations)} input rows have earlier "
            f"turns or a system prompt of their own, the first: {conversations[0].id})",
            "use --pair-format conversational (or auto, the default): TRL's conversational format keeps the "
            "turns as messages in `prompt`",
        )
    return cfg.format


def _formatted(
    cfg: PairConfig, layout: str, record: Record, chosen: str, rejected: str
) -> tuple[object, object, object]:
    """prompt, chosen, rejected in TRL's standard (strings) or conversational (messages) form;
    a conversational prompt is the row's system prompt (else `cfg.system_prompt`), its earlier
    turns and the instruction."""
    if layout == "standard":
        return record.instruction, chosen, rejected
    return (
        record.chat(cfg.system_prompt),
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


def candidate_pairs(record: Record, cfg: PairConfig) -> list[tuple[str, str]] | str:
    """The completion pairs (x, y) the verdict chain may check for `record`, in the order it checks
    them, at most `cfg.candidates`; or the reason there are none. Two completions with the same
    text are never a candidate.

    Rated records (the judge stage ran): the rated completions, the pair the ratings separate most
    first, x the better rated (the ratings' best-worst pair leads, as `shortlist` proposes it).
    Unrated records (judge mode "none"): every completion, pairs of two different pool members
    first (their answers differ most), then each answer against its own rewrite; within each, in
    completion order. No order looks at lengths or at the texts' positions in a prompt."""
    if record.ratings:
        ranked = rank_completions(record, cfg.score)
        if len(ranked) < 2:
            return "fewer_than_two_rated"
        ids = [r.completion.id for r in ranked]
        gap = {r.completion.id: (r.primary, r.secondary) for r in ranked}
        pairs = [(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))]
        # the largest primary gap first; equal gaps keep the ranking's order (stable sort)
        pairs.sort(key=lambda p: -(gap[p[0]][0] - gap[p[1]][0]))
    else:
        if len(record.completions) < 2:
            return "fewer_than_two_completions"
        cs = record.completions
        pairs = [(cs[i].id, cs[j].id) for i in range(len(cs)) for j in range(i + 1, len(cs))]
        member = {c.id: c.member for c in cs}
        pairs.sort(key=lambda p: member[p[0]] == member[p[1]])
    texts = {c.id: normalise_text(c.text) for c in record.completions}
    distinct = [p for p in pairs if texts[p[0]] != texts[p[1]]]
    if not distinct:
        return "identical_text"
    return distinct[: cfg.candidates]


def record_verdicts(record: Record) -> list[dict]:
    """The record's pairwise verdicts (verify.py), one per candidate pair checked, in check order.
    Records judged before candidates existed hold one, under "verdict"."""
    verdicts = record.judge_info.get("verdicts")
    if verdicts is None and record.judge_info.get("verdict"):
        return [record.judge_info["verdict"]]
    return verdicts or []


def _creates_cycle(edges: list[tuple[str, str]], better: str, worse: str) -> bool:
    """Whether `worse` already beats `better` through the written pairs (better -> worse edges)."""
    stack, seen = [worse], set()
    while stack:
        node = stack.pop()
        if node == better:
            return True
        seen.add(node)
        stack.extend(w for b, w in edges if b == node and w not in seen)
    return False


def _decided(record: Record, cfg: PairConfig) -> list[tuple[dict, float]] | str:
    """The record's decided verdicts, surest first, each with its margin oriented x over y; or
    the drop reason when none is decided. Surest: decided by an earlier judge of the chain (the
    cheaper judges decide only above their noise floor or calibrated threshold), then the larger
    |margin| over that judge's threshold."""
    candidates = candidate_pairs(record, cfg)
    if isinstance(candidates, str):
        return candidates
    wanted = set(candidates) | {(y, x) for x, y in candidates}
    verdicts = [v for v in record_verdicts(record) if (v.get("x"), v.get("y")) in wanted]
    asked = [v for v in verdicts if v.get("margin") is not None]
    if not asked:
        return "no_verdict"
    decided = [(v, v["margin"]) for v in asked if not uncertain(v, v["margin"], cfg)]
    if not decided:
        return "uncertain"
    decided.sort(key=lambda vm: (vm[0].get("decided_at", 0), -abs(vm[1]) / (vm[0].get("threshold") or 1.0)))
    return decided


def _pair_row(record: Record, cfg: PairConfig, layout: str, k: int, best: RankedCompletion, worst: RankedCompletion,
              confidence=None, decided_by: str = "", agreement=None) -> Pair:
    prompt, chosen, rejected = _formatted(cfg, layout, record, best.completion.text, worst.completion.text)
    scored = best.primary is not None and worst.primary is not None
    return Pair(
        id=record.id if k == 0 else f"{record.id}-{k + 1}",
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=best.primary,
        score_rejected=worst.primary,
        margin=best.primary - worst.primary if scored else None,
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


def pick_pairs(record: Record, cfg: PairConfig, layout: str | None = None) -> tuple[list[Pair], str | None]:
    """The preference pairs for `record` (at most `pairs_per_instruction`, surest first) and None,
    or [] and the reason it has none. `layout`: the run's (pair_layout), else this record's."""
    layout = layout or pair_layout([record], cfg)
    if cfg.decide != "pairwise":
        proposed = shortlist(record, cfg)
        if isinstance(proposed, str):
            return [], proposed
        return [_pair_row(record, cfg, layout, 0, *proposed)], None
    decided = _decided(record, cfg)
    if isinstance(decided, str):
        return [], decided
    ranked = {r.completion.id: r for r in rank_completions(record, cfg.score)}
    pairs: list[Pair] = []
    edges: list[tuple[str, str]] = []
    for verdict, margin in decided:
        better, worse = (verdict["x"], verdict["y"]) if margin > 0 else (verdict["y"], verdict["x"])
        if _creates_cycle(edges, better, worse):
            continue  # it contradicts a surer pair already written
        edges.append((better, worse))
        # a fixed threshold decides with the last margin asked, whoever gave it
        judges = verdict["decided_by"] if cfg.min_confidence is None else verdict.get("asked") or verdict["decided_by"]
        agreement = verdict.get("agreement") if cfg.min_confidence is None else None
        sides = [ranked.get(c) or RankedCompletion(record.completion(c), None, None, "") for c in (better, worse)]
        pairs.append(_pair_row(record, cfg, layout, len(pairs), *sides, confidence=abs(margin),
                               decided_by="+".join(judges), agreement=agreement))
        if len(pairs) == cfg.pairs_wanted:
            break
    return pairs, None


def pick_pair(record: Record, cfg: PairConfig) -> tuple[Pair | None, str | None]:
    """The surest preference pair for `record` and None, or None and the reason it was dropped."""
    pairs, reason = pick_pairs(record, cfg)
    return (pairs[0] if pairs else None), reason


def pair_records(records: Iterable[Record], cfg: PairConfig) -> PairReport:
    """Pairs for every record that yields one, with counted drop reasons."""
    records = list(records)
    layout = pair_layout(records, cfg)
    report = PairReport()
    for record in records:
        rated = {r.completion_id for r in record.ratings}
        report.unrated_completions += sum(1 for c in record.completions if c.id not in rated)
        pairs, reason = pick_pairs(record, cfg, layout)
        if not pairs:
            report.dropped[reason] += 1
            report.drop_reasons[record.id] = reason
        report.paired += bool(pairs)
        for pair in pairs:
            report.pairs.append(pair)
            if pair.margin is not None:
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
