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

import difflib
import os
import inspect
import sys
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from ..judging.compare import PAIRWISE_RECIPES
from ..backends.engine.core import DEFAULT_PROMPT_BLOCK, DEFAULT_READ_BLOCK, DEFAULT_SLOTS, Engine
from ..core.checks import C_INT_MAX, check_fields, check_path, show_value
from ..core.errors import ConfigError
from ..prompts import EVOL_CRITERIA, JUDGE_ASPECTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EMBEDDED_POOL = ("qwen2.5-coder-0.5b", "smollm2-135m")
COURSE_POOL = ("smollm2-1.7b", "qwen2.5-1.5b")
# "none": no UltraFeedback ratings, the verdict chain alone decides chosen/rejected (its
# candidate pairs in a fixed order, pair.candidate_pairs)
JUDGE_MODES = ("rationale", "score-only", "pairwise", "none")
# which pool completions EvolQuality rewrites: "own", one per instruction, the evolving model's
# own (else the first pool member's); "all", every one (edgepref.stages.evolve.parents)
EVOLVE_PICKS = ("own", "all")
# pairs written per instruction by default with the pairwise verdicts: on the 16 dev instructions
# the chain's first judge decided 27 pairs for 12 of them with 3 (12 with 1, 21 with 2), checking
# 67 candidate pairs instead of 35 (docs/judge.md#more-pairs-from-the-same-instructions)
PAIRS_PER_INSTRUCTION = 3

# ---------------------------------------------------------------- allowed values
#
# What a field allows sits beside it, in its dataclass field's metadata, and `check_fields` reads
# it with the field's type, so a config file, a flag and the Python API meet the same rule:
#   ge, gt, le, lt  bounds of a number (a float must also be finite: run.json is JSON, no NaN)
#   choices         the names allowed (for a list: for each item)
#   nonempty        text or a list that may not be empty

NONEMPTY = {"nonempty": True}
# 0 is greedy; OpenAI-compatible servers refuse more than 2, and a small model is noise long before
TEMPERATURE = {"ge": 0.0, "le": 2.0}
TOP_P = {"gt": 0.0, "le": 1.0}
TOP_K = {"ge": 0, "le": C_INT_MAX}  # 0 turns top-k off
TOKENS = {"ge": 1, "le": C_INT_MAX}
# a slot must hold a chat template, an instruction and an answer; fewer tokens cannot
CONTEXT = {"ge": 64, "le": C_INT_MAX}
# a prompt block is decoded in one llama_decode call, so it cannot exceed the engine's batch
BLOCK = {"ge": 1, "le": inspect.signature(Engine).parameters["n_batch"].default}


@dataclass
class PoolMember:
    """One model of the pool, with its own prompt and sampling."""

    model: str = field(metadata=NONEMPTY)
    system_prompt: str | None = None
    # jinja2; the user message sent to this member
    template: str = field(default="{{ instruction }}", metadata=NONEMPTY)
    temperature: float = field(default=0.7, metadata=TEMPERATURE)
    top_p: float = field(default=0.95, metadata=TOP_P)
    top_k: int = field(default=40, metadata=TOP_K)
    max_tokens: int = field(default=256, metadata=TOKENS)
    n: int = field(default=1, metadata={"ge": 1, "le": C_INT_MAX})
    # completion ids start with it; defaults to the model name
    label: str | None = field(default=None, metadata=NONEMPTY)

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):  # PoolMember(Path("my-model.gguf")), as a name is
            self.model = os.fspath(self.model)

    @property
    def name(self) -> str:
        return self.label or self.model


@dataclass
class EvolveConfig:
    # 0 turns the stage off; >1 chains rewrites of rewrites
    num_evolutions: int = field(default=1, metadata={"ge": 0, "le": C_INT_MAX})
    model: str | None = field(default=None, metadata=NONEMPTY)  # default: the judge's first model
    members: list[str] | None = None  # evolve only these pool members' completions (None: all)
    # "all" (the default): every pool completion; "own": one per instruction, the evolving model's
    # own answer. Small models often hand their own answer back unchanged (a near-copy, dropped),
    # while a rewrite of another model's answer differs from it: on the dev instructions "all"
    # gave the verdict chain a pair it decides for 13 of 16 instructions against 10 for "own"
    # (docs/judge.md, "More pairs from the same instructions")
    pick: str = field(default="all", metadata={"choices": EVOLVE_PICKS})
    # rewrite the evolving model's own answers as follow-up turns of their completion requests,
    # in the slot that holds the conversation (its KV cache is reused); false: in the evolve
    # stage, each a request of its own, decoded as prompt blocks like any other
    in_place: bool = True
    criteria: list[str] = field(default_factory=lambda: list(EVOL_CRITERIA),
                                metadata={"choices": EVOL_CRITERIA, "nonempty": True})
    temperature: float = field(default=0.7, metadata=TEMPERATURE)
    top_p: float = field(default=0.95, metadata=TOP_P)
    top_k: int = field(default=40, metadata=TOP_K)
    max_tokens: int = field(default=320, metadata=TOKENS)


