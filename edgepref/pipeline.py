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
from functools import cached_property
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .backend import Backend
from .complete import complete
from .config import PipelineConfig
from .errors import EdgeprefError
from .evolve import continuation, evolve
from .inputs import InputBatch
from .compare import self_preference_notice
from .judge import judge, panel_agreement, verify
from .calibration import read_calibration
from .cascade import Chain, build_chain, check_chain, default_groups, group, settle
from .pair import pair_records, shortlist
from .records import Record
from .modelfiles import availability
from .hosting import ModelHost, model_identity, read_path, strongest_available_model
from .store import CachedBackend, write_jsonl_atomic, write_text_atomic
from .summary import RunSummary, summarize


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
        self.cached_requests = 0
        self.continued_requests = 0
        self.stage_seconds: dict[str, float] = {}
        self.stage_completion_tokens: dict[str, int] = {}
        # prompt tokens per stage: decoded, and reused from the KV cache instead (fresh requests)
        self.stage_prompt_tokens: dict[str, dict[str, int]] = {}
        self._tmp_cache = None
        if self.out_dir is None and self._cache_dir is None:
            import tempfile

            self._tmp_cache = tempfile.TemporaryDirectory(prefix="edgepref-")
        self.judges = [
            strongest_available_model(registry=self.host.registry) if m == "auto" else m
            for m in cfg.judge.models
        ]

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

    # -------------------------------------------------------------- plumbing

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        return (self.out_dir / "cache") if self.out_dir else Path(self._tmp_cache.name)

    def backend(self, stage: str, model: str, n_ctx: int, reads: bool = False) -> CachedBackend:
        """The cached backend of a stage. A stage of reads (pairwise verdicts) keys its cache by
        the reads' numerical path too, so verdicts computed another way are never replayed."""
        identity = model_identity(model, self.host.registry)
        if reads:
            identity += "#" + read_path(model, self.cfg, self.host.registry)
        return CachedBackend(
            stage, identity, self.cache_dir / f"{stage}.jsonl", lambda: self._load(stage, model, n_ctx, reads),
        )

    def _load(self, stage: str, model: str, n_ctx: int, reads: bool = False) -> Backend:
        if model in self.judges:  # load a judge once, with the judge's context, for every stage
            n_ctx = max(n_ctx, self.cfg.judge.n_ctx)
        remote = self.host.registry.remote(model)
        if remote is not None:
            if model not in self.host.servers:
                self.on_event(Event("notice", stage, model, message=f"{model} runs on {', '.join(remote.endpoints)}"))
        elif self.host.current is None or self.host.current[0] != model:
            self.on_event(Event("notice", stage, model, message=f"loading {model}"))
        return self.host.get(model, n_ctx, slots=1 if reads and self.cfg.engine.reads_alone else None)

    def _count(self, stage: str, result) -> None:
        """Add a fresh result's tokens to its stage: generated, and prompt decoded or reused."""
        tokens = sum(g.completion_tokens for g in result.generations)
        self.stage_completion_tokens[stage] = self.stage_completion_tokens.get(stage, 0) + tokens
        prompt = self.stage_prompt_tokens.setdefault(stage, {"decoded": 0, "cached": 0})
        samples = max(1, len(result.generations))
        prompt["decoded"] += result.prompt_tokens * samples - result.cached_prompt_tokens
        prompt["cached"] += result.cached_prompt_tokens

    def _progress(self, stage: str, model: str):
        def callback(progress, result) -> None:
            self._count(stage, result)
            prompt_rate = progress.prompt_tokens / progress.elapsed if progress.elapsed > 0 else 0.0
            self.on_event(Event("progress", stage, model, progress.done, progress.total,
                                progress.completion_tokens, progress.tokens_per_second, prompt_rate))
        return callback

    def _error(self, record: Record, stage: str, message: str) -> None:
        self.errors.append({"stage": stage, "id": record.id, "reason": message})

    @property
    def completion_tokens(self) -> int:
        """Tokens generated by this runner's fresh requests, all stages."""
        return sum(self.stage_completion_tokens.values())

    @property
    def judge_n_ctx(self) -> int:
        """Context per slot for judge prompts: they hold several responses."""
        return max(self.cfg.judge.n_ctx, self.cfg.engine.n_ctx)

    def run_stage(self, stage: str, model: str, n_ctx: int, total: int, fn, reads: bool = False) -> None:
        """Run `fn(backend, progress_callback)` as one stage on `model`: cached, timed, reported."""
        self.on_event(Event("stage-start", stage, model, total=total))
        start = time.perf_counter()
        be = self.backend(stage, model, n_ctx, reads)
        fn(be, self._progress(stage, model))
        self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start, 2)
        self.cached_requests += be.hits
        self.continued_requests += be.prefetched
        self.on_event(Event("stage-end", stage, model, done=total, total=total))

    # -------------------------------------------------------------- stages

    def complete(self, records: list[Record]) -> list[Record]:
        evolve_model = self.cfg.evolve.model or self.judges[0]
        # The member that shares a model with the next stage goes last: one load fewer.
        members = sorted(self.cfg.pool, key=lambda m: m.model == evolve_model)
        for m in members:
            then, on_follow_ups = self._evolve_in_place(m, evolve_model)
            self.run_stage(
                f"complete-{m.name}", m.model, self.cfg.engine.n_ctx, len(records),
                lambda be, cb, m=m, then=then, on_follow_ups=on_follow_ups: complete(
                    records, m, be, seed=self.cfg.seed, similarity_threshold=self.cfg.similarity_threshold,
                    on_result=cb, on_error=self._error, then=then, on_follow_ups=on_follow_ups,
                ),
            )
        # Put members back in pool order inside each record, whatever order they ran in.
        order = {m.name: i for i, m in enumerate(self.cfg.pool)}
        for r in records:
            r.completions.sort(key=lambda c: (c.source != "pool", order.get(c.member, 99), c.id))
        return records

    def _evolve_in_place(self, member, evolve_model: str):
        """For a pool member whose answers EvolQuality rewrites with the same model: the rewrite
        request as a follow-up of each completion request (it runs in the slot that holds the
        conversation), and where its answer goes: the evolve stage's request cache, and the
        evolve stage's token counts. (None, None) for any other member."""
        cfg = self.cfg.evolve
        own = [m for m in self.cfg.pool if m.model == evolve_model]
        if not cfg.in_place or member.model != evolve_model or (cfg.pick == "own" and member is not own[0]):
            return None, None
        cache = self.backend("evolve", evolve_model, self.cfg.engine.n_ctx)

        def then(record, k):
            return continuation(record, member.name, member.model, k, evolve_model, cfg, self.cfg.seed)

        def on_follow_ups(results) -> None:
            cache.prefetch(results)
            for result in results:
                self._count("evolve", result)

        return then, on_follow_ups

    def evolve(self, records: list[Record]) -> list[Record]:
        if self.cfg.evolve.num_evolutions < 1:
            return records
        model = self.cfg.evolve.model or self.judges[0]
        self.run_stage(
            "evolve", model, self.cfg.engine.n_ctx, len(records),
            lambda be, cb: evolve(records, model, be, self.cfg.evolve, seed=self.cfg.seed,
                                  similarity_threshold=self.cfg.similarity_threshold,
                                  on_result=cb, on_error=self._error),
        )
        return records

    def judge(self, records: list[Record]) -> list[Record]:
        if self.cfg.pair.decide == "pairwise":
            check_chain(self.chain)  # before the ratings: a chain that decides nothing is an error
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
        """The pairwise check of every shortlisted pair by the chain of deciders: each decides
        the pairs it is sure of and passes the rest to the next; a pair no decider is sure of
        keeps an empty `decided_by` (the pair stage drops it as uncertain)."""
        pending = {}
        for r in records:
            proposed = shortlist(r, self.cfg.pair)
            if not isinstance(proposed, str):
                pending[r.id] = (proposed[0].completion.id, proposed[1].completion.id)
        by_id = {r.id: r for r in records}
        if pending:
            for note in (f"verdicts: {self.chain.describe()}", *self.chain.notes):
                self.on_event(Event("notice", "verify", message=note))
        for decider in self.chain.active:
            if not pending:
                break
            got = []
            for m in decider.models:
                got.append(self._check(records, pending, m))
            for rid in list(pending):
                margins = [g.get(rid) for g in got]
                if None in margins:
                    continue  # this decider could not judge it: the next one may
                path = read_path(decider.models[0], self.cfg, self.host.registry)
                if settle(by_id[rid].judge_info["verdict"], decider, sum(margins) / len(margins), path):
                    del pending[rid]
        return records

    def _check(self, records: list[Record], shortlists: dict, model: str) -> dict[str, float]:
        out: dict[str, float] = {}
        self.run_stage(
            f"verify-{model}", model, self.judge_n_ctx, len(shortlists),
            lambda be, cb: out.update(verify(records, shortlists, model, be, self.cfg.judge,
                                             on_result=cb, on_error=self._error)),
            reads=True,
        )
        return out

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
        if self.cfg.pair.decide == "pairwise":
            check_chain(self.chain)  # before any model runs
        try:
            for stage in (self.complete, self.evolve, self.judge):
                stage(records)
                self._write(records, None, batch)
            report = self.pair(records)
        finally:
            self.host.close()
        return RunResult(records, report.pairs, self._write(records, report, batch), report.drop_reasons)

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
        write_text_atomic(self.out_dir / "run.json", json.dumps(run, indent=2, default=str))
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



STAGES = ("complete", "evolve", "judge")


def run_single_stage(
    stage: str,
    records: list[Record],
    out: str | Path,
    cfg: PipelineConfig,
    on_event: EventCallback | None = None,
    backends: dict[str, Backend] | None = None,
) -> tuple[int, list[dict]]:
    """One stage over `records`, written to the records JSONL `out`; a `.cache` directory beside
    it makes a rerun resume. Returns the rows written and the per-request errors."""
    if stage not in STAGES:
        raise EdgeprefError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    if not records:
        raise EdgeprefError("no usable records to process", "check the input; see the warnings above")
    out = Path(out)
    if stage == "complete":  # no evolve stage follows in this run: rewrites in place would be lost
        cfg = replace(cfg, evolve=replace(cfg.evolve, in_place=False))
    runner = Runner(cfg, None, on_event, cache_dir=out.with_name(out.name + ".cache"), backends=backends)
    try:
        getattr(runner, stage)(records)
    finally:
        runner.close()
    return write_jsonl_atomic(out, (r.to_row() for r in records)), runner.errors
