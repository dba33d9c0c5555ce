"""Runs the stages: instructions -> complete (pool) -> evolve -> judge -> verify -> pair.

`STAGES` is the run, in order: each entry is a stage kind (stage.py) that plans its units for
the config, one per model it needs; `Runner` loops over them. One model is resident at a time (a
laptop holds one); units that use the same model in a row share it. Every model request goes
through the unit's request cache (`<unit name>.jsonl` in the run directory's cache), so an
interrupted run resumes where it stopped (store.py). Progress and notices go to an `on_event`
callback; this module never prints. The run directory's files, and what a run may write over,
are rundir.py's.

A run that wrote its files but failed (summary.run_failures: a stage unit whose every request
failed, or no pair because every instruction lost its pair to errors) raises `RunFailed`, which
carries the result; uncertain verdicts are not failures. A shard that receives no instruction
of an input that has some is a run with empty outputs, not an error.
"""

from __future__ import annotations

import time
from functools import cached_property
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..backends.base import Backend
from ..judging.calibration import read_calibration
from ..judging.cascade import Chain, build_chain, check_chain, default_groups, group
from ..stages.complete import CompleteStage
from ..stages.config import PipelineConfig
from ..core.checks import check_path, show_value
from ..core.errors import ConfigError, EdgeprefError, InputError
from ..stages.evolve import EvolveStage
from .hosting import ModelHost, model_identity, read_path, strongest_available_model
from ..data.inputs import InputBatch
from ..stages.judge import JudgeStage
from ..models.modelfiles import availability
from ..stages.pair import PairReport, PairStage, pair_layout
from ..data.conversations import fit_history
from ..core.records import Record
from ..data.review import describe_counts
from ..data.rundir import ERRORS, RunDir, input_identity, refuse_inputs_inside, texts_identity
from ..stages.base import Stage, StageStats
from ..backends.cache import CachedBackend
from ..core.files import write_jsonl_atomic
from .summary import RunSummary, UnitOutcome, run_failures, summarize
from ..stages.verify import VerifyStage

# The run, in order. A kind with a `help` is also a CLI command, `edgepref <kind>`, that runs it
# alone; a kind whose `command` names another's runs with it (`edgepref judge` runs the verdicts).
STAGES: tuple[type[Stage], ...] = (CompleteStage, EvolveStage, JudgeStage, VerifyStage, PairStage)


@dataclass
class Event:
    kind: str  # "stage-start" | "progress" | "stage-end" | "notice"
    stage: str = ""
    model: str = ""
    done: int = 0
    total: int = 0
    tokens: int = 0
    tokens_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0  # what a stage that only reads prompts (a pairwise check) shows
    message: str = ""


EventCallback = Callable[[Event], None]


@dataclass
class RunResult:
    records: list[Record]
    pairs: list
    summary: RunSummary
    drop_reasons: dict[str, str] = field(default_factory=dict)  # record id -> why it has no pair


class RunFailed(EdgeprefError):
    """The run wrote its files but failed (summary.failures says how); `result` is what it made
    (None for a stage command, whose output is its records file)."""

    def __init__(self, message: str, hint: str | None, result: RunResult | None):
        super().__init__(message, hint)
        self.result = result


