"""Runs the stages: instructions -> complete (pool) -> evolve -> judge -> pair -> pairs.jsonl.

One model is resident at a time (a laptop holds one); stages that use the same model in a row
share it. Every model request goes through a per-stage request cache in DIR/cache/, so an
interrupted run resumes where it stopped (see store.py). Progress and notices go to an
`on_event` callback; this module never prints.

Files in DIR: records.jsonl (one row per instruction, every field of every stage),
pairs.jsonl (TRL DPO rows), errors.jsonl (input rows and requests that failed, with reasons),
run.json (config and summary), cache/ (resume data).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .backend import Backend
from .complete import complete
from .config import PipelineConfig
from .errors import EdgeprefError
from .evolve import evolve
from .inputs import InputBatch
from .compare import self_preference_notice
from .judge import judge, panel_agreement, verify
from .pair import pair_records, rank_completions, shortlist, uncertain
from .records import Record
from .registry import availability, load_registry, resolve_model_path
from .store import CachedBackend, write_jsonl_atomic


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
class RunSummary:
    out_dir: str | None
    instructions: int = 0
    input_problems: int = 0
    duplicates: int = 0
    completions_per_model: dict = field(default_factory=dict)
    evolutions_kept: int = 0
    evolutions_dropped: dict = field(default_factory=dict)
    ratings: int = 0
    pairs: int = 0
    pairs_dropped: dict = field(default_factory=dict)
    mean_margin: float | None = None
    mean_confidence: float | None = None  # mean pairwise margin of written pairs (decide = pairwise)
    decided_by: dict = field(default_factory=dict)  # judge(s) -> written pairs they decided
    score_histogram: dict = field(default_factory=dict)  # model -> {"1": n, ..., "5": n}
    request_errors: int = 0
    wall_seconds: float = 0.0
    completion_tokens: int = 0
    tokens_per_second: float = 0.0
    cached_requests: int = 0
    stage_seconds: dict = field(default_factory=dict)
    judges: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    shard: list | None = None  # [index, count] when the run was one shard of its input
    endpoints: dict = field(default_factory=dict)  # model -> per-endpoint request counts


@dataclass
class RunResult:
    records: list[Record]
    pairs: list
    summary: RunSummary


def strongest_available_model(models_file: str | None = None, registry=None) -> str:
    registry = registry or load_registry(models_file)
    ranked = sorted(registry.entries.values(), key=lambda e: -e.strength)
    for entry in ranked:
        if availability(entry).available:
            return entry.name
    raise EdgeprefError(
        "no model is available locally to act as the judge",
        "install the embedded models: pip install 'edgepref[models]'",
    )


class ModelHost:
    """Holds at most one loaded local engine; asking for another model closes the current one
    first. Models with endpoints run on servers (remote.ServerBackend) and take no local memory."""

    def __init__(self, cfg: PipelineConfig, provided: dict[str, Backend] | None = None, on_notice=None):
        self.cfg = cfg
        self.registry = load_registry(cfg.models_file, cfg.models)
        self.provided = provided or {}  # backends owned by the caller (tests, notebooks): never closed
        self.on_notice = on_notice or (lambda message: None)
        self.current: tuple[str, int] | None = None
        self.engine = None
        self.servers: dict[str, Backend] = {}
        self.loads: list[str] = []

    def get(self, model: str, n_ctx: int) -> Backend:
        from .engine import Engine

        if model in self.provided:
            return self.provided[model]
        entry = self.registry.remote(model)
        if entry is not None:
            if model not in self.servers:
                from .remote import ServerBackend

                self.servers[model] = ServerBackend.from_entry(entry, on_notice=self.on_notice)
            return self.servers[model]
        if self.current and self.current[0] == model and self.current[1] >= n_ctx:
            return self.engine
        self.close()
        e = self.cfg.engine
        path = resolve_model_path(model, self.registry)
        self.engine = Engine(
            path, n_ctx=n_ctx, n_slots=e.slots, n_threads=e.threads, n_gpu_layers=e.gpu_layers,
            seed=self.cfg.seed, prompt_block=e.prompt_block,
        )
        self.engine.name = model
        self.current = (model, n_ctx)
        self.loads.append(model)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.current = None, None


def model_identity(model: str, registry) -> str:
    """What the request cache keys a model by: its resolved file's name and size, or for a model
    on servers its served id (any endpoint of it gives the same answers)."""
    entry = registry.remote(model)
    if entry is not None:
        return f"{model}@server:{entry.served_model or '-'}"
    path = resolve_model_path(model, registry)
    return f"{model}@{path.name}:{path.stat().st_size}"


class Runner:
    """One run over one output directory. Stages can be called one by one or via `run_all`."""

    def __init__(
        self,
        cfg: PipelineConfig,
        out_dir: str | Path | None,
        on_event: EventCallback | None = None,
        cache_dir: str | Path | None = None,
        backends: dict[str, Backend] | None = None,
    ):
        self.cfg = cfg.validate()
        self.out_dir = Path(out_dir) if out_dir else None
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self.on_event = on_event or (lambda e: None)
        self.host = ModelHost(cfg, backends, on_notice=lambda m: self.on_event(Event("notice", message=m)))
        self.errors: list[dict] = []
        self.started = time.perf_counter()
        self.completion_tokens = 0
        self.cached_requests = 0
        self.stage_seconds: dict[str, float] = {}
        self._tmp_cache = None
        if self.out_dir is None and self._cache_dir is None:
            import tempfile

            self._tmp_cache = tempfile.TemporaryDirectory(prefix="edgepref-")
        self.judges = [
            strongest_available_model(registry=self.host.registry) if m == "auto" else m
            for m in cfg.judge.models
        ]

    # -------------------------------------------------------------- plumbing

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        return (self.out_dir / "cache") if self.out_dir else Path(self._tmp_cache.name)

    def backend(self, stage: str, model: str, n_ctx: int) -> CachedBackend:
        return CachedBackend(
            stage, model_identity(model, self.host.registry), self.cache_dir / f"{stage}.jsonl",
            lambda: self._load(stage, model, n_ctx),
        )

    def _load(self, stage: str, model: str, n_ctx: int) -> Backend:
        if model in self.judges:  # load a judge once, with the judge's context, for every stage
            n_ctx = max(n_ctx, self.cfg.judge.n_ctx)
        remote = self.host.registry.remote(model)
        if remote is not None:
            if model not in self.host.servers:
                self.on_event(Event("notice", stage, model, message=f"{model} runs on {', '.join(remote.endpoints)}"))
        elif self.host.current is None or self.host.current[0] != model:
            self.on_event(Event("notice", stage, model, message=f"loading {model}"))
        return self.host.get(model, n_ctx)

    def _progress(self, stage: str, model: str):
        def callback(progress, result) -> None:
            self.completion_tokens += sum(g.completion_tokens for g in result.generations)
            prompt_rate = progress.prompt_tokens / progress.elapsed if progress.elapsed > 0 else 0.0
            self.on_event(Event("progress", stage, model, progress.done, progress.total,
                                progress.completion_tokens, progress.tokens_per_second, prompt_rate))
        return callback

    def _error(self, record: Record, stage: str, message: str) -> None:
        self.errors.append({"stage": stage, "id": record.id, "reason": message})

    @property
    def judge_n_ctx(self) -> int:
        """Context per slot for judge prompts: they hold several responses."""
        return max(self.cfg.judge.n_ctx, self.cfg.engine.n_ctx)

    def run_stage(self, stage: str, model: str, n_ctx: int, total: int, fn) -> None:
        """Run `fn(backend, progress_callback)` as one stage on `model`: cached, timed, reported."""
        self.on_event(Event("stage-start", stage, model, total=total))
        start = time.perf_counter()
        be = self.backend(stage, model, n_ctx)
        fn(be, self._progress(stage, model))
        self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start, 2)
        self.cached_requests += be.hits
        self.on_event(Event("stage-end", stage, model, done=total, total=total))

    # -------------------------------------------------------------- stages

    def complete(self, records: list[Record]) -> list[Record]:
        evolve_model = self.cfg.evolve.model or self.judges[0]
        # The member that shares a model with the next stage goes last: one load fewer.
        members = sorted(self.cfg.pool, key=lambda m: m.model == evolve_model)
        for m in members:
            self.run_stage(
                f"complete-{m.name}", m.model, self.cfg.engine.n_ctx, len(records),
                lambda be, cb, m=m: complete(
                    records, m, be, seed=self.cfg.seed, similarity_threshold=self.cfg.similarity_threshold,
                    on_result=cb, on_error=self._error,
                ),
            )
        # Put members back in pool order inside each record, whatever order they ran in.
        order = {m.name: i for i, m in enumerate(self.cfg.pool)}
        for r in records:
            r.completions.sort(key=lambda c: (c.source != "pool", order.get(c.id.split(":")[0], 99), c.id))
        return records

    def evolve(self, records: list[Record]) -> list[Record]:
        if self.cfg.evolve.num_evolutions < 1:
            return records
        model = self.cfg.evolve.model or self.judges[0]
        self.run_stage(
            "evolve", model, self.cfg.engine.n_ctx, len(records),
            lambda be, cb: evolve(records, model, be, self.cfg.evolve, seed=self.cfg.seed,
                                  on_result=cb, on_error=self._error),
        )
        return records

    def judge(self, records: list[Record]) -> list[Record]:
        pool_models = {m.model for m in self.cfg.pool}
        for j in self.judges:
            if j in pool_models and not (self.cfg.judge.exclude_self and len(self.judges) > 1):
                self.on_event(Event("notice", "judge", j, message=self_preference_notice(j, self.cfg.judge.recipe)))
        for j in self.judges:
            self.run_stage(
                f"judge-{j}", j, self.judge_n_ctx, len(records),
                lambda be, cb, j=j: judge(records, j, be, self.cfg.judge, seed=self.cfg.seed,
                                          on_result=cb, on_error=self._error),
            )
        if len(self.judges) > 1:
            for r in records:
                r.judge_info["panel_agreement"] = panel_agreement(r)
        if self.cfg.pair.decide == "pairwise":
            self.verify(records)
        return records

    def verify(self, records: list[Record]) -> list[Record]:
        """The pairwise check of every shortlisted pair, then the escalation of uncertain ones."""
        shortlists = {}
        for r in records:
            proposed = shortlist(r, self.cfg.pair)
            if not isinstance(proposed, str):
                shortlists[r.id] = (proposed[0].completion.id, proposed[1].completion.id)
        for j in self.judges:
            self.run_stage(
                f"verify-{j}", j, self.judge_n_ctx, len(shortlists),
                lambda be, cb, j=j: verify(records, shortlists, j, be, self.cfg.judge,
                                           on_result=cb, on_error=self._error),
            )
        top = self.cfg.judge.escalate_to
        margins = {r.id: (r.judge_info.get("verdict") or {}).get("margin") for r in records}
        doubtful = {i: xy for i, xy in shortlists.items()
                    if margins[i] is not None and uncertain(margins[i], self.cfg.pair)}
        if top and doubtful:
            self.run_stage(
                f"escalate-{top}", top, self.judge_n_ctx, len(doubtful),
                lambda be, cb: verify(records, doubtful, top, be, self.cfg.judge, escalated=True,
                                      on_result=cb, on_error=self._error),
            )
        return records

    def pair(self, records: list[Record]):
        return pair_records(records, self.cfg.pair)

    # -------------------------------------------------------------- whole run

    def run_all(self, batch: InputBatch) -> RunResult:
        records = batch.records
        for p in batch.problems:
            self.errors.append({"stage": "input", "row": p.row, "id": p.id, "reason": p.reason})
        if not records:
            self._write(records, None, batch)
            raise EdgeprefError(
                f"no usable instructions ({len(batch.problems)} problem rows)",
                "see errors.jsonl for each row and its reason" if self.out_dir else "check the input",
            )
        try:
            for stage in (self.complete, self.evolve, self.judge):
                stage(records)
                self._write(records, None, batch)
            report = self.pair(records)
        finally:
            self.host.close()
        return RunResult(records, report.pairs, self._write(records, report, batch))

    def _write(self, records: list[Record], report, batch: InputBatch | None) -> RunSummary:
        summary = summarize(records, report, batch, self)
        if self.out_dir is None:
            return summary
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = {"records": self.out_dir / "records.jsonl", "errors": self.out_dir / "errors.jsonl"}
        write_jsonl_atomic(files["records"], (r.to_row() for r in records))
        write_jsonl_atomic(files["errors"], self.errors)
        if report is not None:
            files["pairs"] = self.out_dir / "pairs.jsonl"
            write_jsonl_atomic(files["pairs"], (p.to_row() for p in report.pairs))
        summary.files = {k: str(v) for k, v in files.items()}
        import json

        run = {"config": asdict(self.cfg), "judges": self.judges, "summary": asdict(summary)}
        (self.out_dir / "run.json").write_text(json.dumps(run, indent=2, default=str))
        return summary

    def close(self) -> None:
        self.host.close()
        if self._tmp_cache is not None:
            self._tmp_cache.cleanup()


def summarize(records: list[Record], report, batch: InputBatch | None, runner: Runner) -> RunSummary:
    s = RunSummary(out_dir=str(runner.out_dir) if runner.out_dir else None)
    s.instructions = len(records)
    if batch is not None:
        s.input_problems, s.duplicates = len(batch.problems), batch.duplicates
        s.shard = list(batch.shard) if batch.shard else None
    per_model: Counter = Counter()
    hist: dict[str, Counter] = defaultdict(Counter)
    dropped: Counter = Counter()
    for r in records:
        for c in r.completions:
            per_model[f"{c.model} ({c.source})"] += 1
        s.evolutions_kept += sum(1 for c in r.completions if c.source == "evol")
        dropped.update(d["reason"] for d in r.dropped if d.get("stage") == "evolve")
        s.ratings += len(r.ratings)
        models = {c.id: c.model for c in r.completions}
        for rank in rank_completions(r, runner.cfg.pair.score):
            hist[models[rank.completion.id]][str(int(round(rank.primary)))] += 1
    s.completions_per_model = dict(per_model)
    s.evolutions_dropped = dict(dropped)
    s.score_histogram = {m: {str(k): h.get(str(k), 0) for k in range(1, 6)} for m, h in hist.items()}
    if report is not None:
        s.pairs = len(report.pairs)
        s.pairs_dropped = dict(report.dropped)
        s.mean_margin = sum(report.margins) / len(report.margins) if report.margins else None
        if report.confidences:
            s.mean_confidence = sum(report.confidences) / len(report.confidences)
        s.decided_by = dict(Counter(p.decided_by for p in report.pairs if p.decided_by))
    s.request_errors = sum(1 for e in runner.errors if e["stage"] != "input")
    s.wall_seconds = time.perf_counter() - runner.started
    s.completion_tokens = runner.completion_tokens
    s.tokens_per_second = s.completion_tokens / s.wall_seconds if s.wall_seconds else 0.0
    s.cached_requests = runner.cached_requests
    s.stage_seconds = dict(runner.stage_seconds)
    s.judges = list(runner.judges)
    s.endpoints = {name: be.endpoint_stats() for name, be in runner.host.servers.items()}
    return s


def run_pipeline(
    source: str | Path | InputBatch | list[str],
    out_dir: str | Path | None = None,
    cfg: PipelineConfig | None = None,
    on_event: EventCallback | None = None,
    backends: dict[str, Backend] | None = None,
    **input_options,
) -> RunResult:
    """The whole job: instructions in, DIR/records.jsonl and DIR/pairs.jsonl out.

    `source` is a path or dataset name (see inputs.read_instructions), a list of instruction
    strings, or an InputBatch. With out_dir=None nothing is written; records, pairs and the
    summary come back either way.
    """
    from .inputs import read_instructions
    from .records import content_key

    if isinstance(source, InputBatch):
        batch = source
    elif isinstance(source, list):
        batch = InputBatch(records=[Record(id=content_key("instruction", t.strip()), instruction=t.strip())
                                    for t in source if t.strip()])
    else:
        batch = read_instructions(source, **input_options)
    runner = Runner(cfg or PipelineConfig(), out_dir, on_event, backends=backends)
    try:
        return runner.run_all(batch)
    finally:
        runner.close()

