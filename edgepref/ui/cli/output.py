"""Output commands: `inspect`, `report`, `export` and `merge` of run directories; no model runs."""

from __future__ import annotations

from pathlib import Path

import click

from .. import display
from ...data.export import EXPORT_FORMATS, EXPORT_MARKER
from .options import COUNT, Number
from .root import cli


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path), metavar="DIR_OR_PAIRS")
@click.option("--min-margin", type=Number(float, ge=0.0), default=None, help="Only pairs with at least this margin.")
@click.option("--model", default=None, help="Only pairs where this model is chosen or rejected.")
@click.option("--limit", type=COUNT, default=5, show_default=True, help="Pairs to show (0: stats only).")
@click.option("--turns", "show_turns", is_flag=True,
              help="Show a conversation's system prompt and earlier turns (default: one line that counts them).")
def inspect(path: Path, min_margin, model, limit, show_turns: bool) -> None:
    """Show pairs side by side, with stats.

    Each pair's instruction, chosen vs rejected, scores and reasons, then stats of all pairs.
    A run that a person reviewed (`edgepref review`) shows its reviewed pairs and the review's counts.
    A line that cannot be read back is named with its line number and left out.
    A pair from a conversation has one line under its instruction that counts the earlier turns
    (and says when there is a system prompt); --turns shows them.

    \b
    Example:
      edgepref inspect out/
      edgepref inspect out/pairs.jsonl --min-margin 2 --model smollm2-135m --limit 10
      edgepref inspect out/ --turns
    """
    from ...data.export import filter_pairs, load_run, pair_stats

    run = load_run(path)
    for problem in run.problems:
        display.render_warning(problem)
    pairs = filter_pairs(run.pairs, min_margin, model)
    display.render_pairs(pairs[:limit], pair_stats(pairs), total=len(run.pairs), show_turns=show_turns,
                         review=run.review)


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path), metavar="DIR")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="jsonl", show_default=True)
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the data and its README.md dataset card: new, empty or an earlier export's "
              f"(its {EXPORT_MARKER} lists what edgepref wrote there).")
@click.option("--overwrite", is_flag=True,
              help="Write into a --to that holds other files, replacing a README.md or data file of the same "
              "name (one you edited after an export, too; a dataset_info.json keeps its other entries); files "
              "of other names are kept.")
@click.option("--push-to-hub", default=None, metavar="REPO", help="Also publish to the Hub (needs a network).")
@click.option("--public", is_flag=True, help="Make the Hub dataset public (default: private).")
def export(path: Path, fmt: str, to: Path, overwrite: bool, push_to_hub, public: bool) -> None:
    """Export a run's pairs with a dataset card.

    As JSONL, Parquet or a `datasets` directory (TRL's layout), or a trainer's own: llama-factory
    (rows and their dataset_info.json entry) or axolotl (rows and the config lines to paste,
    printed too), with a README.md dataset card. Exporting again into the same --to replaces only
    what an export wrote there and nobody changed since. A line of the pairs file that cannot be
    read back (not JSON, a field missing or of the wrong type) is named and left out.

    \b
    Example:
      edgepref export out/ --format parquet --to release/
      edgepref export out/ --format axolotl --to release/
      edgepref export out/ --format hf --to release/ --push-to-hub me/my-prefs
    """
    from ...data.export import export_pairs, load_run, trainer_usage

    run = load_run(path)
    for problem in run.problems:
        display.render_warning(problem)
    written = export_pairs(run, fmt, to, push_to_hub, private=not public, overwrite=overwrite)
    for kind, where in written.items():
        display.render_path(f"{kind}: {where}")
    usage = trainer_usage(fmt, to)
    if usage:
        display.render_path(f"in your {fmt} config:\n{usage.rstrip()}")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the merged records.jsonl, pairs.jsonl, errors.jsonl and run.json: new, "
              "empty or an earlier merge's output (never a run's, nor a directory of other files).")
@click.option("--allow-mixed", is_flag=True, help="Merge runs made with different settings.")
@click.option("--report", "with_report", is_flag=True, help="Also write OUT/report.html (see `edgepref report`).")
@click.option("--wait", is_flag=True, help="Wait for a run still writing one of DIRS to finish (default: refuse it).")
def merge(dirs, out_dir: Path, allow_mixed: bool, with_report: bool, wait: bool) -> None:
    """Merge shard outputs into one run directory.

    Combines the outputs of `run --shard I/N`, each record and pair once. Runs made with other
    settings or of another input are refused unless --allow-mixed; so is a run still writing its
    directory (--wait waits for it), and text-prompt pairs with conversation pairs (one pairs
    file holds one format, --allow-mixed or not). A line that cannot be read back is reported
    with its file and line number and left out.

    \b
    Example:
      edgepref run data.jsonl --shard 0/2 --out out-0 && edgepref run data.jsonl --shard 1/2 --out out-1
      edgepref merge out-0 out-1 --out all
    """
    from ...data.merge import merge_runs
    from ...data.rundir import RunDir

    RunDir(out_dir).check_writable(require_empty=True)
    display.render_merge(merge_runs(list(dirs), out_dir, allow_mixed=allow_mixed, wait=wait))
    if with_report:
        from ..report import write_report

        display.render_path(f"report: {write_report(out_dir)}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page (default: DIR/report.html); an existing file there must be an "
              "edgepref report.")
@click.option("--overwrite", is_flag=True, help="Replace an --out file that is not an edgepref report.")
def report(path: Path, out: Path | None, overwrite: bool) -> None:
    """Write a run's self-contained HTML report.

    The report of run directory DIR: the run's settings and counts, plots (scores per model,
    margins, chosen/rejected per model and source, shown positions, lengths, judge confidence),
    and every instruction with its pair or why it has none, to filter and open side by side.
    One file, no network: it opens anywhere, also from file://.

    \b
    Example:
      edgepref report out/
      edgepref report merged/ --out merged-report.html
    """
    from ..report import write_report

    display.render_path(f"report: {write_report(path, out, overwrite=overwrite)}")