class Runner:
    """One run over one output directory: `run_all`, or `run_kind` for the stages one by one.
    It is the stages' StageContext (stage.py)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        out_dir: str | Path | None,
        on_event: EventCallback | None = None,
        cache_dir: str | Path | None = None,
        backends: dict[str, Backend] | None = None,
    ):
        self.cfg = cfg.validate()
        self.run_dir = RunDir(out_dir) if out_dir else None
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self.on_event = on_event or (lambda e: None)
        self.host = ModelHost(cfg, backends, on_notice=lambda m: self.on_event(Event("notice", message=m)))
        self.errors: list[dict] = []
        self.started = time.perf_counter()
        self.units: dict[str, StageStats] = {}  # stage unit name -> its counters, in the order they ran
        self.outcomes: dict[str, UnitOutcome] = {}  # stage unit name -> its requests answered and failed
        self._unit: str | None = None  # the unit running now: its errors count against it
        self.source: dict | None = None  # the input's identity (run.json "input"), given to run_all
        self._tmp_cache = None
        if self.run_dir is None and self._cache_dir is None:
            import tempfile

            self._tmp_cache = tempfile.TemporaryDirectory(prefix="edgepref-")
        self.judges = [
            strongest_available_model(registry=self.host.registry) if m == "auto" else m
            for m in cfg.judge.models
        ]

    @property
    def out_dir(self) -> Path | None:
        return self.run_dir.path if self.run_dir else None

    @property
    def evolve_model(self) -> str:
        """The model that rewrites: `[evolve] model`, by default the first judge."""
        return self.cfg.evolve.model or self.judges[0]

    @cached_property
    def chain(self) -> Chain:
        """The verdict chain: `judge.cascade` if set; when the judge is the calibration's first
        (the default judge), the calibration's chain of judges that are here (the embedded 0.5B,
        then the 1.5B when installed); else the judges as one panel. `escalate_to` goes last."""
        j, p = self.cfg.judge, self.cfg.pair
        cal_file = read_calibration(p.calibration) if p.min_confidence is None and not j.cascade else None
        if j.cascade:
            groups = [group(m) for m in j.cascade]
        elif cal_file is not None and self.judges == cal_file.chain[:1]:
            groups = default_groups(cal_file, self.available)
        else:
            groups = [tuple(self.judges)]
        if j.escalate_to and (j.escalate_to,) not in groups:
            groups.append((j.escalate_to,))
        return build_chain(groups, min_confidence=p.min_confidence, target=p.target_agreement,
                           calibration_path=p.calibration, recipe=j.recipe)

    def available(self, model: str) -> bool:
        """Whether `model` can run here: a backend was given for it, or its file or server is there."""
        if model in self.host.provided:
            return True
        entry = self.host.registry.entries.get(model)
        return entry is not None and availability(entry).available

    # -------------------------------------------------------------- what stages see (StageContext)

    @property
    def judge_n_ctx(self) -> int:
        """Context per slot for judge prompts: they hold several responses."""
        return max(self.cfg.judge.n_ctx, self.cfg.engine.n_ctx)

    def error(self, record: Record, stage: str, message: str) -> None:
        self.errors.append({"stage": stage, "id": record.id, "reason": message})
        if self._unit is not None:
            self.outcomes.setdefault(self._unit, UnitOutcome()).fail(message)

    def notice(self, message: str, stage: str = "", model: str = "") -> None:
        self.on_event(Event("notice", stage, model, message=message))

    def stats(self, name: str) -> StageStats:
        return self.units.setdefault(name, StageStats())

    def read_path(self, model: str) -> str:
        return read_path(model, self.cfg, self.host.registry)

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        return self.run_dir.cache_dir if self.run_dir else Path(self._tmp_cache.name)

    def cache(self, name: str, model: str, n_ctx: int, reads: bool = False) -> CachedBackend:
        """The request cache of a stage unit over `model`. A unit of reads (pairwise verdicts)
        keys it by the reads' numerical path too, so verdicts computed another way are never replayed."""
        identity = model_identity(model, self.host.registry)
        if reads:
            identity += "#" + self.read_path(model)
        return CachedBackend(
            name, identity, self.cache_dir / f"{name}.jsonl", lambda: self._load(name, model, n_ctx, reads),
        )

    # -------------------------------------------------------------- plumbing

    def _load(self, name: str, model: str, n_ctx: int, reads: bool = False) -> Backend:
        if model in self.judges:  # load a judge once, with the judge's context, for every stage
            n_ctx = max(n_ctx, self.cfg.judge.n_ctx)
        remote = self.host.registry.remote(model)
        if remote is not None:
            if model not in self.host.servers:
                self.notice(f"{model} runs on {', '.join(remote.endpoints)}", name, model)
        elif self.host.current is None or self.host.current[0] != model:
            self.notice(f"loading {model}", name, model)
        return self.host.get(model, n_ctx, slots=1 if reads and self.cfg.engine.reads_alone else None)

    def _progress(self, name: str, model: str):
        stats = self.stats(name)
        outcome = self.outcomes.setdefault(name, UnitOutcome())

        def callback(progress, result) -> None:
            stats.count(result)
            outcome.answered += bool(result.ok)
            prompt_rate = progress.prompt_tokens / progress.elapsed if progress.elapsed > 0 else 0.0
            self.on_event(Event("progress", name, model, progress.done, progress.total,
                                progress.completion_tokens, progress.tokens_per_second, prompt_rate))
        return callback

    def run_requests(self, name: str, model: str | None, n_ctx: int, total: int, fn, reads: bool = False) -> None:
        """Run `fn(backend, progress_callback)` as the unit `name` on `model` (None: no model):
        cached, timed, counted, reported."""
        self.on_event(Event("stage-start", name, model or "", total=total))
        start = time.perf_counter()
        stats = self.stats(name)
        be = self.cache(name, model, n_ctx, reads) if model else None
        self._unit = name
        try:
            fn(be, self._progress(name, model or ""))
        finally:
            self._unit = None
        stats.seconds += time.perf_counter() - start
        if be is not None:
            stats.cached_requests += be.hits
            stats.continued_requests += be.prefetched
            self.outcomes.setdefault(name, UnitOutcome()).answered += be.hits + be.prefetched
        self.on_event(Event("stage-end", name, model or "", done=total, total=total))

    # -------------------------------------------------------------- the stages

    def run_kind(self, kind: type[Stage], records: list[Record]) -> list[Stage]:
        """Every unit of one stage kind over `records` (in place); returns the units."""
        units = kind.plan(self)
        for unit in units:
            total = unit.total(records, self)
            if not total:
                continue
            self.run_requests(unit.name, unit.model, unit.n_ctx, total,
                              lambda be, cb, unit=unit: unit.run(records, be, self, cb), reads=unit.reads)
        kind.after(records, self)
        return units

    def run_all(self, batch: InputBatch, source: dict | None = None, overwrite: bool = False,
                input_has_instructions: bool | None = None) -> RunResult:
        """Every stage over the batch; the run directory is locked meanwhile. `source` is the
        input's identity for run.json (rundir.input_identity); a run directory made with other
        settings or another input is refused unless `overwrite` (rundir.RunDir.begin). With
        `batch.shard` set and no records the run is an empty shard, a success, unless
        `input_has_instructions` is False (the whole input has none)."""
        self.source = source
        self.preflight(batch.records)  # before DIR is touched: a mistyped model leaves nothing behind
        if self.run_dir is None:
            return self._run_all(batch, input_has_instructions)
        self.run_dir.check_writable()  # before the lock file is made in DIR
        with self.run_dir.lock():
            self.run_dir.begin({**self._header(), "summary": asdict(summarize(batch.records, None, batch, self))},
                               overwrite)
            return self._run_all(batch, input_has_instructions)

    def preflight(self, records: list[Record]) -> None:
        """What can be refused before anything is written or loaded: a pair layout that cannot
        hold the input, ratings that the decision needs and the run does not make, a chain with
        no judge that may decide, a model that is not known or not here."""
        if records:
            pair_layout(records, self.cfg.pair)
        self.cfg.check_ratings_made()
        if self.cfg.pair.decide == "pairwise":
            check_chain(self.chain)
        for model in self.models_needed():
            self.host.check_model(model)

    def models_needed(self) -> list[str]:
        """Every model the run's stages will ask for, in the order they first do."""
        cfg = self.cfg
        needed = [m.model for m in cfg.pool]
        if cfg.evolve.num_evolutions > 0:
            needed.append(self.evolve_model)
        if cfg.judge.mode != "none":
            needed += self.judges
        if cfg.pair.decide == "pairwise":
            needed += [m for d in self.chain.deciders for m in d.models]
        return list(dict.fromkeys(needed))

    def _run_all(self, batch: InputBatch, input_has_instructions: bool | None = None) -> RunResult:
        records = batch.records
        for p in batch.problems:
            self.errors.append({"stage": "input", "row": p.row, "id": p.id, "reason": p.reason})
        if not records:
            if batch.shard is not None and input_has_instructions is not False:
                report = PairReport()  # an empty shard: empty outputs that merge like any other
                return RunResult(records, [], self._write(records, report, batch))
            self._write(records, None, batch)
            raise EdgeprefError(
                f"no usable instructions ({len(batch.problems)} problem rows)",
                f"see {ERRORS} for each row and its reason" if self.run_dir else "check the input",
            )
        self._fit_conversations(records)
        report = PairReport()
        try:
            for kind in STAGES:
                for unit in self.run_kind(kind, records):
                    if isinstance(unit, PairStage):
                        report = unit.report
                if kind is not PairStage:
                    self._write(records, None, batch)
        finally:
            self.host.close()
        result = RunResult(records, report.pairs, self._write(records, report, batch), report.drop_reasons)
        if result.summary.failures:
            raise RunFailed("; ".join(result.summary.failures),
                            f"see {self.run_dir.errors_file if self.run_dir else 'the errors'} for every failed "
                            "request; failed requests are not cached, so the same command retries only them",
                            result)
        return result

    def history_budget(self) -> int:
        """Estimated prompt tokens (conversations.estimated_tokens) that a row's system prompt,
        earlier turns and instruction may take: what the smallest context of the run leaves once
        the answers fit. A completion slot also holds the answer and, when it is rewritten in
        place, the rewrite prompt and the rewrite; a judge prompt holds the responses it rates
        (all of an instruction's, or the two of a verdict) and the judge's answer."""
        cfg = self.cfg
        answer = max(m.max_tokens for m in cfg.pool)
        evolving = cfg.evolve.num_evolutions > 0
        generation = cfg.engine.n_ctx - answer - (cfg.evolve.max_tokens + 160 if evolving else 16)
        longest = max(answer, cfg.evolve.max_tokens if evolving else 0)
        if cfg.judge.mode in ("rationale", "score-only"):
            pool = sum(m.n for m in cfg.pool)
            rewrites = cfg.evolve.num_evolutions * (1 if cfg.evolve.pick == "own" else pool)
            shown = pool + rewrites
            answer_tokens = shown * (cfg.judge.max_rationale_chars + 8 if cfg.judge.mode == "rationale" else 2)
        else:
            shown, answer_tokens = 2, 0
        judging = self.judge_n_ctx - shown * longest - answer_tokens - 300
        return min(generation, judging)

    def _fit_conversations(self, records: list[Record]) -> None:
        """Drop the oldest turns of conversations that would not fit the run's contexts
        (conversations.fit_history), and say how many rows lost turns."""
        budget = self.history_budget()
        trimmed = [r for r in records if r.history and fit_history(r, budget)]
        if trimmed:
            self.notice(f"{len(trimmed)} conversation(s) lost their oldest turns to fit the context "
                        f"(about {budget} prompt tokens; records.jsonl lists each under `dropped`)")

    def _header(self) -> dict:
        """What run.json says the run is: its settings, judges and input."""
        return {"config": asdict(self.cfg), "judges": self.judges, "input": self.source}

    def _write(self, records: list[Record], report, batch: InputBatch | None) -> RunSummary:
        summary = summarize(records, report, batch, self)
        if self.run_dir is None:
            return summary
        run = {**self._header(), "summary": asdict(summary)}
        pairs = (p.to_row() for p in report.pairs) if report is not None else None
        summary.files = self.run_dir.write((r.to_row() for r in records), self.errors, pairs, run)
        summary.review = self.run_dir.review
        if summary.review is not None:
            self.notice(f"review.jsonl: {describe_counts(summary.review)}; pairs.reviewed.jsonl written")
        return summary

    def close(self) -> None:
        self.host.close()
        if self._tmp_cache is not None:
            self._tmp_cache.cleanup()


