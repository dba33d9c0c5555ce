"""How far each judge agrees with a person who reviewed the pairs (edgepref review --stats).

A pair's judges, each with the side it preferred:
  the decider   `decided_by` (a judge of the verdict chain, or "ratings" when the UltraFeedback
                scores decided): it preferred chosen, since it is what made the pair.
  ratings       the UltraFeedback scores, where the run rated and they differ: the higher one.
The person's keep says chosen is better, swap says rejected is; drop (neither good, or a tie)
and skip are no verdict and are counted apart. Agreement = verdicts that side with the judge /
verdicts, with a Wilson 95% interval.

Two scopes: the pairs a seeded sample showed (`order` "sample": an unbiased estimate for the
pairs sampled from) and every reviewed pair (biased: least-sure-first reviews look at the pairs
the judges found hardest, so agreement there is lower than over the whole dataset).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..data.review import Decision

Z95 = 1.959963984540054


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of hits/n (0 <= hits <= n, n >= 1)."""
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Agreement:
    judge: str
    scope: str  # "sampled" or "all reviewed"
    verdicts: int  # keep + swap on pairs this judge had a preference on
    agreed: int
    dropped: int  # drop decisions on those pairs: no verdict either way
    share: float | None
    ci95: tuple[float, float] | None
    biased: bool

    def to_row(self) -> dict:
        return asdict(self)


def preferences(pair: dict) -> dict[str, str]:
    """Each judge of `pair` -> the side it preferred ("chosen" or "rejected")."""
    out = {(pair.get("decided_by") or "ratings"): "chosen"}
    a, b = pair.get("score_chosen"), pair.get("score_rejected")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a != b and out.get("ratings") is None:
        out["ratings"] = "chosen" if a > b else "rejected"
    return out


def agreement_table(pairs: list[dict], applied: dict[str, Decision]) -> list[Agreement]:
    """Per judge, on the sampled pairs and on every reviewed one (`applied`: pair id -> the
    decision that holds for it, as `review.match` gives)."""
    scopes = {"sampled": lambda d: d.order == "sample", "all reviewed": lambda d: True}
    tallies: dict[tuple[str, str], list[int]] = {}
    for pair in pairs:
        d = applied.get(pair.get("id"))
        if d is None or d.decision not in ("keep", "swap", "drop"):
            continue
        better = {"keep": "chosen", "swap": "rejected"}.get(d.decision)
        for judge, side in preferences(pair).items():
            for scope, holds in scopes.items():
                if not holds(d):
                    continue
                t = tallies.setdefault((judge, scope), [0, 0, 0])
                if better is None:
                    t[2] += 1
                else:
                    t[0] += 1
                    t[1] += better == side
    # every reviewed pair is an unbiased sample only when every decision came from a sample
    unbiased = all(d.order == "sample" for d in applied.values())
    rows = []
    for (judge, scope), (n, hits, dropped) in sorted(tallies.items(), key=lambda kv: (kv[0][0], kv[0][1] != "sampled")):
        rows.append(Agreement(judge, scope, n, hits, dropped, hits / n if n else None,
                              wilson(hits, n) if n else None, biased=scope != "sampled" and not unbiased))
    return rows
