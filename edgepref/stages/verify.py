"""Stage 3b, the pairwise check: the verdict chain decides each shortlisted pair.

Reads  the pair the ratings shortlist for each record (pair.shortlist).
Adds   Record.judge_info["verdict"]: the pair (x, y), each judge's two-order log-odds margin of
       x over y (edgepref.judging.compare), and the decider that was sure of it (`decided_by`, with its
       threshold and calibrated agreement) or none (the pair stage then drops it as uncertain).

The chain (cascade.py) is a list of deciders, each a judge or a panel; each decides the pairs
above its threshold and passes the rest on. Each judge of a decider is one unit of this stage,
on the engine's fixed numerical path for reads (`reads`), so a verdict does not depend on what
else was decoded; the decider's last unit settles the pairs.
"""

from __future__ import annotations

from ..backends.base import Backend
from ..judging.cascade import Decider, settle
from ..judging.compare import compare, get_recipe
from .config import JudgeConfig
from .pair import shortlist
from ..core.records import ErrorSink, Record
from .base import Stage, StageContext


def _known_margin(record: Record, judge_model: str, x: str, y: str) -> float | None:
    """This judge's margin of x over y from pairwise mode, if it compared them."""
    known = record.judge_info.get("margins", {}).get(judge_model, {})
    if f"{x}>{y}" in known:
        return known[f"{x}>{y}"]
    return -known[f"{y}>{x}"] if f"{y}>{x}" in known else None


def verify(
    records: list[Record],
    shortlists: dict[str, tuple[str, str]],
    judge_model: str,
    backend: Backend,
    cfg: JudgeConfig,
    *,
    on_result=None,
    on_error: ErrorSink | None = None,
) -> dict[str, float]:
    """The pairwise check of each record's shortlisted pair (x, y) by one judge: its margin of x
    over y (> 0: x better) by record id, also kept in record.judge_info["verdict"]["margins"].
    A verdict on another shortlist is started afresh; a margin this judge already gave (a
    resumed stage, or pairwise mode) is not asked again. Deciding is the cascade's job."""
    recipe = get_recipe(cfg.recipe)
    todo: list[tuple[Record, str, str]] = []
    margins: list[float | None] = []
    for record in records:
        if record.id not in shortlists:
            continue
        x, y = shortlists[record.id]
        verdict = record.judge_info.get("verdict")
        if not verdict or (verdict["x"], verdict["y"]) != (x, y):
            record.judge_info["verdict"] = {"x": x, "y": y, "margins": {}, "margin": None, "decided_by": []}
        todo.append((record, x, y))
        known = record.judge_info["verdict"]["margins"].get(judge_model)
        margins.append(known if known is not None else _known_margin(record, judge_model, x, y))
    ask = [k for k, m in enumerate(margins) if m is None]
    items = [(todo[k][0].instruction, todo[k][0].completion(todo[k][1]).text, todo[k][0].completion(todo[k][2]).text)
             for k in ask]
    verdicts = compare(items, [recipe], backend, judge_model, on_result=on_result)[recipe.name] if items else []
    for k, v in zip(ask, verdicts):
        if v.ok:
            margins[k] = v.margin
        elif on_error:
            on_error(todo[k][0], "judge", f"{judge_model} (pairwise check): {v.error}")
    out = {}
    for (record, _, _), m in zip(todo, margins):
        if m is not None:
            record.judge_info["verdict"]["margins"][judge_model] = round(m, 4)
            out[record.id] = round(m, 4)
    return out


class Pending:
    """The shortlisted pairs no decider of the chain has decided yet: record id -> (x, y)."""

    def __init__(self):
        self.pairs: dict[str, tuple[str, str]] | None = None
        self.margins: dict[str, list[dict[str, float]]] = {}  # decider name -> its judges' margins

    def start(self, records: list[Record], ctx: StageContext) -> None:
        if self.pairs is not None:
            return
        self.pairs = {}
        for r in records:
            proposed = shortlist(r, ctx.cfg.pair)
            if not isinstance(proposed, str):
                self.pairs[r.id] = (proposed[0].completion.id, proposed[1].completion.id)
        if self.pairs:
            for note in (f"verdicts: {ctx.chain.describe()}", *ctx.chain.notes):
                ctx.notice(note, VerifyStage.kind)


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

    def total(self, records: list[Record], ctx: StageContext) -> int:
        self.pending.start(records, ctx)
        return len(self.pending.pairs)

    def run(self, records: list[Record], backend: Backend | None, ctx: StageContext, on_result) -> None:
        got = self.pending.margins.setdefault(self.decider.name, [])
        got.append(verify(records, self.pending.pairs, self.model, backend, ctx.cfg.judge,
                          on_result=on_result, on_error=ctx.error))
        if self.model == self.decider.models[-1]:
            self._settle(records, got, ctx.read_path(self.decider.models[0]))

    def _settle(self, records: list[Record], got: list[dict[str, float]], path: str) -> None:
        by_id = {r.id: r for r in records}
        for rid in list(self.pending.pairs):
            margins = [g.get(rid) for g in got]
            if None in margins:
                continue  # this decider could not judge it: the next one may
            if settle(by_id[rid].judge_info["verdict"], self.decider, sum(margins) / len(margins), path):
                del self.pending.pairs[rid]
