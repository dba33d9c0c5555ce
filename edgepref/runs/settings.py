"""Every pipeline option that a flag can set, declared once.

A `Setting` names its flag, where it lands in a `PipelineConfig` and its type; choices come
from the module that owns them. The CLI turns the table into click options
(`edgepref.ui.cli.options.setting_options`) and `apply_overrides` applies the values a user gave on top of
a config file. Adding an option is one row here plus the code that uses the config field.

Targets: "section.field" sets one field ("judge.recipe"), "pool.field" sets that field of every
pool member, a top-level name sets the config's own field. A setting with `apply` does its own
thing (the pool list, endpoints, the seed that the pair stage also uses).
"""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass, replace
from typing import Any, Callable

from ..judging.compare import PAIRWISE_RECIPES
from ..core.checks import check_value, field_type
from ..stages.config import EVOLVE_PICKS, JUDGE_MODES, PRESETS, PipelineConfig, PoolMember
from ..core.errors import ConfigError
from ..stages.config import DECIDERS, PAIR_LAYOUTS, SCORE_KINDS, STRATEGIES
from ..prompts import JUDGE_ASPECTS


@dataclass(frozen=True)
class Setting:
    name: str  # the keyword argument (and click parameter name)
    flag: str  # "--judge-recipe"; "--on/--off" for a boolean pair
    # where the value lands (and what it is checked against); None when `apply` places it
    target: str | None
    type: type = str
    choices: tuple[str, ...] | None = None
    multiple: bool = False
    help: str = ""
    metavar: str | None = None
    short: str | None = None
    apply: Callable[[PipelineConfig, Any], None] | None = None
    # the commands' option groups: "pipeline" (run, try, the stages), "pair" (`edgepref pair`),
    # "eval-judge", "serve"
    groups: tuple[str, ...] = ("pipeline",)

    def given(self, value: Any) -> bool:
        return bool(value) if self.multiple else value is not None


def _set_pool(cfg: PipelineConfig, models) -> None:
    cfg.pool = [PoolMember(m) for m in models]


def _set_seed(cfg: PipelineConfig, seed: int) -> None:
    cfg.seed = seed
    cfg.pair = replace(cfg.pair, seed=seed)


def _add_endpoints(cfg: PipelineConfig, specs) -> None:
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ConfigError(
                f"--endpoint {spec!r} is not MODEL=URL", "example: --endpoint qwen2.5-7b=http://gpu-box:8080/v1"
            )
        table = cfg.models.setdefault(name.strip(), {})
        table["endpoints"] = [*table.get("endpoints", []), url.strip()]


PAIR = ("pipeline", "pair")

