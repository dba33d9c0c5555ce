"""The chain of pairwise judges that decides chosen/rejected: cheap judge first, the next one for
the pairs it is not sure of, pairs no judge is sure of dropped as uncertain.

A decider is one judge model, or a panel whose margin is the mean of its members'. Its
threshold is, by default, its noise floor: how far its margins move when the same prompts are
decoded another way (measured by `edgepref calibrate`, kept in the calibration file), so no
verdict is decided by rounding. With a target agreement it is the threshold calibrated for that
target (edgepref.judging.calibration): the pairs it decides agree with strong labels at least that often
with a stated probability. Or one fixed `--min-confidence` for every decider (no statement). A
decider whose calibration keeps nothing at the target is not run at all.

The verdict of a record (record.judge_info["verdict"]):
  x, y          the shortlisted completion ids; margin > 0 means x is better
  margins       decider name -> its margin of x over y
  margin        the margin of the decider that decided, else of the last one asked
  asked         the models of the decider whose margin that is
  decided_by    the models of the decider that decided ([] when none was sure)
  threshold     that decider's |margin| threshold
  agreement     its calibrated agreement (None when uncalibrated)
  read_path     how its prompts were computed ("split-512": each decoded alone, split where the
                responses start; edgepref.backends.engine.prefixes)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .calibration import Calibration, CalibrationFile, read_calibration
from ..core.errors import ConfigError

# The |margin| threshold of a decider that no calibration covers (a judge you named, at the
# default settings): above the noise floor of both embedded judges (README, "Noise floor"),
# with no agreement promised.
UNCALIBRATED_MIN_CONFIDENCE = 0.1


@dataclass(frozen=True)
class Decider:
    models: tuple[str, ...]
    threshold: float | None  # None: decides nothing (not run)
    agreement: float | None = None  # calibrated agreement of what it decides; None: uncalibrated

    @property
    def name(self) -> str:
        return "+".join(self.models)


@dataclass
class Chain:
    deciders: list[Decider]
    target: float | None = None  # the calibration's target agreement (None: uncalibrated)
    risk: float | None = None
    calibration: Calibration | None = None
    notes: tuple[str, ...] = ()
    noise: dict = field(default_factory=dict)  # judge -> its measured noise floor (calibration file)
    # the highest target of the calibration file at which some judge of this chain decides pairs
    reachable: float | None = None

    @property
    def active(self) -> list[Decider]:
        return [d for d in self.deciders if d.threshold is not None]

    def describe(self) -> str:
        parts = []
        for d in self.deciders:
            if d.threshold is None:
                parts.append(f"{d.name} (skipped: keeps nothing at the target)")
            elif d.agreement is not None:
                parts.append(f"{d.name} (|margin| >= {d.threshold:g}, calibrated agreement {d.agreement:.0%})")
            elif self.target is None and d.name in self.noise:
                parts.append(f"{d.name} (|margin| >= {d.threshold:g}, its noise floor)")
            else:
                parts.append(f"{d.name} (|margin| >= {d.threshold:g}, uncalibrated)")
        return " -> ".join(parts)


def build_chain(groups: list[tuple[str, ...]], *, min_confidence: float | None, target: float | None,
                calibration_path: str | None, recipe: str) -> Chain:
    """The chain for these decider groups (each a model or a panel, in order). With a fixed
    `min_confidence` every decider uses it; otherwise thresholds come from the calibration file
    (the shipped one when `calibration_path` is None): at `target`, the calibrated ones; with no
    target, each judge's measured noise floor."""
    if min_confidence is not None:
        return Chain([Decider(g, min_confidence) for g in groups])
    cal_file = read_calibration(calibration_path)
    if cal_file.recipe != recipe:
        if calibration_path is not None:
            raise ConfigError(
                f"{calibration_path} calibrates recipe {cal_file.recipe!r}, the run uses {recipe!r}",
                f"calibrate with --judge-recipe {recipe}, or run with --judge-recipe {cal_file.recipe}",
            )
        return Chain([Decider(g, UNCALIBRATED_MIN_CONFIDENCE) for g in groups],
                     notes=(f"no shipped calibration for recipe {recipe}: verdicts need |margin| >= "
                            f"{UNCALIBRATED_MIN_CONFIDENCE:g}, with no agreement promised",))
    if target is None:  # each judge decides above its noise floor, as the calibration measured it
        deciders, notes = [], []
        for g in groups:
            floors = [(cal_file.noise.get(m) or {}).get("floor") for m in g]
            if None in floors:
                notes.append(f"{'+'.join(g)} has no measured noise floor: it decides at |margin| >= "
                             f"{UNCALIBRATED_MIN_CONFIDENCE:g}")
                deciders.append(Decider(g, UNCALIBRATED_MIN_CONFIDENCE))
            else:
                deciders.append(Decider(g, max(floors)))
        return Chain(deciders, None, None, None, tuple(notes), cal_file.noise)
    cal = cal_file.at(target)
    deciders, notes = [], []
    for g in groups:
        jc = cal.for_judge("+".join(g))
        if jc is None:
            deciders.append(Decider(g, UNCALIBRATED_MIN_CONFIDENCE))
            notes.append(f"{'+'.join(g)} is not in the calibration: it decides at |margin| >= "
                         f"{UNCALIBRATED_MIN_CONFIDENCE:g}, with no agreement promised "
                         "(calibrate it with `edgepref calibrate`)")
        else:
            deciders.append(Decider(g, jc.threshold, jc.agreement))
    names = {"+".join(g) for g in groups}
    reach = [c.target for c in cal_file.calibrations if any(j.decides and j.judge in names for j in c.judges)]
    return Chain(deciders, cal.target, cal.risk, cal, tuple(notes), cal_file.noise, max(reach, default=None))