@dataclass
class JudgeConfig:
    # "auto": strongest available
    models: list[str] = field(default_factory=lambda: ["auto"], metadata=NONEMPTY)
    aspect: str = field(default="overall", metadata={"choices": JUDGE_ASPECTS})
    # "none" (the default): no UltraFeedback ratings. Measured on the dev pairs, the ratings agree
    # with strong labels at chance (docs/judge.md, "Why the ratings only shortlist"), and letting
    # them order the candidate pairs wrote no more pairs than the fixed order, for a rating call
    # per instruction (docs/judge.md, "More pairs from the same instructions"). "rationale" and
    # "score-only" rate as the UltraFeedback method does, for datasets that want the scores.
    mode: str = field(default="none", metadata={"choices": JUDGE_MODES})
    expected: bool = True  # probability-weighted scores beside the integer ones
    shuffle: bool = True  # show responses in a seeded random order
    both_orders: bool = False  # judge again in reversed order and average
    exclude_self: bool = False  # a panel judge does not rate its own model's completions
    max_rationale_chars: int = field(default=120, metadata={"ge": 1, "le": C_INT_MAX})
    n_ctx: int = field(default=4096, metadata=CONTEXT)
    # the pairwise recipe (edgepref.judging.compare.PAIRWISE_RECIPES) that verifies chosen/rejected and drives
    # pairwise mode; the default measured best on the dev pairs (scripts/eval_judge_recipes.py)
    recipe: str = field(default="headings-ab", metadata={"choices": tuple(PAIRWISE_RECIPES)})
    # a model that decides the pairs this judge (or panel) is uncertain about, instead of
    # dropping them; a bigger local model or a server entry of the registry
    escalate_to: str | None = field(default=None, metadata=NONEMPTY)
    # the verdict chain (edgepref.judging.cascade), cheapest judge first; None: with the default judge,
    # the calibration's chain of embedded judges that are installed, else the judges as one panel
    # (then escalate_to)
    cascade: list[str] | None = None


@dataclass
class EngineConfig:
    n_ctx: int = field(default=2048, metadata=CONTEXT)
    # llama.cpp keeps at most LLAMA_MAX_SEQ (256) sequences in one context
    slots: int = field(default=DEFAULT_SLOTS, metadata={"ge": 1, "le": 256})
    threads: int | None = field(default=None, metadata={"ge": 1, "le": C_INT_MAX})
    # unset offloads every layer when the build has a GPU backend; llama.cpp reads a negative
    # number as none, not as llama-cpp-python's "all"
    gpu_layers: int | None = field(default=None, metadata={"ge": 0, "le": C_INT_MAX})
    # prompts are decoded in blocks of this many tokens and reused at block boundaries (the
    # engine's determinism rule); one block of n_batch decodes a short prompt in one call
    prompt_block: int = field(default=DEFAULT_PROMPT_BLOCK, metadata=BLOCK)
    # reads (pairwise verdicts) are decoded alone, each prompt in blocks of this many tokens, so
    # a verdict depends on its prompt only (edgepref.backends.engine.core, "Reads")
    read_block: int = field(default=DEFAULT_READ_BLOCK, metadata=BLOCK)
    # false: reads are scheduled beside other requests like generation (in prompt_block blocks);
    # only for measuring the noise floor of verdicts (edgepref eval-judge --noise-pairs)
    reads_alone: bool = True
    # reads whose requests carry marks (pairwise verdicts: where each response starts) are split
    # there and their prefixes saved, so checks of one instruction's pairs decode its text once
    # (edgepref.backends.engine.prefixes); false: each read decoded whole in read_block blocks
    split_reads: bool = True


