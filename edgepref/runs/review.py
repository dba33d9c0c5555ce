"""A person reviews a run's pairs: the session the terminal screen drives, decisions made
elsewhere, and the figures of a review (the library behind `edgepref review`).

    session = ReviewSession("out/", reviewer="ana", sample=30, seed=0)
    session.decide("swap"); session.undo(); session.back(); session.close()
    apply_decisions("out/", "decisions.jsonl")     # made in a notebook, same schema
    review_summary("out/")                          # counts and each judge's agreement

Every decision is appended to DIR/review.jsonl the moment it is made (data/review.py has the
schema); closing the session, applying decisions and every pipeline run on DIR write
DIR/pairs.reviewed.jsonl again. Nothing here edits pairs.jsonl.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checks import check_value
from ..core.errors import InputError
from ..core.records import Completion, Record
from ..data.review import (Decision, Matched, ReviewLog, VERDICTS, check_pairs_reviewable, describe_counts,
                           read_decisions, review_counts, review_order, select, texts_hash)
from ..data.rundir import RunDir
from ..judging.review_agreement import Agreement, agreement_table


def default_reviewer() -> str:
    """$USER (or the login name), else "reviewer"."""
    try:
        return os.environ.get("USER") or getpass.getuser() or "reviewer"
    except Exception:  # no user database entry (some containers)
        return "reviewer"


def _review_dir(path: str | Path) -> RunDir:
    if not isinstance(path, (str, Path)):
        raise InputError(f"the run directory must be a path, not {type(path).__name__}")
    run = RunDir(path)
    if not run.path.is_dir():
        raise InputError(f"{run.path} is not a directory", "pass the --out directory of a run")
    if not run.pairs_file.is_file():
        raise InputError(f"{run.path} has no {run.pairs_file.name}",
                         f"run the pipeline first: edgepref run INPUT --out {run.path}")
    return run


@dataclass
class Side:
    """One response of the pair on screen, with who wrote it."""

    text: object
    model: str
    completion: str
    rewritten: bool
    criterion: str | None = None
    member: str = ""  # the pool member whose answer a rewrite started from
    score: float | None = None
    rationale: str = ""


@dataclass
class ReviewSummary:
    counts: dict
    agreement: list[Agreement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # lines of review.jsonl / pairs.jsonl left out

    def describe(self) -> str:
        return describe_counts(self.counts)


class ReviewSession:
    """The pairs to review in order, where the person is, and the log their decisions go to.

    Order: least sure first, or with `sample` a seeded random draw of that many pairs (the
    figures of a sample are unbiased); `decider`, `model` and `max_margin` filter first. The
    session starts at the first pair in that order without a standing decision (a skip counts
    as one), so the same command resumes where the person left off."""

    def __init__(self, run_dir: str | Path, *, reviewer: str | None = None, sample: int | None = None,
                 seed: int = 0, decider: str | None = None, model: str | None = None,
                 max_margin: float | None = None):
        for name, value, hint, limits in (("reviewer", reviewer, str | None, None),
                                          ("sample", sample, int | None, {"ge": 1}), ("seed", seed, int, None),
                                          ("decider", decider, str | None, None), ("model", model, str | None, None),
                                          ("max_margin", max_margin, float | None, None)):
            check_value(name, value, hint, limits)
        self.run = _review_dir(run_dir)
        self.pairs, self.matched, self.problems = self.run.read_review()
        check_pairs_reviewable(self.pairs, self.run.pairs_file)
        chosen = select(self.pairs, decider=decider, model=model, max_margin=max_margin)
        self.queue = review_order(chosen, sample, seed)
        self.sampled = sample is not None
        self.log = ReviewLog(self.run.review_file, reviewer or default_reviewer(),
                             "sample" if self.sampled else "least-sure", seed if self.sampled else None)
        self._records = self._read_records()
        # what this session decided, for undo: (queue position, the pair's decision before it)
        self._done_here: list[tuple[int, Decision | None]] = []
        self.pos = next((i for i, p in enumerate(self.queue) if p["id"] not in self.matched.applied), len(self.queue))

    def _read_records(self) -> dict[str, Record]:
        # records only add who rewrote what: a pairs file without them (a copy) is reviewed alone
        if not self.run.records_file.is_file():
            return {}
        records, _ = self.run.read_records()  # a damaged records file only costs the "rewritten" detail
        return {r.id: r for r in records}

    # ------------------------------------------------------------ what is on screen

    @property
    def finished(self) -> bool:
        return self.pos >= len(self.queue)

    def current(self) -> dict | None:
        return None if self.finished else self.queue[self.pos]

    def decision_for(self, pair: dict) -> str | None:
        d = self.matched.applied.get(pair["id"])
        return d.decision if d else None

    def sides(self, pair: dict) -> tuple[Side, Side]:
        return self._side(pair, "chosen"), self._side(pair, "rejected")

    def _side(self, pair: dict, which: str) -> Side:
        cid = str(pair.get(f"completion_{which}") or "")
        completion = self._completion(pair["id"], cid)
        rewritten = completion.source == "evol" if completion else "+evol" in cid
        return Side(pair.get(which), str(pair.get(f"model_{which}") or "?"), cid, rewritten,
                    completion.criterion if completion else None, completion.member if completion else "",
                    pair.get(f"score_{which}"), str(pair.get(f"rationale_{which}") or ""))

    def _completion(self, pair_id: str, completion_id: str) -> Completion | None:
        # a record's pairs are "<id>", "<id>-2", "<id>-3"
        record = self._records.get(pair_id) or self._records.get(pair_id.rsplit("-", 1)[0])
        if record is None:
            return None
        return next((c for c in record.completions if c.id == completion_id), None)

    def counts(self) -> dict:
        return review_counts(self.pairs, self.matched)

    # ------------------------------------------------------------ what the person does

    def decide(self, decision: str) -> Decision:
        """keep, swap, drop or skip the pair on screen; appended to review.jsonl at once."""
        if decision not in (*VERDICTS, "skip"):
            raise ValueError(f"decision must be keep, swap, drop or skip, not {decision!r}")
        pair = self.current()
        if pair is None:
            raise IndexError("every pair of this review has been shown")
        d = self.log.record(pair, decision)
        self._done_here.append((self.pos, self.matched.applied.get(pair["id"])))
        self.matched.applied[pair["id"]] = d
        self.pos += 1
        return d

    def undo(self) -> bool:
        """Take back the last decision of this session and show its pair again: the pair's
        decision before it holds again (written anew), or, when it had none, an undo line."""
        if not self._done_here:
            return False
        pos, before = self._done_here.pop()
        pair = self.queue[pos]
        if before is None:
            self.log.record(pair, "undo")
            self.matched.applied.pop(pair["id"], None)
        else:
            self.matched.applied[pair["id"]] = self.log.record(pair, before.decision)
        self.pos = pos
        return True

    def back(self) -> bool:
        """Show the previous pair (its decision can be changed by deciding again)."""
        if self.pos == 0:
            return False
        self.pos -= 1
        return True

    def forward(self) -> bool:
        """Show the next pair without deciding this one."""
        if self.finished:
            return False
        self.pos += 1
        return True

    def close(self) -> ReviewSummary:
        """Close the log and write pairs.reviewed.jsonl; the review's figures."""
        self.log.close()
        return refresh_reviewed(self.run.path)