def run_pipeline(
    source: str | Path | InputBatch | list[str],
    out_dir: str | Path | None = None,
    cfg: PipelineConfig | None = None,
    on_event: EventCallback | None = None,
    backends: dict[str, Backend] | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    **input_options,
) -> RunResult:
    """The whole job: instructions in, DIR/records.jsonl and DIR/pairs.jsonl out.

    `source` is a path or dataset name (see inputs.read_instructions; `input_options` are its
    column, split, limit, shuffle and shard), a list of instruction strings, or an InputBatch.
    With out_dir=None nothing is written; records, pairs and the summary come back either way.
    out_dir must be absent, empty or a run directory; a run directory made with other settings
    or another input is refused unless `overwrite` (see rundir.py). Raises RunFailed (with the
    result) when the run wrote its files but failed. `cache_dir` puts the request cache elsewhere
    than DIR/cache (several runs may share one).
    """
    from ..data.inputs import as_shard, read_instructions, take_shard
    from ..core.records import content_key

    cfg = check_run_arguments(source, out_dir, cfg, on_event, backends, overwrite, cache_dir)
    if "shard" in input_options:
        input_options["shard"] = as_shard(input_options["shard"])
    identity, whole = None, None
    if isinstance(source, InputBatch):
        batch = source
    elif isinstance(source, list):
        texts = [t.strip() for t in source if t.strip()]
        batch = InputBatch(records=[Record(id=content_key("instruction", t), instruction=t) for t in texts])
        identity = texts_identity(texts)
    else:
        if out_dir is not None:  # before reading: nothing a run reads is among what it writes
            RunDir(out_dir).check_writable()
            refuse_inputs_inside(out_dir, [source])
        shard = input_options.pop("shard", None)
        input_options.setdefault("seed", cfg.seed)
        whole = read_instructions(source, **input_options)
        batch = take_shard(whole, *shard) if shard else whole
        identity = input_identity(source, column=whole.column, split=input_options.get("split"),
                                  limit=input_options.get("limit"), shuffle=bool(input_options.get("shuffle")))
    runner = Runner(cfg, out_dir, on_event, cache_dir=cache_dir, backends=backends)
    try:
        return runner.run_all(batch, identity, overwrite,
                              input_has_instructions=bool(whole.records) if whole is not None else None)
    finally:
        runner.close()