SETTINGS: tuple[Setting, ...] = (
    Setting("pool", "--pool", None, multiple=True, metavar="MODEL", apply=_set_pool,
            help="Pool member (repeat for each model)."),
    Setting("system_prompt", "--system-prompt", "pool.system_prompt", help="System prompt for every pool member."),
    Setting("temperature", "--temperature", "pool.temperature", float, help="Sampling temperature of the pool."),
    Setting("max_tokens", "--max-tokens", "pool.max_tokens", int, help="Completion length limit of the pool."),
    Setting("completions", "--completions", "pool.n", int, short="-n", help="Completions per pool member."),
    Setting("judges", "--judge", "judge.models", multiple=True, metavar="MODEL", groups=("pipeline", "eval-judge"),
            help="Judge model; repeat for a panel (default: strongest available)."),
    Setting("aspect", "--aspect", "judge.aspect", choices=JUDGE_ASPECTS,
            help="What the UltraFeedback judge rates."),
    Setting("judge_mode", "--judge-mode", "judge.mode", choices=JUDGE_MODES,
            help="rationale: `score - rationale` lines; score-only: the cheap mode; pairwise: every two "
            "candidates compared in both orders; none: no ratings, the verdict chain alone decides."),
    Setting("both_orders", "--both-orders/--one-order", "judge.both_orders", bool,
            help="Judge twice in opposite orders and average."),
    Setting("judge_recipe", "--judge-recipe", "judge.recipe", choices=tuple(PAIRWISE_RECIPES),
            help="Pairwise recipe that decides chosen/rejected (see `edgepref eval-judge`)."),
    Setting("decide", "--decide", "pair.decide", choices=DECIDERS, groups=PAIR,
            help="pairwise: a two-order pairwise verdict decides chosen/rejected (default); "
            "ratings: the UltraFeedback scores alone."),
    Setting("target_agreement", "--target-agreement", "pair.target_agreement", float,
            help="Agreement with strong labels that each chain judge's decided pairs must reach, by its "
            "calibrated threshold (default: none; each judge decides above its noise floor)."),
    Setting("calibration", "--calibration", "pair.calibration", metavar="FILE",
            help="Thresholds from `edgepref calibrate` (default: the shipped calibration of the embedded judges)."),
    Setting("min_confidence", "--min-confidence", "pair.min_confidence", float, groups=PAIR,
            help="One fixed |margin| threshold for every chain judge instead of calibrated ones "
            "(no agreement promised)."),
    Setting("candidates", "--candidates", "pair.candidates", int,
            help="Candidate pairs per instruction the verdict chain may check, until one is decided."),
    Setting("later_candidates", "--later-candidates", "pair.later_candidates", int,
            help="Candidate pairs each later judge of the chain may check (those the earlier came closest to deciding)."),
    Setting("pairs_per_instruction", "--pairs-per-instruction", "pair.pairs_per_instruction", int, groups=PAIR,
            help="Most pairs written per instruction, decided and not contradicting each other (default: 3 with the pairwise verdicts, 1 with --decide ratings); later judges of the chain only look for a first pair."),
    Setting("cascade", "--cascade", "judge.cascade", multiple=True, metavar="MODEL",
            help="The verdict chain, cheapest judge first (repeat; default: the embedded judges installed)."),
    Setting("escalate_to", "--escalate-to", "judge.escalate_to", metavar="MODEL",
            help="A judge added at the end of the verdict chain for the pairs the others were unsure of."),
    Setting("exclude_self", "--exclude-self/--include-self", "judge.exclude_self", bool,
            help="Panel judges skip their own model's completions."),
    Setting("evolutions", "--evolutions", "evolve.num_evolutions", int,
            help="EvolQuality rewrites per completion (0: off)."),
    Setting("evolve_model", "--evolve-model", "evolve.model", help="Model that rewrites (default: the judge)."),
    Setting("evolve_pick", "--evolve-pick", "evolve.pick", choices=EVOLVE_PICKS,
            help="Pool completions to rewrite: all (the default: every answer, the rewriting model's own as "
                 "follow-up turns of their conversation) or own (one per instruction, its own answer)."),
    Setting("min_margin", "--min-margin", "pair.min_margin", float, groups=PAIR,
            help="Smallest chosen-rejected score gap kept."),
    Setting("pair_strategy", "--pair-strategy", "pair.strategy", choices=STRATEGIES, groups=PAIR,
            help="The rejected response: the worst rated one or a random lower-rated one."),
    Setting("pair_format", "--pair-format", "pair.format", choices=PAIR_LAYOUTS, groups=PAIR,
            help="standard: prompt/chosen/rejected strings; conversational: message lists; auto (default): "
            "conversational when the input has conversations."),
    Setting("pair_score", "--pair-score", "pair.score", choices=SCORE_KINDS, groups=PAIR,
            help="Rank by the judge's integer score or its probability-weighted score."),
    Setting("seed", "--seed", "seed", int, apply=_set_seed, groups=PAIR,
            help="Seed of sampling, shuffles and random pairing."),
    Setting("slots", "--slots", "engine.slots", int, help="Sequences decoded in parallel."),
    Setting("n_ctx", "--n-ctx", "engine.n_ctx", int, groups=("pipeline", "serve"),
            help="Context tokens per slot (serve: default the judge's context)."),
    Setting("threads", "--threads", "engine.threads", int, groups=("pipeline", "serve"),
            help="CPU threads (default: all cores)."),
    Setting("gpu_layers", "--n-gpu-layers", "engine.gpu_layers", int,
            help="Layers to offload to CUDA/Metal (default: all when the build has a GPU backend)."),
    Setting("endpoints", "--endpoint", None, multiple=True, metavar="MODEL=URL", apply=_add_endpoints,
            help="Run MODEL on an OpenAI-compatible server (repeat for several endpoints)."),
)
BY_NAME = {s.name: s for s in SETTINGS}
PRESET_NAMES = tuple(PRESETS)


def settings_for(group: str) -> list[Setting]:
    return [s for s in SETTINGS if group in s.groups]


def _target_type(target: str) -> tuple[Any, Any]:
    """(type, limits) of the config field a setting's target names ("pool.max_tokens": PoolMember's)."""
    section, _, attr = target.rpartition(".")
    if not section:
        return field_type(PipelineConfig, attr)
    owner = PoolMember if section == "pool" else field_type(PipelineConfig, section)[0]
    return field_type(owner, attr)


def _check_flag(setting: Setting, value: Any) -> None:
    """The value a flag (or a keyword of the Python API) gave, against the field it lands in, so
    that the message names the flag; the pool and endpoints are checked by validate()."""
    flag = setting.flag.split("/")[0]
    if setting.multiple and (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple))):
        raise ConfigError(f"{flag} {value!r}: expected a list of values (repeat the flag for each)",
                          f"in Python: {setting.name}=[{value!r}]")
    if setting.target:
        check_value(flag, list(value) if setting.multiple else value, *_target_type(setting.target), sep=" ")


def _assign(cfg: PipelineConfig, target: str, value: Any) -> None:
    section, _, attr = target.rpartition(".")
    if section == "pool":
        for member in cfg.pool:
            setattr(member, attr, value)
        return
    owner = getattr(cfg, section) if section else cfg
    value = list(value) if isinstance(value, tuple) else value
    if is_dataclass(owner) and owner.__dataclass_params__.frozen:
        setattr(cfg, section, replace(owner, **{attr: value}))
    else:
        setattr(owner, attr, value)


def apply_overrides(cfg: PipelineConfig, **values: Any) -> PipelineConfig:
    """Flag values on top of a config, in table order: a value left unset (None, or empty for a
    repeated flag) keeps the config's. Pool-wide flags apply to every pool member (after --pool).
    `models_file` is accepted beside the table's names. Each value is checked against the field it
    lands in before it is set (a ConfigError names the flag), and the result as a whole after.
    Returns the validated config."""
    models_file = values.pop("models_file", None)
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    for setting in SETTINGS:
        value = values.get(setting.name)
        if not setting.given(value):
            continue
        _check_flag(setting, value)
        if setting.apply:
            setting.apply(cfg, value)
        else:
            _assign(cfg, setting.target, value)
    if models_file is not None:
        cfg.models_file = str(models_file)
    return cfg.validate()
