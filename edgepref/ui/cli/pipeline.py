"""Pipeline commands: `run`, the single stages (`complete`, `evolve`, `judge`, `pair`), `try`
and `eval-judge`. Each body parses its options, calls one library function and hands the result
to display.py."""

from __future__ import annotations

from pathlib import Path

import click

from .. import display
from ...core.checks import check_value, field_type
from ...core.errors import ConfigError
from ...runs.evaljudge import SELF_PREFERENCE_N, recipe_names
from ...stages.config import PairConfig
from ...runs.pipeline import stage_commands
from ...data.rundir import ERRORS, PAIRS, RECORDS, RUN, RunDir
from .options import (
    COUNT, LIMIT, Number, build_config, config_option, input_options, pipeline_options, setting_options)
from .root import cli, models_file_option


OUT_HELP = (f"Output directory: {RECORDS}, {PAIRS}, {ERRORS}, {RUN}. It must be new, empty or a run "
            "directory of edgepref (its run.json says so); a run directory made with the same settings and "
            "input is resumed.")
OVERWRITE_HELP = ("Let a run on an --out made with other settings or another input replace that run's records "
                  "and pairs (without it the run stops and lists what changed). Cached answers that still "
                  "apply are reused; files that are not edgepref's are never overwritten.")
overwrite_option = click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
# a target agreement, as the pipeline's --target-agreement (a setting) allows it
TARGET = Number(float, **field_type(PairConfig, "target_agreement")[1])


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
@overwrite_option
@click.option("--report", "with_report", is_flag=True, help="Also write OUT/report.html (see `edgepref report`).")
@input_options
@pipeline_options
def run(input_path: str, out_dir: Path, overwrite: bool, with_report: bool, column, messages_column, split, limit,
        shuffle, shard, quiet, config_file, preset, **opts) -> None:
    """Run every stage: instructions in, pairs out.

    Pool completions, EvolQuality rewrites, UltraFeedback ratings, the verdict chain's pairwise
    check, pairs. INPUT is a JSONL/JSON/CSV/Parquet file, a `datasets` directory or a Hub
    dataset name, with an `instruction` (or `prompt`) column, or conversations in a `messages`
    (or `conversations`) column, and optionally a per-row `system` column. Rerunning the same
    command resumes; a rerun with other settings stops and says what changed (--overwrite
    replaces the old run). The exit code is 1 when a stage's every request failed or every instruction lost
    its pair to errors (the files are written all the same); a shard that gets no instruction
    exits 0.

    \b
    Example:
      edgepref run instructions.jsonl --out out/
      edgepref run data.csv --column question --limit 100 --out out/ --judge qwen2.5-coder-0.5b
      edgepref run data.jsonl --shard 0/4 --out out-0/   # then: edgepref merge out-* --out all/
      edgepref run data.jsonl --out out/ --judge big --endpoint big=http://gpu-box:8080/v1
    """
    from ...data.inputs import parse_shard
    from ...runs.pipeline import RunFailed, run_pipeline

    cfg = build_config(config_file, preset, **opts)
    RunDir(out_dir).check_writable(require_empty=True)  # --out: new, empty or a run directory
    with display.StageProgress(quiet) as progress:
        try:
            result = run_pipeline(input_path, out_dir, cfg, on_event=progress, overwrite=overwrite, column=column,
                                  messages_column=messages_column, split=split, limit=limit, shuffle=shuffle,
                                  shard=parse_shard(shard) if shard else None)
        except RunFailed as exc:
            result = exc.result
            failed = exc
        else:
            failed = None
    display.render_summary(result.summary)
    if failed is not None:
        raise failed
    if with_report:
        from ..report import write_report

        display.render_path(f"report: {write_report(out_dir)}")


# ---------------------------------------------------------------- single stages


def _stage_command(command_name: str, doc: str):
    @cli.command(command_name, help=doc)
    @click.argument("input_path", metavar="INPUT")
    @click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Records JSONL to write (a .cache directory beside it makes reruns resume).")
    @input_options
    @pipeline_options
    def command(input_path, out, column, messages_column, split, limit, shuffle, shard, quiet, config_file, preset,
                **opts):
        from ...data.inputs import parse_shard, read_stage_input
        from ...runs.pipeline import run_single_stage

        cfg = build_config(config_file, preset, **opts)
        options = {"column": column, "messages_column": messages_column, "split": split, "limit": limit,
                   "shuffle": shuffle, "seed": cfg.seed}
        records, problems = read_stage_input(input_path, shard=parse_shard(shard) if shard else None, **options)
        for p in problems:
            display.render_warning(f"{input_path} row {p.row}: {p.reason} (skipped)")
        # a shard that got nothing of an input that has something is a success (its array job too)
        empty_shard = bool(shard) and not records and bool(read_stage_input(input_path, **options)[0])
        with display.StageProgress(quiet) as progress:
            n, errors = run_single_stage(command_name, records, out, cfg, on_event=progress, source=input_path,
                                         empty_shard=empty_shard)
        for e in errors:
            display.render_warning(f"{e['stage']} {e.get('id')}: {e['reason']}")
        display.render_path(f"{out}  ({n} records)")

    return command


