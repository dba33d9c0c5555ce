"""Calibrated verdict thresholds: when a pairwise judge may decide a pair on its own.

A judge's pairwise verdict has a margin (edgepref.judging.compare); |margin| is its confidence. On
labelled pairs, `calibrate_chain` picks, for each judge of a chain (a cascade: cheap judge
first), the smallest |margin| threshold such that the pairs it keeps agree with the labels at
least `target` of the time, with probability at least 1 - risk. Pairs under a judge's threshold
go to the next judge; what no judge keeps is dropped as uncertain. This is the selective
evaluation of "Trust or Escalate" (Jung et al., ICLR 2025), with the two-order log-odds margin as
the confidence:

  - Fixed-sequence testing. The candidate thresholds are fixed before any label is read, from the
    margins alone: the |margin| at which the most confident 5%, 10%, ... 100% of the pairs that
    reach the judge start, from the first that keeps at least MIN_KEPT pairs, and never below
    the judge's noise floor (a margin smaller than how far rounding moves it is a coin toss).
    They are tested from the highest down; at each, H0 "agreement of the kept pairs < target"
    is rejected when the exact binomial tail P(Binomial(n, target) >= hits) <= risk / len(chain).
    The first threshold not rejected stops the sequence; the last one rejected is the judge's
    threshold (none: the judge decides nothing).
  - Each judge is tested at risk / len(chain) (Bonferroni), so that with probability >= 1 - risk
    every judge's kept pairs meet the target, and so does their union: the written pairs.
  - Judge k is calibrated on the pairs judges 1..k-1 did not keep, which are the pairs it will
    see in a run.

The guarantee is about pairs drawn like the calibration pairs (exchangeable with them); on
another kind of data calibrate again on labelled pairs of that kind (`edgepref calibrate`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..core.errors import ConfigError

COVERAGE_STEP = 0.05
MIN_KEPT = 20  # the first candidate threshold keeps at least this many pairs
SHIPPED = "calibration.json"  # in the package: calibrations of the embedded judges on the dev pairs


def binomial_tail(hits: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= hits), exact (summed in log space)."""
    if hits <= 0:
        return 1.0
    if hits > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(hits, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def candidate_thresholds(confidences: Sequence[float], noise_floor: float = 0.0,
                         step: float = COVERAGE_STEP, min_kept: int = MIN_KEPT) -> list[float]:
    """The thresholds to test, highest first, from the confidences alone (no labels): the
    confidence at which each multiple of `step` of the most confident pairs starts, from the
    first share that keeps `min_kept` pairs, none below `noise_floor` and none at 0 (a zero
    margin names no winner)."""
    ranked = sorted((c for c in confidences if c > 0), reverse=True)
    out: list[float] = []
    k = 1
    while k * step <= 1.0 + 1e-9 and ranked:
        n = min(len(ranked), math.ceil(k * step * len(confidences) - 1e-9))
        k += 1
        if n < min_kept:
            continue
        t = ranked[n - 1]
        if t < noise_floor:
            break
        if not out or t < out[-1]:
            out.append(t)
    return out


@dataclass
class Test:
    """One tested threshold: pairs kept, of them agreeing with the labels, the tail probability."""

    threshold: float
    kept: int
    hits: int
    p_value: float


def fixed_sequence(confidences: Sequence[float], hits: Sequence[bool], target: float, alpha: float,
                   noise_floor: float = 0.0) -> tuple[float | None, list[Test]]:
    """The smallest candidate threshold certified by fixed-sequence testing at level `alpha`, or
    None, and every test run (the last one is the one that stopped the sequence, if any)."""
    tests: list[Test] = []
    certified = None
    for t in candidate_thresholds(confidences, noise_floor):
        kept = [h for c, h in zip(confidences, hits) if c >= t]
        k = sum(1 for h in kept if h)
        p = binomial_tail(k, len(kept), target)
        tests.append(Test(t, len(kept), k, p))
        if p > alpha:
            break
        certified = t
    return certified, tests


@dataclass
class JudgeCalibration:
    """One judge of a calibrated chain. threshold None: it decides nothing (its pairs go on)."""

    judge: str
    recipe: str
    read_path: str
    noise_floor: float
    threshold: float | None
    reached: int  # calibration pairs that reached this judge
    kept: int  # of them, decided by it
    agreement: float | None  # of the kept pairs, share that agree with the labels
    coverage: float  # kept / all calibration pairs

    @property
    def decides(self) -> bool:
        return self.threshold is not None


@dataclass
class Calibration:
    """A calibrated chain for one target agreement and risk."""

    target: float
    risk: float
    pairs: int  # calibration pairs
    judges: list[JudgeCalibration]
    source: str = ""
    coverage: float = 0.0  # share of the calibration pairs some judge decided
    agreement: float | None = None  # agreement of those decisions with the labels

    def for_judge(self, judge: str) -> JudgeCalibration | None:
        return next((j for j in self.judges if j.judge == judge), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Calibration":
        try:
            judges = [JudgeCalibration(**j) for j in raw["judges"]]
            return cls(**{**raw, "judges": judges})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a calibration: {exc}",
                              "make one with `edgepref calibrate PAIRS --out FILE`") from None


@dataclass
class JudgeMargins:
    """One judge's margins on the calibration pairs (None: no verdict) and its noise floor."""

    judge: str
    recipe: str
    read_path: str
    margins: list[float | None]
    noise_floor: float = 0.0


def calibrate_chain(chain: Sequence[JudgeMargins], labels_a: Sequence[bool], target: float,
                    risk: float, source: str = "") -> Calibration:
    """Thresholds for a cascade. `labels_a[i]`: the label prefers the pair's first response (the
    margins' x); a judge agrees when its margin has the label's sign."""
    if not 0.0 < target < 1.0:
        raise ConfigError(f"target agreement must be between 0 and 1, got {target}")
    if not 0.0 < risk < 1.0:
        raise ConfigError(f"risk must be between 0 and 1, got {risk}")
    n = len(labels_a)
    alpha = risk / max(1, len(chain))
    reaching = list(range(n))
    judges, decided_hits = [], []
    for jm in chain:
        usable = [i for i in reaching if jm.margins[i] is not None]
        conf = [abs(jm.margins[i]) for i in usable]
        hits = [(jm.margins[i] > 0) == labels_a[i] for i in usable]
        threshold, _ = fixed_sequence(conf, hits, target, alpha, jm.noise_floor)
        kept = [i for i in usable if threshold is not None and abs(jm.margins[i]) >= threshold]
        kept_hits = [(jm.margins[i] > 0) == labels_a[i] for i in kept]
        decided_hits += kept_hits
        judges.append(JudgeCalibration(
            jm.judge, jm.recipe, jm.read_path, round(jm.noise_floor, 4),
            None if threshold is None else round(threshold, 6), len(reaching), len(kept),
            round(sum(kept_hits) / len(kept), 4) if kept else None, round(len(kept) / n, 4) if n else 0.0,
        ))
        kept_set = set(kept)
        reaching = [i for i in reaching if i not in kept_set]
    return Calibration(
        target, risk, n, judges, source,
        coverage=round(len(decided_hits) / n, 4) if n else 0.0,
        agreement=round(sum(decided_hits) / len(decided_hits), 4) if decided_hits else None,
    )


# ------------------------------------------------------------------ files


@dataclass
class CalibrationFile:
    """Calibrations of one chain for several targets (one risk), as written by `edgepref calibrate`
    and shipped for the embedded judges."""

    chain: list[str]
    recipe: str
    risk: float
    calibrations: list[Calibration] = field(default_factory=list)
    source: str = ""
    command: str = ""  # the command that wrote it, without where it cached its requests
    # judge -> its noise floor measurement (evaljudge.noise_floor)
    noise: dict = field(default_factory=dict)
    # what it was calibrated on: pairs_file, skip, limit, noise_pairs
    inputs: dict = field(default_factory=dict)
    # the machine the noise floors were measured on: cpu (its model name; None: unknown), note
    machine: dict = field(default_factory=dict)
    # judge -> numerical path -> seconds per pair of its noise measurement; printed, never
    # written: the file holds no wall-clock figure, so the same command writes the same bytes
    seconds: dict = field(default_factory=dict, compare=False)

    def at(self, target: float) -> Calibration:
        for c in self.calibrations:
            if abs(c.target - target) < 1e-9:
                return c
        have = ", ".join(f"{c.target:g}" for c in self.calibrations)
        raise ConfigError(
            f"no calibration for target agreement {target:g} (this file has {have})",
            "pick one of those, or calibrate on your own labelled pairs: "
            f"edgepref calibrate PAIRS --target {target:g} --out FILE",
        )

    def to_dict(self) -> dict:
        return {"chain": self.chain, "recipe": self.recipe, "risk": self.risk, "source": self.source,
                "command": self.command, "inputs": self.inputs, "machine": self.machine, "noise": self.noise,
                "calibrations": [c.to_dict() for c in self.calibrations]}

    @classmethod
    def from_dict(cls, raw: dict) -> "CalibrationFile":
        try:
            return cls(raw["chain"], raw["recipe"], raw["risk"],
                       [Calibration.from_dict(c) for c in raw["calibrations"]],
                       raw.get("source", ""), raw.get("command", ""), raw.get("noise", {}),
                       raw.get("inputs", {}), raw.get("machine", {}))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a calibration file: missing {exc}",
                              "make one with `edgepref calibrate PAIRS --out FILE`") from None

    def write(self, path: str | Path) -> None:
        from ..core.files import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


def read_calibration(path: str | Path | None = None) -> CalibrationFile:
    """A calibration file, or (None) the one shipped for the embedded judges."""
    if path is None:
        text = resources.files("edgepref.judging").joinpath(SHIPPED).read_text(encoding="utf-8")
        where = f"edgepref's shipped {SHIPPED}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read calibration file {path}: {exc.strerror}",
                              "make one with `edgepref calibrate PAIRS --out FILE`") from None
        where = str(path)
    try:
        return CalibrationFile.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not JSON: {exc}") from None