def check_chain(chain: Chain) -> None:
    """A chain with no judge that may decide would drop every pair as uncertain: say so before
    anything runs, and what to do."""
    if chain.active:
        return
    names = ", ".join(d.name for d in chain.deciders)
    if chain.reachable is not None:
        hint = f"lower --target-agreement to {chain.reachable:g} or less"
    else:
        hint = ("this calibration certifies none of these judges at any of its targets: calibrate a "
                "stronger judge on labelled pairs like yours (edgepref calibrate)")
    raise ConfigError(
        f"no judge of the verdict chain ({names}) is calibrated to decide pairs at target agreement "
        f"{chain.target:g}: every pair would be dropped as uncertain",
        hint + "; or leave --target-agreement out (each judge decides above its noise floor, no "
        "agreement promised)",
    )


def decide(chain: Chain, margins: dict[str, float | None]) -> tuple[Decider | None, float | None]:
    """The first active decider sure of a pair, given each decider's margin on it (by name), and
    that margin; (None, None) when none is."""
    for d in chain.active:
        m = margins.get(d.name)
        if m is not None and abs(m) >= d.threshold:
            return d, m
    return None, None


def group(name: str) -> tuple[str, ...]:
    """A decider's models from its name: "a" is one judge, "a+b" a panel of two."""
    return tuple(m.strip() for m in name.split("+") if m.strip())


def default_groups(cal_file: CalibrationFile, available) -> list[tuple[str, ...]]:
    """The calibration's chain, its deciders whose judges are all installed."""
    return [g for g in map(group, cal_file.chain) if all(available(m) for m in g)]


def settle(verdict: dict, decider: Decider, margin: float, read_path: str) -> bool:
    """Record `decider`'s margin on a verdict; it decides when |margin| reaches its threshold.
    Returns whether it decided."""
    verdict["margins"][decider.name] = round(margin, 4)
    verdict["margin"] = round(margin, 4)
    verdict["asked"] = list(decider.models)
    verdict["read_path"] = read_path
    if decider.threshold is None or abs(margin) < decider.threshold:
        verdict["decided_by"] = []
        return False
    verdict.update(decided_by=list(decider.models), threshold=decider.threshold, agreement=decider.agreement)
    return True