# the pair stage's choices (edgepref.stages.pair)
STRATEGIES = ("best-worst", "best-random")
DECIDERS = ("pairwise", "ratings")
SCORE_KINDS = ("score", "expected")  # what ranks completions: the integer score or the expected one
# how a pair's prompt/chosen/rejected are written; "auto": conversational when the input has a
# conversation (earlier turns or a row's system prompt), else standard (pair.pair_layout)
PAIR_LAYOUTS = ("auto", "standard", "conversational")


@dataclass
class PairConfig:
    # what each field allows is in its metadata (check_fields)
    strategy: str = field(default="best-worst", metadata={"choices": STRATEGIES})
    min_margin: float = field(default=1.0, metadata={"ge": 0.0})
    # "expected" (the default: it measured best in scripts/eval_judge_recipes.py) ranks by the mean
    # probability-weighted score; "score" by the mean integer score.
    score: str = field(default="expected", metadata={"choices": SCORE_KINDS})
    format: str = field(default="auto", metadata={"choices": PAIR_LAYOUTS})
    decide: str = field(default="pairwise", metadata={"choices": DECIDERS})
    # None (the default): each judge of the verdict chain decides the pairs above its threshold
    # (edgepref.judging.cascade), and a pair none decided is uncertain. A number: one fixed |margin|
    # threshold for every judge, with no agreement promised.
    min_confidence: float | None = field(default=None, metadata={"ge": 0.0})
    # None (the default): each judge's threshold is its measured noise floor (no agreement
    # promised). A number: the agreement with strong labels that each judge's decided pairs must
    # reach with probability 1 - risk, by the calibration (the shipped one, or `calibration`, a
    # file of `edgepref calibrate`)
    target_agreement: float | None = field(default=None, metadata={"gt": 0.0, "lt": 1.0})
    calibration: str | None = field(default=None, metadata={"nonempty": True})
    seed: int = field(default=0, metadata={"ge": 0})
    system_prompt: str | None = None  # conversational format only
    # decide = "pairwise": how many candidate pairs of one instruction the verdict chain may
    # check (most separated first when rated), stopping once `pairs_per_instruction` are decided;
    # 6 is every pair of the default run's four completions (two answers, two rewrites)
    candidates: int = field(default=6, metadata={"ge": 1, "le": C_INT_MAX})
    # decide = "pairwise": how many of them each later (dearer) judge of the chain may check, the
    # ones the earlier judges came closest to deciding first
    later_candidates: int = field(default=1, metadata={"ge": 1, "le": C_INT_MAX})
    # the most pairs written per instruction (TRL takes several rows per prompt), decided pairs
    # that do not contradict each other; None: PAIRS_PER_INSTRUCTION with the pairwise verdicts,
    # 1 with the ratings, which decide one (see `pairs_wanted`)
    pairs_per_instruction: int | None = field(default=None, metadata={"ge": 1, "le": C_INT_MAX})

    def __post_init__(self) -> None:
        check_fields(self, "[pair]")

    @property
    def pairs_wanted(self) -> int:
        """The most pairs written per instruction: `pairs_per_instruction`, or its default."""
        if self.pairs_per_instruction is not None:
            return self.pairs_per_instruction
        return PAIRS_PER_INSTRUCTION if self.decide == "pairwise" else 1


@dataclass
class PipelineConfig:
    pool: list[PoolMember] = field(default_factory=lambda: [PoolMember(m) for m in EMBEDDED_POOL],
                                   metadata=NONEMPTY)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = field(default=0, metadata={"ge": 0})
    # near-copies above this: a pool completion is regenerated, a rewrite of its parent dropped
    similarity_threshold: float = field(default=0.9, metadata={"gt": 0.0, "le": 1.0})
    models_file: str | None = field(default=None, metadata=NONEMPTY)
    # [models.NAME] tables: new models or overrides of registry fields (endpoints, served_model,
    # api_key_env, api, max_in_flight, sources...), on top of models.toml and models_file;
    # checked by registry.load_registry when a run starts, before any model loads.
    models: dict[str, dict] = field(default_factory=dict)

    def check_ratings_made(self) -> None:
        """A run that decides by the ratings must make them (the `pair` command, which reads
        records rated before, need not)."""
        if self.judge.mode == "none" and self.pair.decide == "ratings":
            raise ConfigError(
                "[pair] decide = \"ratings\" needs ratings, and [judge] mode = \"none\" makes none",
                "use --decide pairwise (the verdict chain decides), or a judge mode that rates "
                "(--judge-mode rationale or score-only)",
            )

    def validate(self) -> "PipelineConfig":
        """Every field against its type and limits (`check_fields`), then the rules between
        fields. Raises ConfigError naming the key, its value and what is allowed."""
        check_fields(self)
        for i, member in enumerate(self.pool, start=1):
            _check_template(member.template, f"[[pool]] #{i} template")
        names = [m.name for m in self.pool]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"pool members must have distinct names, got {names}",
                "give members that share a model a distinct `label`",
            )
        if self.pair.decide == "ratings" and self.pair.pairs_wanted > 1:
            raise ConfigError(
                f"[pair] pairs_per_instruction = {self.pair.pairs_per_instruction} needs the pairwise "
                "verdicts: the ratings decide one pair per instruction",
                "use --decide pairwise, or leave --pairs-per-instruction at 1",
            )
        strangers = [m for m in self.evolve.members or () if m not in names]
        if strangers:
            raise ConfigError(
                f"[evolve] members = {show_value(self.evolve.members)}: {', '.join(strangers)} is not a pool member"
                f" (the pool: {', '.join(names)})",
                "name pool members by their label, else their model",
            )
        return self