def apply_decisions(run_dir: str | Path, decisions_file: str | Path, reviewer: str | None = None) -> tuple[ReviewSummary, dict]:
    """Append the decisions of `decisions_file` (the schema of review.jsonl, made elsewhere) to
    DIR/review.jsonl, then write pairs.reviewed.jsonl. A line that is not a decision, names no
    pair of DIR or was made on other texts is reported and left out; `reviewer` fills in a line
    that names none. Returns the summary and what happened to the lines."""
    run = _review_dir(run_dir)
    if not isinstance(decisions_file, (str, Path)) or not Path(decisions_file).is_file():
        raise InputError(f"--decisions {decisions_file} is not a file",
                         "pass a JSONL file of decisions (see `edgepref review --help` for its fields)")
    pairs, _ = run.read_pairs()
    by_id = {p.get("id"): p for p in pairs}
    decisions, problems = read_decisions(Path(decisions_file))
    outcome = {"applied": 0, "unknown_pair": 0, "other_texts": 0, "bad_lines": len(problems)}
    from ..core.files import JsonlAppender

    with JsonlAppender(run.review_file) as out:
        for d in decisions:
            pair = by_id.get(d.pair)
            if pair is None:
                outcome["unknown_pair"] += 1
                problems.append(f"decision on {d.pair!r}: no such pair in {run.pairs_file} (left out)")
                continue
            if texts_hash(pair) != d.texts:
                outcome["other_texts"] += 1
                problems.append(f"decision on {d.pair!r}: made on other texts than the pair now holds (left out)")
                continue
            row = d.to_row()
            row["reviewer"] = d.reviewer or reviewer or default_reviewer()
            out.append(row)
            outcome["applied"] += 1
    summary = refresh_reviewed(run.path)
    summary.problems = problems + summary.problems
    return summary, outcome


