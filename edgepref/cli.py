"""The `edgepref` command line: click groups and commands, nothing else.

Each command body parses its options, calls one library function and hands the result to
display.py. Errors: `EdgeprefGroup` catches EdgeprefError from any command below it and prints
`error: ...` / `hint: ...` on stderr with exit code 1; `--debug` (or EDGEPREF_DEBUG=1) lets
the traceback through instead.

Adding a command: decorate a function with `@cli.command()` (or a group with `@cli.group()`),
give its docstring a `\\b` "Example:" block (tests check every --help has one), and reuse the
shared options below (`models_file_option`). If a body does more than parse, call and render,
the work belongs in the library.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, display
from .errors import EdgeprefError
from .compare import RECIPES as COMPARE_RECIPES
from .evaljudge import SELF_PREFERENCE_N, recipe_names
from .pair import DECIDERS
from .ggufmeta import summarize_gguf
from .registry import availability, load_registry, pull_model, resolve_model_path

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def package_version() -> str:
    try:
        return importlib.metadata.version("edgepref")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return __version__


class EdgeprefGroup(click.Group):
    """A click group that turns library errors into two lines on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeprefError as exc:
            if _debug(ctx):
                raise
            display.render_error(exc)
            ctx.exit(1)
        except OSError as exc:  # disk full, permission denied: the user can act on these
            if _debug(ctx):
                raise
            display.render_error(str(exc), "run again with --debug to see where it happened")
            ctx.exit(1)
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            display.render_error("interrupted", "finished work is saved; run the same command again to resume")
            ctx.exit(130)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug"))


# ---------------------------------------------------------------- shared options


def models_file_option(func: F) -> F:
    return click.option(
        "--models-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="A models.toml merged over the built-in and user registries (its entries win).",
    )(func)


# ---------------------------------------------------------------- root


@click.group(cls=EdgeprefGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_version(), "--version", prog_name="edgepref")
@click.option(
    "--debug",
    is_flag=True,
    envvar="EDGEPREF_DEBUG",
    help="Show full tracebacks instead of one-line errors.",
)
def cli(debug: bool) -> None:
    """Turn a list of instructions into a DPO preference dataset, offline, with llama.cpp.

    \b
    Example:
      edgepref models list
      edgepref --debug models info qwen2.5-coder-0.5b
    """


# ---------------------------------------------------------------- models


@cli.group()
def models() -> None:
    """List, locate, download and inspect GGUF models.

    \b
    Example:
      edgepref models list
      edgepref models path qwen2.5-coder-0.5b
    """


@models.command("list")
@models_file_option
def models_list(models_file: Path | None) -> None:
    """List every known model and whether it is available on this machine now.

    A model that is not available shows the command that makes it available.

    \b
    Example:
      edgepref models list
      edgepref models list --models-file my-models.toml
    """
    registry = load_registry(models_file)
    display.render_models_table((entry, availability(entry)) for entry in registry.entries.values())


@models.command("path")
@click.argument("name")
@models_file_option
def models_path(name: str, models_file: Path | None) -> None:
    """Print the local path of model NAME (a registry name or a .gguf file), verified.

    Nothing is downloaded: a model that is not on this machine is an error that says how
    to get it.

    \b
    Example:
      edgepref models path qwen2.5-coder-0.5b
      llama-cli -m "$(edgepref models path smollm2-135m)"
    """
    display.render_path(resolve_model_path(name, load_registry(models_file)))


@models.command("pull")
@click.argument("name")
@models_file_option
def models_pull(name: str, models_file: Path | None) -> None:
    """Download model NAME from the Hugging Face Hub (if not already local); print its path.

    The file goes to the Hugging Face cache and is checked against the registry's size and
    sha256. This is the only edgepref command that uses the network.

    \b
    Example:
      edgepref models pull qwen2.5-1.5b
    """
    display.render_path(pull_model(name, load_registry(models_file)))


@models.command("info")
@click.argument("name")
@models_file_option
@click.option("--template", "show_template", is_flag=True, help="Also print the chat template.")
def models_info(name: str, models_file: Path | None, show_template: bool) -> None:
    """Show the GGUF metadata of model NAME (a registry name or a .gguf file).

    \b
    Example:
      edgepref models info qwen2.5-coder-0.5b
      edgepref models info ./my-model.Q4_K_M.gguf --template
    """
    path = resolve_model_path(name, load_registry(models_file))
    display.render_gguf_summary(summarize_gguf(path), show_template=show_template)


# ---------------------------------------------------------------- the pipeline


