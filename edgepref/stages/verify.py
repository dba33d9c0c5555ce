"""Stage 3b, the pairwise check: the verdict chain decides each record's candidate pairs.

Reads  the candidate pairs of each record (pair.candidate_pairs: at most `pair.candidates`, in
       the order they are checked).
Adds   Record.judge_info["verdicts"]: one verdict per candidate pair checked: the pair (x, y),
       each judge's two-order log-odds margin of x over y (edgepref.judging.compare), and the
       decider that was sure of it (`decided_by`, with its threshold, calibrated agreement and
       place in the chain, `decided_at`) or none. Record.judge_info["verdict"] is the record's
       first decided verdict, else the last one asked (what `inspect` and the report show).

The chain (cascade.py) is a list of deciders, each a judge or a panel; each decides the pairs
above its threshold and passes the rest on. A one-judge decider asks about one candidate pair
per record at a time, in candidate order, and stops for a record as soon as it has decided
`pair.pairs_per_instruction` of its pairs: a pair decided early saves the checks of the others.
A later decider (a dearer judge) checks only the records that have no pair yet.
It takes the records a few at a time (RECORDS_AT_ONCE), so that a record's later checks find
the prefixes its earlier ones saved in the engine (the instruction, each response shown first).
A panel asks all its judges about every pending pair (its margin is their mean). What a
decider leaves undecided goes to the next one. Each judge of a decider is one unit of this
stage, on the engine's fixed numerical path for reads (`reads`), so a verdict does not depend
on what else was decoded; the decider's last unit settles the pairs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ..backends.base import Backend
from ..judging.cascade import Decider, settle
from ..judging.compare import compare, get_recipe
from .config import JudgeConfig
from .pair import candidate_pairs
from ..core.records import ErrorSink, Record
from .base import Stage, StageContext


def _known_margin(record: Record, judge_model: str, x: str, y: str) -> float | None:
    """This judge's margin of x over y from pairwise mode, if it compared them."""
    known = record.judge_info.get("margins", {}).get(judge_model, {})
    if f"{x}>{y}" in known:
        return known[f"{x}>{y}"]
    return -known[f"{y}>{x}"] if f"{y}>{x}" in known else None


def _find(record: Record, x: str, y: str) -> dict | None:
    """The record's verdict on (x, y), if it has one."""
    return next((v for v in record.judge_info.get("verdicts", []) if (v["x"], v["y"]) == (x, y)), None)


def _entry(record: Record, x: str, y: str) -> dict:
    """The record's verdict on (x, y), made empty when it has none yet."""
    found = _find(record, x, y)
    if found is None:
        found = {"x": x, "y": y, "margins": {}, "margin": None, "decided_by": []}
        record.judge_info.setdefault("verdicts", []).append(found)
    return found


def verify(
    items: list[tuple[Record, str, str]],
    judge_model: str,
    backend: Backend,
    cfg: JudgeConfig,
    *,
    on_result=None,
    on_error: ErrorSink | None = None,
) -> list[float | None]:
    """One judge's pairwise check of each (record, x, y): its margin of x over y (> 0: x better;
    None when the check failed), also kept in the record's verdict on (x, y) under "margins".
    A margin this judge already gave (a rerun on judged records, or pairwise mode) is not asked
    again. Deciding is the cascade's job."""
    recipe = get_recipe(cfg.recipe)
    margins: list[float | None] = []
    for record, x, y in items:
        known = _entry(record, x, y)["margins"].get(judge_model)
        margins.append(known if known is not None else _known_margin(record, judge_model, x, y))
    ask = [k for k, m in enumerate(margins) if m is None]
    questions = [(items[k][0].task_text(), items[k][0].completion(items[k][1]).text,
                  items[k][0].completion(items[k][2]).text) for k in ask]
    verdicts = compare(questions, [recipe], backend, judge_model, on_result=on_result)[recipe.name] if questions else []
    for k, v in zip(ask, verdicts):
        if v.ok:
            margins[k] = v.margin
        elif on_error:
            record, x, y = items[k]
            on_error(record, "judge", f"{judge_model} (pairwise check of {x} and {y}): {v.error}")
    for (record, x, y), m in zip(items, margins):
        if m is not None:
            _entry(record, x, y)["margins"][judge_model] = round(m, 4)
    return [None if m is None else round(m, 4) for m in margins]


# A one-judge decider checks the records this many at a time, round by round, so that the engine's
# saved prefixes of their prompts (the instruction, each response shown first) are still held
# when the next round asks about another pair of the same record (engine.prefixes.STORE_BYTES).
RECORDS_AT_ONCE = 8


class _Rounds:
    """A unit's progress over its rounds of requests (one `compare` call per round): each round
    counts on from the requests of the rounds before it."""

    def __init__(self, on_result):
        self.on_result, self.offset, self.last = on_result, 0, 0

    def callback(self):
        if self.on_result is None:
            return None

        def shifted(progress, result):
            self.last = progress.total
            self.on_result(replace(progress, done=self.offset + progress.done, total=self.offset + progress.total),
                           result)
        return shifted

    def next_round(self) -> None:
        self.offset, self.last = self.offset + self.last, 0


