"""The summary of a run: what `edgepref run` prints and run.json keeps, and whether the run
failed (`run_failures`): a stage unit whose every request failed, or no pair at all because
every instruction lost its pair to failed requests. No pair because the judges were unsure is
a result, not a failure."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..stages.evolve import EvolveStage
from ..data.inputs import InputBatch
from ..stages.pair import rank_completions
from ..core.records import Record


@dataclass
class RunSummary:
    out_dir: str | None
    instructions: int = 0
    input_problems: int = 0
    duplicates: int = 0
    completions_per_model: dict = field(default_factory=dict)
    evolutions_kept: int = 0
    evolutions_dropped: dict = field(default_factory=dict)
    ratings: int = 0
    pairs: int = 0
    instructions_paired: int = 0  # instructions with at least one written pair
    pairs_dropped: dict = field(default_factory=dict)
    mean_margin: float | None = None
    mean_confidence: float | None = None  # mean pairwise margin of written pairs (decide = pairwise)
    decided_by: dict = field(default_factory=dict)  # judge(s) -> written pairs they decided
    # the verdict chain: "judge (|margin| >= t, calibrated agreement a) -> ..."; what it promises
    # of the written pairs (calibrated chains): target, risk, and the expected agreement (the mean
    # of each pair's decider's calibrated agreement); coverage: instructions with a pair / instructions
    # whose candidate pairs were checked
    verdict_chain: str = ""
    target_agreement: float | None = None
    risk: float | None = None
    expected_agreement: float | None = None
    coverage: float | None = None
    score_histogram: dict = field(default_factory=dict)  # model -> {"1": n, ..., "5": n}
    request_errors: int = 0
    wall_seconds: float = 0.0
    completion_tokens: int = 0
    tokens_per_second: float = 0.0
    cached_requests: int = 0
    # rewrites that ran as follow-up turns of their completion requests (evolve.continuation)
    continued_requests: int = 0
    # stage unit ("complete-<member>", "evolve", "judge-<model>", "verify-<model>", "pair") ->
    # its own counters (stage.StageStats.as_dict): seconds, tokens generated (continued: as
    # follow-ups in an earlier unit), prompt tokens decoded and reused, requests replayed, drops
    stages: dict = field(default_factory=dict)
    judges: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    shard: list | None = None  # [index, count] when the run was one shard of its input
    endpoints: dict = field(default_factory=dict)  # model -> per-endpoint request counts
    failures: list = field(default_factory=list)  # why the run failed (run_failures); empty: it did not
    # a person's review of DIR's pairs (edgepref review), applied to the pairs just written:
    # kept, swapped, dropped, skipped, unreviewed, no_longer_matching (data/review.review_counts)
    review: dict | None = None


@dataclass
class UnitOutcome:
    """A stage unit's requests: answered (fresh or replayed) and failed, with the first failure."""

    answered: int = 0
    failed: int = 0
    first_error: str = ""

    def fail(self, message: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or message


# pair.py's drop reasons that a failed request causes (no ratings, no verdict); the others
# (uncertain, tie, small_margin, identical_text) are what the judges and the data said
LOST_TO_ERRORS = ("fewer_than_two_rated", "fewer_than_two_completions", "no_verdict")


def excerpt(text: str, limit: int = 160) -> str:
    """A server's answer shortened for one line: markup removed, whitespace collapsed, cut."""
    flat = " ".join(re.sub(r"<[^<>]*>", " ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def run_failures(report, errors: list[dict], outcomes: dict[str, UnitOutcome]) -> list[str]:
    """Why a run failed: each stage unit whose every request failed (with the first error: the
    server's status and an excerpt of its answer), and no pair written when every instruction
    without one lost it to a failed request. [] when the run did not fail."""
    out = [f"every request of {name} failed ({o.failed}): {excerpt(o.first_error)}"
           for name, o in outcomes.items() if o.failed and not o.answered]
    if report is not None and not report.pairs and report.drop_reasons:
        first_error: dict[str, str] = {}
        for e in errors:
            if e.get("stage") != "input" and e.get("id") is not None:
                first_error.setdefault(e["id"], e["reason"])
        lost = [rid for rid, why in report.drop_reasons.items() if why in LOST_TO_ERRORS and rid in first_error]
        if len(lost) == len(report.drop_reasons):
            out.append(f"no pair written: each of the {len(lost)} instructions lost its pair to failed requests "
                       f"(the first: {excerpt(first_error[lost[0]])})")
    return out


def completions_per_model(records: list[Record]) -> dict[str, int]:
    """Candidates per "model (source)": pool completions and rewrites counted apart."""
    return dict(Counter(f"{c.model} ({c.source})" for r in records for c in r.completions))


def summarize(records: list[Record], report, batch: InputBatch | None, runner) -> RunSummary:
    """The counts of a run; `runner` is the pipeline.Runner that made it: its stage units'
    counters (`units`), its errors, judges, chain, servers and start time."""
    s = RunSummary(out_dir=str(runner.out_dir) if runner.out_dir else None)
    s.instructions = len(records)
    if batch is not None:
        s.input_problems, s.duplicates = len(batch.problems), batch.duplicates
        s.shard = list(batch.shard) if batch.shard else None
    hist: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        s.evolutions_kept += sum(1 for c in r.completions if c.source == "evol")
        s.ratings += len(r.ratings)
        models = {c.id: c.model for c in r.completions}
        for rank in rank_completions(r, runner.cfg.pair.score):  # none when nothing was rated
            hist[models[rank.completion.id]][str(int(round(rank.primary)))] += 1
    s.completions_per_model = completions_per_model(records)
    evolve = runner.units.get(EvolveStage.kind)
    s.evolutions_dropped = dict(evolve.dropped) if evolve else {}
    s.score_histogram = {m: {str(k): h.get(str(k), 0) for k in range(1, 6)} for m, h in hist.items()}
    if report is not None:
        s.pairs = len(report.pairs)
        s.instructions_paired = report.paired
        s.pairs_dropped = dict(report.dropped)
        s.mean_margin = sum(report.margins) / len(report.margins) if report.margins else None
        if report.confidences:
            s.mean_confidence = sum(report.confidences) / len(report.confidences)
        s.decided_by = dict(Counter(p.decided_by for p in report.pairs if p.decided_by))
        if runner.cfg.pair.decide == "pairwise":
            chain = runner.chain
            s.verdict_chain, s.target_agreement, s.risk = chain.describe(), chain.target, chain.risk
            checked = report.paired + report.dropped.get("uncertain", 0) + report.dropped.get("no_verdict", 0)
            s.coverage = round(report.paired / checked, 4) if checked else None
            calibrated = [p.agreement for p in report.pairs if p.agreement is not None]
            if calibrated and len(calibrated) == s.pairs:
                s.expected_agreement = round(sum(calibrated) / len(calibrated), 4)
    s.request_errors = sum(1 for e in runner.errors if e["stage"] != "input")
    s.failures = run_failures(report, runner.errors, runner.outcomes)
    s.wall_seconds = time.perf_counter() - runner.started
    units = runner.units.values()
    s.completion_tokens = sum(u.completion_tokens for u in units)
    s.tokens_per_second = s.completion_tokens / s.wall_seconds if s.wall_seconds else 0.0
    s.cached_requests = sum(u.cached_requests for u in units)
    s.continued_requests = sum(u.continued_requests for u in units)
    s.stages = {name: u.as_dict() for name, u in runner.units.items()}
    s.judges = list(runner.judges)
    s.endpoints = {name: be.endpoint_stats() for name, be in runner.host.servers.items()}
    return s