def _check_template(template: str, name: str) -> None:
    """A pool member's user-message template must parse as jinja2 and use the instruction, and
    nothing else: complete.py renders it with `instruction` alone, after the model has loaded."""
    try:
        names = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{name} = {show_value(template)}: not a jinja2 template ({exc.message}, line {exc.lineno})",
                          'the default is "{{ instruction }}"') from None
    if names != {"instruction"}:
        other = sorted(names - {"instruction"})
        raise ConfigError(
            f"{name} = {show_value(template)}: " + (f"uses {', '.join(other)}; only instruction is known" if other
                                               else "does not use {{ instruction }}"),
            'the default is "{{ instruction }}"',
        )


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


def _build(cls, raw: Any, where: str):
    """A config dataclass from one TOML table; its values are checked by `check_fields`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} = {show_value(raw)}: expected a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(map(str, set(raw) - known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}{_near(unknown[0], known)}",
                          f"known settings: {', '.join(sorted(known))}")
    missing = [f.name for f in fields(cls)
               if f.name not in raw and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(missing)}", f"add {missing[0]} = ... to {where}")
    return cls(**raw)


def _near(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def config_from_dict(raw: dict, base: PipelineConfig | None = None) -> PipelineConfig:
    """A config from a TOML document's tables over `base` (default: PipelineConfig()), checked
    before it is returned; anything wrong is a ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config is a table of settings, not {show_value(raw)}")
    if base is not None and not isinstance(base, PipelineConfig):
        raise ConfigError(f"base = {show_value(base)}: expected a PipelineConfig or None")
    cfg = base or PipelineConfig()
    raw = dict(raw)
    sections = {"evolve": EvolveConfig, "judge": JudgeConfig, "pair": PairConfig, "engine": EngineConfig}
    updates: dict = {}
    if "pool" in raw:
        pool = raw.pop("pool")
        if not isinstance(pool, list):
            raise ConfigError(f"pool = {show_value(pool)}: expected a list of [[pool]] tables",
                              'write one [[pool]] table per member, each with model = "NAME"')
        updates["pool"] = [_build(PoolMember, m, f"[[pool]] #{i + 1}") for i, m in enumerate(pool)]
    for name, cls in sections.items():
        if name in raw:
            section = raw.pop(name)
            if not isinstance(section, dict):
                raise ConfigError(f"{name} = {show_value(section)}: expected a [{name}] table")
            merged = {f.name: getattr(getattr(cfg, name), f.name) for f in fields(cls)}
            updates[name] = _build(cls, {**merged, **section}, f"[{name}]")
    top = {f.name for f in fields(PipelineConfig)} - set(sections) - {"pool"}
    for key in list(raw):
        if key not in top:
            known = top | set(sections) | {"pool"}
            raise ConfigError(f"unknown top-level setting {show_value(key)}{_near(str(key), known)}",
                              f"known: {', '.join(sorted(known))}")
        updates[key] = raw.pop(key)
    return replace(cfg, **updates).validate()


def load_config(path: str | Path | None = None, base: PipelineConfig | None = None) -> PipelineConfig:
    """`path`'s TOML over `base` (default: PipelineConfig()); a ConfigError names the file."""
    if base is not None and not isinstance(base, PipelineConfig):
        raise ConfigError(f"base = {show_value(base)}: expected a PipelineConfig or None")
    if path is None:
        return (base or PipelineConfig()).validate()
    check_path("path", path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          "save the config file as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        return config_from_dict(raw, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", exc.hint) from None