class Pending:
    """The candidate pairs of each record that no decider has decided yet, and how many pairs
    each record has decided: record id -> [(x, y), ...] in check order."""

    def __init__(self):
        self.pairs: dict[str, list[tuple[str, str]]] | None = None
        self.decided: Counter = Counter()
        self.wanted = 1  # pairs per record (pair.pairs_per_instruction)
        self.margins: dict[str, list[dict[tuple[str, str, str], float]]] = {}  # panel -> its judges' margins

    def start(self, records: list[Record], ctx: StageContext) -> None:
        if self.pairs is not None:
            return
        self.pairs = {}
        self.wanted = ctx.cfg.pair.pairs_wanted
        for r in records:
            r.judge_info.pop("verdict", None)  # verdicts of an earlier check are made again
            r.judge_info.pop("verdicts", None)
            candidates = candidate_pairs(r, ctx.cfg.pair)
            if not isinstance(candidates, str):
                self.pairs[r.id] = list(candidates)
        if self.pairs:
            for note in (f"verdicts: {ctx.chain.describe()}", *ctx.chain.notes):
                ctx.notice(note, VerifyStage.kind)

    def want(self, later: bool) -> int:
        """How many decided pairs a record wants from a decider: `pairs_per_instruction` from the
        chain's first, one from a later (dearer) one, which is there to give an instruction the
        pair the first could not."""
        return 1 if later else self.wanted

    def open(self, limit: int | None = None, later: bool = False) -> dict[str, list[tuple[str, str]]]:
        """The undecided candidates of the records that still want a pair (at most `limit` each)."""
        want = self.want(later)
        return {rid: list(p)[:limit] for rid, p in self.pairs.items() if p and self.decided[rid] < want}

    def size(self, limit: int | None = None, later: bool = False) -> int:
        return sum(map(len, self.open(limit, later).values()))

    def closest_first(self, records: dict[str, Record], earlier: list[Decider]) -> None:
        """Order each record's undecided candidates by how close the earlier deciders came to
        deciding them (|margin| over threshold, the largest over those deciders) before a later
        decider takes them: the one it is likeliest to be sure of first. Stable: ties keep
        the candidate order."""
        def closeness(rid: str, pair: tuple[str, str]) -> float:
            margins = (_find(records[rid], *pair) or {}).get("margins", {})
            return max((abs(margins[d.name]) / d.threshold for d in earlier
                        if margins.get(d.name) is not None and d.threshold), default=0.0)

        for rid, pairs in self.pairs.items():
            pairs.sort(key=lambda pair: -closeness(rid, pair))


class VerifyStage(Stage):
    """One unit per judge of each active decider of the chain, in chain order."""

    kind = "verify"
    command = "judge"  # `edgepref judge` runs the check after the ratings
    reads = True

    def __init__(self, decider: Decider, model: str, pending: Pending, n_ctx: int):
        super().__init__(f"{self.kind}-{model}", model, n_ctx)
        self.decider, self.pending = decider, pending

    @classmethod
    def plan(cls, ctx: StageContext) -> list[Stage]:
        if ctx.cfg.pair.decide != "pairwise":
            return []
        pending = Pending()
        return [cls(d, m, pending, ctx.judge_n_ctx) for d in ctx.chain.active for m in d.models]

    def _limit(self, ctx: StageContext) -> int | None:
        """How many candidates of a record this unit's decider may check: `candidates` for the
        first decider of the chain, `later_candidates` for each after it."""
        return None if ctx.chain.active.index(self.decider) == 0 else ctx.cfg.pair.later_candidates

    def total(self, records: list[Record], ctx: StageContext) -> int:
        self.pending.start(records, ctx)
        later = ctx.chain.active.index(self.decider) > 0
        return self.pending.size(self._limit(ctx), later)  # at most: a record stops once decided

    def run(self, records: list[Record], backend: Backend | None, ctx: StageContext, on_result) -> None:
        by_id = {r.id: r for r in records}
        place = ctx.chain.active.index(self.decider)
        path = ctx.read_path(self.decider.models[0])
        limit, later = self._limit(ctx), place > 0
        want = self.pending.want(later)
        if later and self.model == self.decider.models[0]:
            self.pending.closest_first(by_id, ctx.chain.active[:place])
        if len(self.decider.models) == 1:  # one candidate per record at a time, until decided
            todo = list(self.pending.open(limit, later).items())
            rounds = _Rounds(on_result)
            for start in range(0, len(todo), RECORDS_AT_ONCE):
                chunk = todo[start:start + RECORDS_AT_ONCE]
                for k in range(max((len(pairs) for _, pairs in chunk), default=0)):
                    items = [(by_id[rid], *pairs[k]) for rid, pairs in chunk
                             if k < len(pairs) and self.pending.decided[rid] < want]
                    if not items:
                        break
                    margins = verify(items, self.model, backend, ctx.cfg.judge, on_result=rounds.callback(),
                                     on_error=ctx.error)
                    rounds.next_round()
                    self._settle(items, margins, place, path)
            return
        items = [(by_id[rid], *pair) for rid, pairs in self.pending.open(limit, later).items() for pair in pairs]
        got = self.pending.margins.setdefault(self.decider.name, [])
        margins = verify(items, self.model, backend, ctx.cfg.judge, on_result=on_result, on_error=ctx.error)
        got.append({(r.id, x, y): m for (r, x, y), m in zip(items, margins) if m is not None})
        if self.model == self.decider.models[-1]:  # the panel's mean margin, where every judge gave one
            means = [None if any(g.get((r.id, x, y)) is None for g in got)
                     else sum(g[(r.id, x, y)] for g in got) / len(got) for r, x, y in items]
            self._settle(items, means, place, path)

    def _settle(self, items: list[tuple[Record, str, str]], margins: list[float | None], place: int, path: str) -> None:
        for (record, x, y), m in zip(items, margins):
            if m is None:
                continue  # this decider could not judge it: the next one may
            verdict = _entry(record, x, y)
            decided = settle(verdict, self.decider, m, path)
            if decided:
                verdict["decided_at"] = place
                self.pending.decided[record.id] += 1
                self.pending.pairs[record.id].remove((x, y))
            first = record.judge_info.get("verdict")
            if not (first and first.get("decided_by")):
                record.judge_info["verdict"] = verdict
