"""Pipeline configuration: dataclasses, one TOML file, command-line overrides on top.

A config file looks like:

    seed = 0
    [engine]
    n_ctx = 2048
    slots = 16
    [[pool]]
    model = "qwen2.5-coder-0.5b"
    system_prompt = "You are a helpful assistant."
    temperature = 0.7
    [[pool]]
    model = "smollm2-135m"
    [evolve]
    num_evolutions = 1
    [judge]
    models = ["qwen2.5-coder-0.5b"]
    aspect = "overall"
    [pair]
    min_margin = 1.0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .engine.core import DEFAULT_PROMPT_BLOCK, DEFAULT_READ_BLOCK, DEFAULT_SLOTS
from .errors import ConfigError
from .pair import PairConfig
from .prompts import EVOL_CRITERIA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EMBEDDED_POOL = ("qwen2.5-coder-0.5b", "smollm2-135m")
COURSE_POOL = ("smollm2-1.7b", "qwen2.5-1.5b")
JUDGE_MODES = ("rationale", "score-only", "pairwise")
# which pool completions EvolQuality rewrites: "own", one per instruction, the evolving model's
# own (else the first pool member's); "all", every one (edgepref.evolve.parents)
EVOLVE_PICKS = ("own", "all")


@dataclass
class PoolMember:
    """One model of the pool, with its own prompt and sampling."""

    model: str
    system_prompt: str | None = None
    template: str = "{{ instruction }}"  # jinja2; the user message sent to this member
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    max_tokens: int = 256
    n: int = 1
    label: str | None = None  # completion ids start with it; defaults to the model name

    @property
    def name(self) -> str:
        return self.label or self.model


@dataclass
class EvolveConfig:
    num_evolutions: int = 1  # 0 turns the stage off; >1 chains rewrites of rewrites
    model: str | None = None  # default: the judge's first model
    members: list[str] | None = None  # evolve only these pool members' completions (None: all)
    # "own": one completion per instruction, the evolving model's own answer; "all": every pool
    # completion (README, "Prompt tokens per pair": "own" with in_place reads 62.5% of the prompt
    # tokens per written pair that "all" in requests of their own read)
    pick: str = "own"
    # rewrite the evolving model's own answers as follow-up turns of their completion requests,
    # in the slot that holds the conversation (its KV cache is reused); false: in the evolve
    # stage, each a request of its own, decoded as prompt blocks like any other
    in_place: bool = True
    criteria: list[str] = field(default_factory=lambda: list(EVOL_CRITERIA))
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    max_tokens: int = 320


@dataclass
class JudgeConfig:
    models: list[str] = field(default_factory=lambda: ["auto"])  # "auto": strongest available
    aspect: str = "overall"
    mode: str = "rationale"  # rationale | score-only | pairwise
    expected: bool = True  # probability-weighted scores beside the integer ones
    shuffle: bool = True  # show responses in a seeded random order
    both_orders: bool = False  # judge again in reversed order and average
    exclude_self: bool = False  # a panel judge does not rate its own model's completions
    max_rationale_chars: int = 120
    n_ctx: int = 4096
    # the pairwise recipe (edgepref.compare.PAIRWISE_RECIPES) that verifies chosen/rejected and drives
    # pairwise mode; the default measured best on the dev pairs (scripts/eval_judge_recipes.py)
    recipe: str = "headings-ab"
    # a model that decides the pairs this judge (or panel) is uncertain about, instead of
    # dropping them; a bigger local model or a server entry of the registry
    escalate_to: str | None = None
    # the verdict chain (edgepref.cascade), cheapest judge first; None: with the default judge,
    # the calibration's chain of embedded judges that are installed, else the judges as one panel
    # (then escalate_to)
    cascade: list[str] | None = None


@dataclass
class EngineConfig:
    n_ctx: int = 2048
    slots: int = DEFAULT_SLOTS
    threads: int | None = None
    gpu_layers: int | None = None
    # prompts are decoded in blocks of this many tokens and reused at block boundaries (the
    # engine's determinism rule); one block of n_batch decodes a short prompt in one call
    prompt_block: int = DEFAULT_PROMPT_BLOCK
    # reads (pairwise verdicts) are decoded alone, each prompt in blocks of this many tokens, so
    # a verdict depends on its prompt only (edgepref.engine.core, "Reads")
    read_block: int = DEFAULT_READ_BLOCK
    # false: reads are scheduled beside other requests like generation (in prompt_block blocks);
    # only for measuring the noise floor of verdicts (edgepref eval-judge --noise-pairs)
    reads_alone: bool = True


@dataclass
class PipelineConfig:
    pool: list[PoolMember] = field(default_factory=lambda: [PoolMember(m) for m in EMBEDDED_POOL])
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = 0
    # near-copies above this: a pool completion is regenerated, a rewrite of its parent dropped
    similarity_threshold: float = 0.9
    models_file: str | None = None
    # [models.NAME] tables: new models or overrides of registry fields (endpoints, served_model,
    # api_key_env, api, max_in_flight, sources...), on top of models.toml and models_file;
    # checked by registry.load_registry when a run starts, before any model loads.
    models: dict = field(default_factory=dict)

    def validate(self) -> "PipelineConfig":
        if not self.pool:
            raise ConfigError("the pool is empty", "add at least one [[pool]] member or --pool MODEL")
        names = [m.name for m in self.pool]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"pool members must have distinct names, got {names}",
                "give members that share a model a distinct `label`",
            )
        if self.judge.mode not in JUDGE_MODES:
            raise ConfigError(f"judge mode {self.judge.mode!r} is unknown; choose from {', '.join(JUDGE_MODES)}")
        from .compare import get_recipe

        get_recipe(self.judge.recipe)
        if not 0.0 < self.similarity_threshold <= 1.0:
            raise ConfigError(f"similarity_threshold must be in (0, 1], got {self.similarity_threshold}")
        if self.evolve.pick not in EVOLVE_PICKS:
            raise ConfigError(f"evolve pick {self.evolve.pick!r} is unknown; choose from {', '.join(EVOLVE_PICKS)}")
        if self.evolve.num_evolutions < 0:
            raise ConfigError("evolve num_evolutions must be >= 0")
        return self


def _course() -> PipelineConfig:
    cfg = PipelineConfig(pool=[PoolMember(m) for m in COURSE_POOL])
    cfg.judge.models = ["qwen2.5-1.5b"]
    return cfg


# Named starting points: the offline default and the course chapter's pool and judge.
PRESETS = {"embedded": PipelineConfig, "course": _course}


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


def _build(cls, raw: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}",
            f"known settings: {', '.join(sorted(known))}",
        )
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_from_dict(raw: dict, base: PipelineConfig | None = None) -> PipelineConfig:
    cfg = base or PipelineConfig()
    raw = dict(raw)
    sections = {"evolve": EvolveConfig, "judge": JudgeConfig, "pair": PairConfig, "engine": EngineConfig}
    updates: dict = {}
    if "pool" in raw:
        pool = raw.pop("pool")
        if not isinstance(pool, list):
            raise ConfigError("`pool` must be a list of [[pool]] tables")
        updates["pool"] = [_build(PoolMember, dict(m), f"[[pool]] #{i + 1}") for i, m in enumerate(pool)]
    for name, cls in sections.items():
        if name in raw:
            merged = {f.name: getattr(getattr(cfg, name), f.name) for f in fields(cls)}
            section = raw.pop(name)
            if not isinstance(section, dict):
                raise ConfigError(f"[{name}] must be a table")
            merged.update(section)
            updates[name] = _build(cls, merged, f"[{name}]")
    top = {f.name for f in fields(PipelineConfig)} - set(sections) - {"pool"}
    for key in list(raw):
        if key not in top:
            raise ConfigError(f"unknown top-level setting {key!r}", f"known: {', '.join(sorted(top | set(sections) | {'pool'}))}")
        updates[key] = raw.pop(key)
    return replace(cfg, **updates).validate()


def load_config(path: str | Path | None = None, base: PipelineConfig | None = None) -> PipelineConfig:
    if path is None:
        return (base or PipelineConfig()).validate()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(raw, base)