def input_options(func: F) -> F:
    for opt in reversed([
        click.option("--column", default=None, help="Instruction column (default: instruction, then prompt)."),
        click.option("--split", default=None, help="Dataset split for Hub datasets and DatasetDicts."),
        click.option("--limit", type=int, default=None, help="Use only the first N instructions."),
        click.option("--shuffle", is_flag=True, help="Shuffle the rows (with --seed) before --limit."),
        click.option("--shard", default=None, metavar="I/N",
                     help="Process only shard I of N (0 <= I < N) of the input; combine with `edgepref merge`."),
    ]):
        func = opt(func)
    return func


def pipeline_options(func: F) -> F:
    """Options shared by run, try and the stage commands; each overrides the config file."""
    for opt in reversed([
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Pipeline config (TOML); flags override it."),
        click.option("--preset", type=click.Choice(["embedded", "course"]), default=None,
                     help="Start from a named config: embedded models (default) or the course's pool."),
        click.option("--pool", multiple=True, metavar="MODEL", help="Pool member (repeat for each model)."),
        click.option("--system-prompt", default=None, help="System prompt for every pool member."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature of the pool."),
        click.option("--max-tokens", type=int, default=None, help="Completion length limit of the pool."),
        click.option("--completions", "-n", type=int, default=None, help="Completions per pool member."),
        click.option("--judge", "judges", multiple=True, metavar="MODEL",
                     help="Judge model; repeat for a panel (default: strongest available)."),
        click.option("--aspect", type=click.Choice(["overall", "helpfulness", "honesty",
                                                    "instruction-following", "truthfulness"]), default=None),
        click.option("--judge-mode", type=click.Choice(["rationale", "score-only", "pairwise"]), default=None),
        click.option("--both-orders/--one-order", default=None, help="Judge twice in opposite orders and average."),
        click.option("--judge-recipe", type=click.Choice(list(COMPARE_RECIPES)), default=None,
                     help="Pairwise recipe that decides chosen/rejected (see `edgepref eval-judge`)."),
        click.option("--decide", type=click.Choice(list(DECIDERS)), default=None,
                     help="pairwise: a two-order pairwise verdict decides chosen/rejected (default); "
                     "ratings: the UltraFeedback scores alone."),
        click.option("--min-confidence", type=float, default=None,
                     help="Drop a pair as uncertain when its pairwise |margin| is below this."),
        click.option("--escalate-to", default=None, metavar="MODEL",
                     help="A second judge that decides the uncertain pairs instead of dropping them."),
        click.option("--exclude-self/--include-self", default=None,
                     help="Panel judges skip their own model's completions."),
        click.option("--evolutions", type=int, default=None, help="EvolQuality rewrites per completion (0: off)."),
        click.option("--evolve-model", default=None, help="Model that rewrites (default: the judge)."),
        click.option("--min-margin", type=float, default=None, help="Smallest chosen-rejected score gap kept."),
        click.option("--pair-strategy", type=click.Choice(["best-worst", "best-random"]), default=None),
        click.option("--pair-format", type=click.Choice(["standard", "conversational"]), default=None),
        click.option("--pair-score", type=click.Choice(["score", "expected"]), default=None,
                     help="Rank by the judge's integer score or its probability-weighted score."),
        click.option("--seed", type=int, default=None),
        click.option("--slots", type=int, default=None, help="Sequences decoded in parallel."),
        click.option("--n-ctx", type=int, default=None, help="Context tokens per slot."),
        click.option("--threads", type=int, default=None, help="CPU threads (default: all cores)."),
        click.option("--n-gpu-layers", "gpu_layers", type=int, default=None,
                     help="Layers to offload to CUDA/Metal (default: all when the build has a GPU backend)."),
        click.option("--endpoint", "endpoints", multiple=True, metavar="MODEL=URL",
                     help="Run MODEL on an OpenAI-compatible server (repeat for several endpoints)."),
        models_file_option,
        click.option("--quiet", "-q", is_flag=True, help="No progress display."),
    ]):
        func = opt(func)
    return func


_PIPELINE_KEYS = (
    "pool", "system_prompt", "temperature", "max_tokens", "completions", "judges", "aspect", "judge_mode",
    "both_orders", "judge_recipe", "decide", "min_confidence", "escalate_to", "exclude_self", "evolutions",
    "evolve_model", "min_margin", "pair_strategy",
    "pair_format", "pair_score", "seed", "slots", "n_ctx", "threads", "gpu_layers", "models_file",
    "endpoints",
)


def build_config(opts: dict):
    from .config import apply_overrides, load_config, preset

    base = preset(opts.pop("preset") or "embedded")
    cfg = load_config(opts.pop("config_file"), base)
    overrides = {k: opts.pop(k) for k in _PIPELINE_KEYS if k in opts}
    return apply_overrides(cfg, **overrides)


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory: records.jsonl, pairs.jsonl, errors.jsonl, run.json.")
@input_options
@pipeline_options
def run(input_path: str, out_dir: Path, column, split, limit, shuffle, shard, quiet, **opts) -> None:
    """Run the whole pipeline: pool completions, EvolQuality, UltraFeedback judge, pairs.

    INPUT is a JSONL/JSON/CSV/Parquet file, a `datasets` directory or a Hub dataset name,
    with an `instruction` (or `prompt`) column. Rerunning the same command resumes.

    \b
    Example:
      edgepref run instructions.jsonl --out out/
      edgepref run data.csv --column question --limit 100 --out out/ --judge qwen2.5-coder-0.5b
      edgepref run data.jsonl --shard 0/4 --out out-0/   # then: edgepref merge out-* --out all/
      edgepref run data.jsonl --out out/ --judge big --endpoint big=http://gpu-box:8080/v1
    """
    from .inputs import parse_shard, read_instructions
    from .pipeline import run_pipeline

    cfg = build_config(opts)
    batch = read_instructions(input_path, column=column, split=split, limit=limit, shuffle=shuffle,
                              seed=cfg.seed, shard=parse_shard(shard) if shard else None)
    with display.StageProgress(quiet) as progress:
        result = run_pipeline(batch, out_dir, cfg, on_event=progress)
    display.render_summary(result.summary)


# ---------------------------------------------------------------- single stages


def _stage_io(input_path: str, column, split, limit, shuffle, seed, shard=None):
    """Records from a previous stage's JSONL, or fresh ones from an instructions file."""
    from .inputs import parse_shard, read_instructions, read_records, shard_index

    share = parse_shard(shard) if shard else None
    path = Path(input_path)
    if path.suffix == ".jsonl" and path.is_file():
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        if '"completions"' in first:
            records, problems = read_records(path)
            if share:
                records = [r for r in records if shard_index(r.instruction, share[1]) == share[0]]
            return records, problems
    batch = read_instructions(input_path, column=column, split=split, limit=limit, shuffle=shuffle, seed=seed,
                              shard=share)
    return batch.records, batch.problems


def _run_stage(stage: str, input_path: str, out: Path, column, split, limit, shuffle, shard, quiet, opts) -> None:
    from .pipeline import Runner
    from .store import write_jsonl_atomic

    cfg = build_config(opts)
    records, problems = _stage_io(input_path, column, split, limit, shuffle, cfg.seed, shard)
    for p in problems:
        display.render_warning(f"{input_path} row {p.row}: {p.reason} (skipped)")
    if not records:
        raise EdgeprefError(f"no usable rows in {input_path}", "check the file; see the warnings above")
    runner = Runner(cfg, None, cache_dir=out.with_name(out.name + ".cache"))
    try:
        with display.StageProgress(quiet) as progress:
            runner.on_event = progress
            getattr(runner, stage)(records)
    finally:
        runner.close()
    for e in runner.errors:
        display.render_warning(f"{e['stage']} {e.get('id')}: {e['reason']}")
    n = write_jsonl_atomic(out, (r.to_row() for r in records))
    display.render_path(f"{out}  ({n} records)")


def _stage_command(stage: str, doc: str):
    @cli.command(stage, help=doc)
    @click.argument("input_path", metavar="INPUT")
    @click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Records JSONL to write (a .cache directory beside it makes reruns resume).")
    @input_options
    @pipeline_options
    def command(input_path, out, column, split, limit, shuffle, shard, quiet, **opts):
        _run_stage(stage, input_path, out, column, split, limit, shuffle, shard, quiet, opts)

    return command


_stage_command("complete", """Stage 1 alone: every pool member writes completions.

    INPUT is an instructions file (or records JSONL); writes records JSONL.

    \b
    Example:
      edgepref complete instructions.jsonl --out completed.jsonl --pool qwen2.5-coder-0.5b --pool smollm2-135m
    """)
_stage_command("evolve", """Stage 2 alone: EvolQuality rewrites of the completions in INPUT (records JSONL).

    \b
    Example:
      edgepref evolve completed.jsonl --out evolved.jsonl --evolutions 2
    """)
_stage_command("judge", """Stage 3 alone: UltraFeedback ratings for every completion in INPUT (records JSONL).

    \b
    Example:
      edgepref judge evolved.jsonl --out judged.jsonl --aspect helpfulness
    """)


@cli.command("pair")
@click.argument("input_path", metavar="INPUT")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="pairs JSONL to write.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--min-margin", type=float, default=None)
@click.option("--min-confidence", type=float, default=None)
@click.option("--decide", type=click.Choice(list(DECIDERS)), default=None)
@click.option("--pair-strategy", type=click.Choice(["best-worst", "best-random"]), default=None)
@click.option("--pair-format", type=click.Choice(["standard", "conversational"]), default=None)
@click.option("--pair-score", type=click.Choice(["score", "expected"]), default=None)
@click.option("--seed", type=int, default=None)
def pair_command(input_path, out, config_file, min_margin, min_confidence, decide, pair_strategy, pair_format,
                 pair_score, seed) -> None:
    """Stage 4 alone: chosen/rejected pairs from rated records (no model needed). Records keep
    their pairwise verdicts, so a new --min-confidence needs no judge.

    \b
    Example:
      edgepref pair judged.jsonl --out pairs.jsonl --min-confidence 0.02 --pair-format conversational
    """
    from .config import apply_overrides, load_config
    from .inputs import read_records
    from .pair import pair_records
    from .store import write_jsonl_atomic

    cfg = apply_overrides(load_config(config_file), min_margin=min_margin, min_confidence=min_confidence,
                          decide=decide, pair_strategy=pair_strategy, pair_format=pair_format,
                          pair_score=pair_score, seed=seed)
    records, problems = read_records(Path(input_path))
    for p in problems:
        display.render_warning(f"{input_path} row {p.row}: {p.reason} (skipped)")
    report = pair_records(records, cfg.pair)
    n = write_jsonl_atomic(out, (p.to_row() for p in report.pairs))
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items())) or "none"
    display.render_path(f"{out}  ({n} pairs; dropped: {dropped})")