for _name, _help in stage_commands().items():
    _stage_command(_name, _help)


@cli.command("pair")
@click.argument("input_path", metavar="INPUT")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="pairs JSONL to write.")
@config_option
@setting_options("pair")
def pair_command(input_path, out, config_file, **opts) -> None:
    """Stage 4 alone: pairs from rated records.

    Chosen/rejected pairs from rated records, with no model: records keep their pairwise
    verdicts, so a new --min-confidence needs no judge.

    \b
    Example:
      edgepref pair judged.jsonl --out pairs.jsonl --min-confidence 0.02 --pair-format conversational
    """
    from ...data.inputs import read_records
    from ...stages.pair import pair_records
    from ...data.rundir import refuse_inputs_inside
    from ...core.files import write_jsonl_atomic

    cfg = build_config(config_file, **opts)
    refuse_inputs_inside(out, [input_path], written=[out])  # the pairs would replace the records
    records, problems = read_records(Path(input_path))
    for p in problems:
        display.render_warning(f"{input_path} row {p.row}: {p.reason} (skipped)")
    report = pair_records(records, cfg.pair)
    n = write_jsonl_atomic(out, (p.to_row() for p in report.pairs))
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items())) or "none"
    display.render_path(f"{out}  ({n} pairs; dropped: {dropped})")




@cli.command("try")
@click.argument("instruction", required=False)
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A few instructions (any input format) instead of INSTRUCTION.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write records/pairs here (default: write nothing); as `run --out`.")
@overwrite_option
@click.option("--limit", type=LIMIT, default=5, show_default=True, help="At most this many from --file.")
@pipeline_options
def try_command(instruction, file_path, out_dir, overwrite, limit, quiet, config_file, preset, **opts) -> None:
    """Show the pipeline at work on one instruction.

    The whole pipeline on one instruction, shown in the terminal: every candidate with its
    model, settings and score, the judge's reasons, and which became chosen/rejected and why.

    Same options and config file as `run`: change a system prompt, a temperature or the
    judge and see the effect in seconds.

    \b
    Example:
      edgepref try "Explain DNS to a ten-year-old."
      edgepref try "Write a limerick about tea." --system-prompt "Be concise." --temperature 1.0
    """
    from ...runs.pipeline import RunFailed, run_pipeline

    if not instruction and not file_path:
        raise click.UsageError("give an INSTRUCTION or --file")
    cfg = build_config(config_file, preset, **opts)
    if out_dir is not None:
        RunDir(out_dir).check_writable(require_empty=True)
    source, options = (file_path, {"limit": limit}) if file_path else ([instruction], {})
    with display.StageProgress(quiet) as progress:
        try:
            result = run_pipeline(source, out_dir, cfg, on_event=progress, overwrite=overwrite, **options)
        except RunFailed as exc:
            display.render_try(exc.result, cfg)
            raise
    display.render_try(result, cfg)


