"""A person's review of a run's pairs: the decisions file, what it changes, the order to review in.

    DIR/review.jsonl          one line per decision, appended and flushed the moment it is made
    DIR/pairs.reviewed.jsonl  the pairs with the decisions applied (what `export` writes out)

A decision line (the schema `--decisions FILE` reads too):

    {"pair": "<pair id>", "texts": "<texts_hash of the pair>", "decision": "keep",
     "reviewer": "ana", "at": "2026-12-08T10:00:00Z", "order": "sample", "seed": 0}

  decision  keep   the chosen response is the better one
            swap   the rejected one is better: the pair is flipped
            drop   neither is good, or they tie: the pair is left out
            skip   passed over without a verdict (the review moves on; nothing changes)
            undo   the pair's earlier decision is withdrawn
  order     how the pair came to be shown: "sample" (a seeded random draw, the one order whose
            agreement figures are unbiased), "least-sure" (the default), or "file" (--decisions)

The last line of a pair is its decision. A decision holds for its pair only while the pair's
texts (prompt, chosen, rejected) hash the same: a rerun of the pipeline that wrote other texts
for that id leaves the line in the file, not applied, and counted as no longer matching.
pairs.jsonl is never edited; the pipeline rewrites it, the review never does.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..core.checks import fits
from ..core.errors import InputError
from ..core.files import JsonlAppender, write_jsonl_atomic
from .inputs import iter_jsonl_rows

DECISIONS = ("keep", "swap", "drop", "skip", "undo")
VERDICTS = ("keep", "swap", "drop")  # the decisions that change the dataset (and are measured)
STATUS = {"keep": "kept", "swap": "swapped", "drop": "dropped"}  # a verdict as the pair's review status
REVIEWED = {k: v for k, v in STATUS.items() if k != "drop"}  # a row's `reviewed`; dropped rows are left out
UNREVIEWED = "unreviewed"
ORDERS = ("least-sure", "sample", "file")
# what swapping a pair exchanges besides chosen and rejected
_SIDES = ("score", "model", "rationale", "completion")


def texts_hash(pair: dict) -> str:
    """16 hex digits of sha256 over the pair's prompt, chosen and rejected, as JSON."""
    raw = json.dumps([pair.get("prompt"), pair.get("chosen"), pair.get("rejected")], ensure_ascii=False,
                     sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Decision:
    pair: str
    texts: str
    decision: str
    reviewer: str = ""
    at: str = ""
    order: str = "file"
    seed: int | None = None

    def to_row(self) -> dict:
        return asdict(self)


def parse_decision(row: dict) -> tuple[Decision | None, str | None]:
    """One decision row as (Decision, None) or (None, why it is not one)."""
    for name in ("pair", "texts", "decision"):
        if not isinstance(row.get(name), str) or not row[name]:
            return None, f"no {name} (a non-empty string)"
    if row["decision"] not in DECISIONS:
        return None, f"decision {row['decision']!r} is not one of {', '.join(DECISIONS)}"
    order = row.get("order", "file")
    if order not in ORDERS:
        return None, f"order {order!r} is not one of {', '.join(ORDERS)}"
    seed = row.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return None, f"seed {seed!r} is not an integer"
    for name in ("reviewer", "at"):
        if not isinstance(row.get(name, ""), str):
            return None, f"{name} is not a string"
    return Decision(row["pair"], row["texts"], row["decision"], row.get("reviewer", ""), row.get("at", ""),
                    order, seed), None


def read_decisions(path: Path) -> tuple[list[Decision], list[str]]:
    """Every decision line of `path` in order, and a line per line left out (file and line number).
    A file that is not there holds no decisions."""
    path = Path(path)
    if not path.is_file():
        return [], []
    decisions, problems = [], []
    for n, row, problem in iter_jsonl_rows(path):
        if row is not None:
            decision, problem = parse_decision(row)
        if problem:
            problems.append(f"{path.name} line {n}: {problem} (left out)")
        else:
            decisions.append(decision)
    return decisions, problems


def latest(decisions: Iterable[Decision]) -> dict[str, Decision]:
    """Each pair's standing decision: its last line, unless that line is an undo."""
    out: dict[str, Decision] = {}
    for d in decisions:
        if d.decision == "undo":
            out.pop(d.pair, None)
        else:
            out[d.pair] = d
    return out


@dataclass
class Matched:
    """The standing decisions against the pairs they were made on."""

    applied: dict[str, Decision] = field(default_factory=dict)  # pair id -> decision whose texts match
    stale: list[Decision] = field(default_factory=list)  # texts changed, or the pair is gone

    def count(self, decision: str) -> int:
        return sum(1 for d in self.applied.values() if d.decision == decision)


def match(pairs: list[dict], decisions: Iterable[Decision]) -> Matched:
    by_id = {p["id"]: p for p in pairs if isinstance(p.get("id"), str)}
    out = Matched()
    for pair_id, d in latest(decisions).items():
        pair = by_id.get(pair_id)
        if pair is not None and texts_hash(pair) == d.texts:
            out.applied[pair_id] = d
        else:
            out.stale.append(d)
    return out


def match_review(pairs: list[dict], review_file: Path) -> tuple[Matched, list[str]]:
    """The decisions of `review_file` matched against `pairs`, and its lines left out."""
    decisions, problems = read_decisions(review_file)
    return match(pairs, decisions), problems


def swapped(pair: dict) -> dict:
    """The pair with chosen and rejected exchanged, and every field that belongs to a side with them."""
    row = dict(pair)
    row["chosen"], row["rejected"] = pair.get("rejected"), pair.get("chosen")
    for side in _SIDES:
        a, b = f"{side}_chosen", f"{side}_rejected"
        if a in pair or b in pair:
            row[a], row[b] = pair.get(b), pair.get(a)
    if isinstance(pair.get("margin"), (int, float)):
        row["margin"] = -pair["margin"]
    return row


def reviewed_pairs(pairs: list[dict], matched: Matched) -> list[dict]:
    """The dataset after the review: kept rows as they were, swapped ones flipped, dropped ones
    left out, each row with `reviewed` (kept, swapped or unreviewed)."""
    out = []
    for pair in pairs:
        d = matched.applied.get(pair.get("id"))
        verdict = d.decision if d else None
        if verdict == "drop":
            continue
        row = swapped(pair) if verdict == "swap" else dict(pair)
        row["reviewed"] = REVIEWED.get(verdict, UNREVIEWED)
        out.append(row)
    return out


def review_counts(pairs: list[dict], matched: Matched) -> dict:
    """kept, swapped, dropped, skipped, unreviewed (of the pairs) and no_longer_matching."""
    decided = {k: matched.count(k) for k in ("keep", "swap", "drop", "skip")}
    return {"pairs": len(pairs), "kept": decided["keep"], "swapped": decided["swap"], "dropped": decided["drop"],
            "skipped": decided["skip"], "unreviewed": len(pairs) - decided["keep"] - decided["swap"] - decided["drop"],
            "no_longer_matching": len(matched.stale)}


def write_reviewed(path: Path, pairs: list[dict], matched: Matched) -> int:
    """pairs.reviewed.jsonl, atomically; the number of rows written."""
    return write_jsonl_atomic(path, reviewed_pairs(pairs, matched))


def describe_counts(counts: dict) -> str:
    text = (f"{counts['kept']} kept, {counts['swapped']} swapped, {counts['dropped']} dropped, "
            f"{counts['unreviewed']} not reviewed of {counts['pairs']} pairs")
    if counts["no_longer_matching"]:
        text += (f"; {counts['no_longer_matching']} earlier decisions no longer match their pair's texts "
                 "(left in review.jsonl, not applied)")
    return text


# ---------------------------------------------------------------- what to review, in what order


def sureness(pair: dict) -> float:
    """How sure the judges were of a pair: the pairwise margin of its decider, else the
    UltraFeedback margin; a pair with neither counts as least sure."""
    for key in ("confidence", "margin"):
        if fits(pair.get(key), float):
            return float(pair[key])
    return float("-inf")


def select(pairs: list[dict], *, decider: str | None = None, model: str | None = None,
           max_margin: float | None = None) -> list[dict]:
    """The pairs a review looks at: decided by `decider`, with `model` on either side, no surer
    than `max_margin` (the `sureness` above)."""
    out = []
    for p in pairs:
        if decider is not None and (p.get("decided_by") or "ratings") != decider:
            continue
        if model is not None and model not in (p.get("model_chosen"), p.get("model_rejected")):
            continue
        if max_margin is not None and sureness(p) > max_margin:
            continue
        out.append(p)
    return out


def review_order(pairs: list[dict], sample: int | None = None, seed: int = 0) -> list[dict]:
    """Least sure first (ties in file order), or a seeded random sample of `sample` pairs (in
    the order drawn): the same pairs, seed and size give the same sample, and a larger size
    extends a smaller one."""
    if sample is None:
        return sorted(pairs, key=sureness)
    ranked = sorted(pairs, key=lambda p: hashlib.sha256(f"{seed}:{p.get('id')}".encode()).hexdigest())
    return ranked[:sample]


def check_pairs_reviewable(pairs: list[dict], source: Path) -> None:
    ids = [p.get("id") for p in pairs]
    if any(not isinstance(i, str) or not i for i in ids):
        raise InputError(f"{source}: a pair has no id, so a decision could not name it",
                         "review the pairs of an edgepref run (every pair it writes has an id)")
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise InputError(f"{source}: pair id {dup!r} appears more than once",
                         "merge shards with `edgepref merge`, which keeps ids unique, and review the merged run")


class ReviewLog:
    """DIR/review.jsonl, appended one flushed line per decision (a killed terminal loses none)."""

    def __init__(self, path: Path, reviewer: str, order: str, seed: int | None = None):
        self.path = Path(path)
        self.reviewer, self.order, self.seed = reviewer, order, seed
        self._out = JsonlAppender(self.path)

    def record(self, pair: dict, decision: str) -> Decision:
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        d = Decision(pair["id"], texts_hash(pair), decision, self.reviewer, now_utc(), self.order, self.seed)
        self._out.append(d.to_row())
        return d

    def close(self) -> None:
        self._out.close()