# ---------------------------------------------------------------- quick experiments and output


@cli.command("try")
@click.argument("instruction", required=False)
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A few instructions (any input format) instead of INSTRUCTION.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write records/pairs here (default: write nothing).")
@click.option("--limit", type=int, default=5, show_default=True, help="At most this many from --file.")
@pipeline_options
def try_command(instruction, file_path, out_dir, limit, quiet, **opts) -> None:
    """The whole pipeline on one instruction, shown in the terminal: every candidate with its
    model, settings and score, the judge's reasons, and which became chosen/rejected and why.

    Same options and config file as `run`: change a system prompt, a temperature or the
    judge and see the effect in seconds.

    \b
    Example:
      edgepref try "Explain DNS to a ten-year-old."
      edgepref try "Write a limerick about tea." --system-prompt "Be concise." --temperature 1.0
    """
    from .inputs import read_instructions
    from .pipeline import run_pipeline

    if not instruction and not file_path:
        raise click.UsageError("give an INSTRUCTION or --file")
    cfg = build_config(opts)
    source = read_instructions(file_path, limit=limit) if file_path else [instruction]
    with display.StageProgress(quiet) as progress:
        result = run_pipeline(source, out_dir, cfg, on_event=progress)
    display.render_try(result, cfg)


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path), metavar="DIR_OR_PAIRS")
@click.option("--min-margin", type=float, default=None, help="Only pairs with at least this margin.")
@click.option("--model", default=None, help="Only pairs where this model is chosen or rejected.")
@click.option("--limit", type=int, default=5, show_default=True, help="Pairs to show (0: stats only).")
def inspect(path: Path, min_margin, model, limit) -> None:
    """Show pairs side by side (instruction, chosen vs rejected, scores, reasons) and stats.

    \b
    Example:
      edgepref inspect out/
      edgepref inspect out/pairs.jsonl --min-margin 2 --model smollm2-135m --limit 10
    """
    from .export import filter_pairs, load_run, pair_stats

    run = load_run(path)
    pairs = filter_pairs(run.pairs, min_margin, model)
    display.render_pairs(pairs[: max(0, limit)], pair_stats(pairs), total=len(run.pairs))


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path), metavar="DIR")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet", "hf"]), default="jsonl", show_default=True)
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the data and its README.md dataset card.")
@click.option("--push-to-hub", default=None, metavar="REPO", help="Also publish to the Hub (needs a network).")
@click.option("--public", is_flag=True, help="Make the Hub dataset public (default: private).")
def export(path: Path, fmt: str, to: Path, push_to_hub, public: bool) -> None:
    """Export a run's pairs as JSONL, Parquet or a `datasets` directory, with a dataset card.

    \b
    Example:
      edgepref export out/ --format parquet --to release/
      edgepref export out/ --format hf --to release/ --push-to-hub me/my-prefs
    """
    from .export import export_pairs, load_run

    written = export_pairs(load_run(path), fmt, to, push_to_hub, private=not public)
    for kind, where in written.items():
        display.render_path(f"{kind}: {where}")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the merged records.jsonl, pairs.jsonl, errors.jsonl and run.json.")