def refresh_reviewed(run_dir: str | Path) -> ReviewSummary:
    """pairs.reviewed.jsonl from pairs.jsonl and review.jsonl, and the review's figures."""
    run = _review_dir(run_dir)
    return _summary(*(run.refresh_review() or run.read_review()))


def review_summary(run_dir: str | Path) -> ReviewSummary:
    """The counts and each judge's agreement with the person, without writing anything."""
    return _summary(*_review_dir(run_dir).read_review())


def _summary(pairs: list[dict], matched: Matched, problems: list[str]) -> ReviewSummary:
    return ReviewSummary(review_counts(pairs, matched), agreement_table(pairs, matched.applied), problems)


def labelled_pairs(run_dir: str | Path) -> list[dict]:
    """The reviewed pairs as labelled judge pairs (instruction, response_a, response_b, label),
    what `edgepref calibrate` and `eval-judge` read: keep says chosen is better, swap says
    rejected is; drops and skips have no label and are left out. Which response is a is a fixed
    coin per pair (its texts' hash), so the labels are balanced as the judge sees them. A
    conversation's earlier turns go before its instruction, one "role: text" paragraph each."""
    run = _review_dir(run_dir)
    pairs, matched, _ = run.read_review()
    rows = []
    for pair in pairs:
        d = matched.applied.get(pair.get("id"))
        if d is None or d.decision not in ("keep", "swap"):
            continue
        better, worse = (pair["chosen"], pair["rejected"]) if d.decision == "keep" else (pair["rejected"], pair["chosen"])
        better_first = int(d.texts, 16) % 2 == 0
        a, b = (better, worse) if better_first else (worse, better)
        rows.append({"id": pair["id"], "instruction": _instruction_text(pair.get("prompt")),
                     "response_a": _response_text(a), "response_b": _response_text(b),
                     "label": "a" if better_first else "b"})
    if not rows:
        raise InputError(f"{run.path} has no reviewed pair to calibrate on (no keep or swap in {run.review_file.name})",
                         f"review some pairs first: edgepref review {run.path} --sample 50")
    return rows


def _response_text(value: object) -> str:
    if isinstance(value, list):  # a conversational pair's answer: one assistant message
        return "\n\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return str(value)


def _instruction_text(prompt: object) -> str:
    if not isinstance(prompt, list):
        return str(prompt)
    turns = [m for m in prompt if isinstance(m, dict) and m.get("role") != "system"]
    if len(turns) == 1:
        return str(turns[0].get("content", ""))
    return "\n\n".join(f"{m.get('role')}: {m.get('content', '')}" for m in turns[:-1]) + \
        "\n\n" + str(turns[-1].get("content", ""))