def check_run_arguments(source, out_dir, cfg, on_event, backends, overwrite, cache_dir) -> PipelineConfig:
    """run_pipeline's arguments checked at the door, each error naming the argument; the config."""
    if isinstance(source, list):
        bad = next((i for i, t in enumerate(source) if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(f"source[{bad}] = {show_value(source[bad])}: a list of instructions holds strings",
                             "pass instruction texts, or a path to a file of rows")
    elif not isinstance(source, InputBatch):
        check_path("source", source)
    check_path("out_dir", out_dir, optional=True)
    check_path("cache_dir", cache_dir, optional=True)
    if cfg is None:
        cfg = PipelineConfig()
    elif not isinstance(cfg, PipelineConfig):
        raise ConfigError(f"cfg = {show_value(cfg)}: expected a PipelineConfig",
                          "build one with PipelineConfig(...), config_from_dict(a_dict) or load_config(path)")
    if on_event is not None and not callable(on_event):
        raise ConfigError(f"on_event = {show_value(on_event)}: expected a function of one Event")
    if backends is not None and not (isinstance(backends, dict) and all(isinstance(k, str) for k in backends)):
        raise ConfigError(f"backends = {show_value(backends)}: expected a dict of model name -> Backend")
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite = {show_value(overwrite)}: expected true or false")
    return cfg


def stage_commands() -> dict[str, str]:
    """The CLI's stage commands that run models, and their help: one per kind with a `help`."""
    return {kind.command: kind.help for kind in STAGES if kind.help}


def run_single_stage(
    command: str,
    records: list[Record],
    out: str | Path,
    cfg: PipelineConfig,
    on_event: EventCallback | None = None,
    backends: dict[str, Backend] | None = None,
    source: str | Path | None = None,
    empty_shard: bool = False,
) -> tuple[int, list[dict]]:
    """The stage kinds of one stage command over `records`, written to the records JSONL `out`;
    a `.cache` directory beside it makes a rerun resume. `source`, the file the records were
    read from, may not be `out` or lie in its cache. No records is an error, unless
    `empty_shard` (a shard that got none of an input that has some): then `out` is empty.
    Returns the rows written and the per-request errors; raises RunFailed (no result) after
    writing when a unit's every request failed."""
    kinds = [kind for kind in STAGES if kind.command == command]
    if command not in stage_commands():
        raise EdgeprefError(f"unknown stage {command!r}; choose from {', '.join(stage_commands())}")
    out = Path(out)
    cache_dir = out.with_name(out.name + ".cache")
    if source is not None:
        refuse_inputs_inside(out, [source], written=[out, cache_dir])
    if not records:
        if empty_shard:
            return write_jsonl_atomic(out, []), []
        raise EdgeprefError("no usable records to process", "check the input; see the warnings above")
    if command == CompleteStage.command:  # no evolve stage follows: rewrites in place would be lost
        cfg = replace(cfg, evolve=replace(cfg.evolve, in_place=False))
    runner = Runner(cfg, None, on_event, cache_dir=cache_dir, backends=backends)
    if command == CompleteStage.command:
        runner._fit_conversations(records)  # the first stage to see them, as in a run
    try:
        for kind in kinds:
            runner.run_kind(kind, records)
    finally:
        runner.close()
    rows = write_jsonl_atomic(out, (r.to_row() for r in records))
    failures = run_failures(None, runner.errors, runner.outcomes)
    if failures:
        raise RunFailed("; ".join(failures), f"{out} is written; failed requests are not cached, so the same "
                        "command retries only them", None)
    return rows, runner.errors