@click.option("--allow-mixed", is_flag=True, help="Merge runs made with different settings.")
def merge(dirs, out_dir: Path, allow_mixed: bool) -> None:
    """Combine shard outputs (`run --shard I/N`) into one run directory, each record and pair once.

    \b
    Example:
      edgepref run data.jsonl --shard 0/2 --out out-0 && edgepref run data.jsonl --shard 1/2 --out out-1
      edgepref merge out-0 out-1 --out all
    """
    from .merge import merge_runs

    display.render_merge(merge_runs(list(dirs), out_dir, allow_mixed=allow_mixed))


@cli.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (0.0.0.0: all interfaces).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--n-ctx", type=int, default=4096, show_default=True, help="Context tokens.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require the key held in this environment variable.")
@models_file_option
def serve(models, host, port, n_ctx, threads, api_key_env, models_file) -> None:
    """Serve local models over an OpenAI-compatible API (llama-cpp-python's server).

    Each MODEL (a registry name or a .gguf path) is served under its name; point a model entry's
    `endpoints` (or --endpoint MODEL=URL) at http://HOST:PORT/v1. Needs `pip install 'edgepref[server]'`.

    \b
    Example:
      edgepref serve qwen2.5-coder-0.5b --port 8080
      edgepref run data.jsonl --out out --endpoint qwen2.5-coder-0.5b=http://127.0.0.1:8080/v1
    """
    import os

    from .engine.serve import serve as run_server

    registry = load_registry(models_file)
    served = [(Path(m).stem if m.endswith(".gguf") else m, resolve_model_path(m, registry)) for m in models]
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise EdgeprefError(f"the environment variable {api_key_env} is not set", f"export {api_key_env}=...")
    display.render_path(f"serving {', '.join(a for a, _ in served)} at http://{host}:{port}/v1 (Ctrl-C stops)")
    run_server(served, host=host, port=port, n_ctx=n_ctx, n_threads=threads, api_key=key)