def _pairs_options(func):
    for opt in reversed([
        click.option("--skip", type=COUNT, default=0, show_default=True, help="Skip the first N pairs."),
        click.option("--limit", type=LIMIT, default=None, help="Use only N pairs (after --skip)."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Where requests are cached (default: beside the output); a rerun resumes from it."),
        config_option,
        models_file_option,
        click.option("--quiet", "-q", is_flag=True),
    ]):
        func = opt(func)
    return func


@cli.command("eval-judge")
@click.argument("pairs_path", metavar="PAIRS")
@setting_options("eval-judge")
@click.option("--recipe", default=None, type=click.Choice(recipe_names()),
              help="Judge recipe (default: the one the pipeline decides chosen/rejected with).")
@click.option("--self-preference", "self_preference_n", type=COUNT, default=SELF_PREFERENCE_N, show_default=True,
              metavar="N", help="Judge the judge's own answers to the first N instructions against the "
              "better response; 0 skips it.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report here.")
@click.option("--verdicts", "verdicts_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSONL row per pair: label, each judge's margin, the judge that decided, hit.")
@click.option("--calibration", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Thresholds of the verdict chain (a file of `edgepref calibrate`; default: the shipped one).")
@click.option("--target-agreement", "target", type=TARGET, default=None,
              help="The calibration's target agreement to evaluate (default: the pipeline's).")
@click.option("--noise-pairs", type=COUNT, default=0, show_default=True, metavar="N",
              help="Measure each chain judge's noise floor on the first N pairs (two more numerical "
              "paths); 0 reports the one its calibration measured.")
@_pairs_options
def eval_judge(pairs_path, judges, recipe, self_preference_n, json_out, verdicts_out, calibration, target,
               noise_pairs, skip, limit, cache_dir, config_file, models_file, quiet) -> None:
    """Measure a judge against labelled pairs.

    Agreement with the labels (with a 95% CI), precision at coverage
    (agreement on the most confident 100/80/50%), ties, swap consistency, position and length
    bias, seconds per pair, self-preference (how often it prefers its own answer to the better
    response), and the verdict chain the pipeline decides with: the share of pairs it decides and
    how often those agree with the labels.

    PAIRS has instruction, response_a, response_b and label (a or b) columns.

    \b
    Example:
      edgepref eval-judge judge_pairs.jsonl --json judge_eval.json --verdicts verdicts.jsonl
      edgepref eval-judge judge_pairs.jsonl --skip 114 --calibration my_calibration.json
      edgepref eval-judge judge_pairs.jsonl --recipe rationale-expected --judge smollm2-135m --limit 50
    """
    from ...runs.evaljudge import run_eval

    report = run_eval(pairs_path, judges=list(judges), recipe=recipe, skip=skip, limit=limit, json_out=json_out,
                      verdicts_out=verdicts_out, cache_dir=cache_dir, config_file=config_file,
                      models_file=models_file, calibration=calibration, target=target, noise_pairs=noise_pairs,
                      self_preference_n=self_preference_n, on_event=None if quiet else display.StageProgress(quiet))
    display.render_eval(report)


class TargetSpan(click.ParamType):
    """One --target of `calibrate`: a target agreement, or a range A..B (A <= B) read as every
    0.01 from A to B; each end within what --target-agreement allows."""

    name = "target"

    def convert(self, value, param, ctx) -> list[float]:
        if isinstance(value, list):  # click converts a default it already converted
            return value
        lo, sep, hi = str(value).partition("..")
        ends = []
        for end in (lo, hi) if sep else (lo,):
            try:
                number = float(end)
            except ValueError:
                self.fail(f"{value!r} is not a number or a range like 0.6..0.8", param, ctx)
            try:
                check_value("", number, float, TARGET.limits, sep="")
            except ConfigError as exc:
                self.fail(f"{value}: {exc.message}" if sep else exc.message, param, ctx)
            ends.append(number)
        a, b = ends[0], ends[-1]
        if b < a:
            self.fail(f"{value}: a range runs from the lower target to the higher, like 0.6..0.8", param, ctx)
        return [round(a + k / 100, 2) for k in range(int(round((b - a) * 100)) + 1)]


def recorded_command(args: list[str], unrecorded: tuple[str, ...] = ("--cache-dir",),
                     quiet: tuple[str, ...] = ("-q", "--quiet")) -> str:
    """The command as a file records it: `edgepref` and its arguments, less where it cached its
    requests and whether it printed progress, which change nothing in what it writes."""
    import shlex

    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in unrecorded:
            skip_next = True
        elif arg not in quiet and arg.partition("=")[0] not in unrecorded:
            kept.append(arg)
    return shlex.join(["edgepref", *kept])


@cli.command("calibrate")
@click.argument("pairs_path", metavar="PAIRS")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The calibration file to write (give it to `run --calibration`).")
@click.option("--target", "targets", type=TargetSpan(), multiple=True, default=("0.7",), show_default=True,
              help="Agreement with the labels that each judge's decided pairs must reach; repeat for several, "
              "or give a range A..B (every 0.01).")
@click.option("--risk", type=Number(float, gt=0.0, lt=1.0), default=0.1, show_default=True,
              help="Allowed probability that the decided pairs fall short of the target.")
@click.option("--judge", "chain", multiple=True, metavar="MODEL",
              help="The chain, cheapest first (repeat; default: the embedded judges that are installed).")
@click.option("--noise-pairs", type=COUNT, default=24, show_default=True, metavar="N",
              help="Measure each judge's noise floor on the first N pairs; thresholds stay above it.")
@_pairs_options
def calibrate(pairs_path, out, targets, risk, chain, noise_pairs, skip, limit, cache_dir, config_file, models_file,
              quiet) -> None:
    """Calibrate judge thresholds on labelled pairs.

    The verdict chain's thresholds: for each judge, cheapest first, the smallest
    |margin| threshold whose decided pairs agree with the labels at least TARGET of the time with
    probability at least 1 - RISK (exact binomial test, fixed-sequence testing over thresholds;
    each judge on the pairs the ones before it left). The pipeline then writes a pair only when a
    judge of the chain is that sure.

    PAIRS has instruction, response_a, response_b and label (a or b) columns, like the pairs you
    will generate (calibrate on your own domain); or PAIRS is a run directory you reviewed
    (`edgepref review`): its kept and swapped pairs are the labels.

    \b
    Example:
      edgepref calibrate my_labelled_pairs.jsonl --target 0.75 --out calibration.json
      edgepref calibrate out/ --judge qwen2.5-coder-0.5b --noise-pairs 8 --out mine.json
      edgepref run instructions.jsonl --out out --calibration calibration.json --target-agreement 0.75
    """
    import sys

    from ...runs.evaljudge import run_calibrate

    cal_file = run_calibrate(pairs_path, targets=sorted({t for span in targets for t in span}), risk=risk, out=out, chain=list(chain), skip=skip,
                             limit=limit, noise_pairs=noise_pairs, cache_dir=cache_dir, config_file=config_file,
                             models_file=models_file, on_event=None if quiet else display.StageProgress(quiet),
                             command=recorded_command(sys.argv[1:]))
    display.render_calibration(cal_file)
    display.render_path(str(out))