@cli.command("eval-judge")
@click.argument("pairs_path", metavar="PAIRS")
@click.option("--judge", "judges", multiple=True, metavar="MODEL",
              help="Judge model; repeat for a panel (default: the pipeline's judge).")
@click.option("--recipe", default=None, type=click.Choice(recipe_names()),
              help="Judge recipe (default: the one the pipeline decides chosen/rejected with).")
@click.option("--limit", type=int, default=None, help="Use only the first N pairs.")
@click.option("--self-preference", "self_preference_n", type=int, default=SELF_PREFERENCE_N, show_default=True,
              metavar="N", help="Judge the judge's own answers to the first N instructions against the "
              "better response; 0 skips it.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report here (a .cache dir beside it makes reruns resume).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@models_file_option
@click.option("--quiet", "-q", is_flag=True)
def eval_judge(pairs_path, judges, recipe, limit, self_preference_n, json_out, config_file, models_file,
               quiet) -> None:
    """Measure a judge against labelled pairs: agreement (with a 95% CI), precision at coverage
    (agreement on the most confident 100/80/50%), ties, swap consistency, position and length
    bias, seconds per pair, and self-preference (how often it prefers its own answer to the
    better response).

    PAIRS has instruction, response_a, response_b and label (a or b) columns.

    \b
    Example:
      edgepref eval-judge judge_pairs.jsonl --json judge_eval.json
      edgepref eval-judge judge_pairs.jsonl --recipe rationale-expected --judge smollm2-135m --limit 50
    """
    from .evaljudge import run_eval

    report = run_eval(pairs_path, judges=list(judges), recipe=recipe, limit=limit, json_out=json_out,
                      config_file=config_file, models_file=models_file, self_preference_n=self_preference_n,
                      on_event=None if quiet else display.StageProgress(quiet))
    display.render_eval(report)


def main() -> None:
    """Console-script entry point (`edgepref`)."""
    cli.main(prog_name="edgepref")


if __name__ == "__main__":  # pragma: no cover
    main()
