"""`edgepref review`: a person reads a run's pairs and keeps, swaps or drops them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import display
from ...core.errors import EdgeprefError
from .options import COUNT, Number
from .root import cli


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--sample", type=COUNT, default=None, metavar="N",
              help="Review a seeded random sample of N pairs (the one order whose agreement figures are "
              "unbiased) instead of the pairs the judges were least sure of.")
@click.option("--seed", type=int, default=0, show_default=True, help="The sample's seed.")
@click.option("--decider", default=None, metavar="JUDGE",
              help="Only pairs this judge decided (as in pairs.jsonl's decided_by; 'ratings' for the scores).")
@click.option("--model", default=None, help="Only pairs where this model wrote chosen or rejected.")
@click.option("--max-margin", type=Number(float), default=None,
              help="Only pairs the judge was at most this sure of (its pairwise margin).")
@click.option("--reviewer", default=None, help="Who is reviewing (default: $USER).")
@click.option("--hide-judge", is_flag=True, help="Start with the judge's margin and decider hidden (h shows them).")
@click.option("--stats", "stats_only", is_flag=True,
              help="Print the review's counts and each judge's agreement with it; open nothing.")
@click.option("--decisions", "decisions_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Apply decisions made elsewhere (JSONL, the fields of review.jsonl) "
              "instead of opening the screen.")
def review(path: Path, sample, seed: int, decider, model, max_margin, reviewer, hide_judge: bool,
           stats_only: bool, decisions_file: Path | None) -> None:
    """Review a run's pairs in the terminal.

    One pair at a time, chosen beside rejected: k keeps it, s swaps it (the rejected is better),
    d drops it (neither is good, or they tie), space skips, u undoes, ← goes back, h hides the
    judge, q quits. Each decision is saved to DIR/review.jsonl as you make it; the same command
    resumes where you stopped. `export` and DIR/pairs.reviewed.jsonl hold the reviewed dataset;
    --stats prints how often each judge agreed with you.

    DECISIONS lines: {"pair": ID, "texts": HASH, "decision": keep|swap|drop|skip|undo,
    "reviewer": ..., "at": ..., "order": sample|least-sure|file, "seed": ...} where HASH is the
    "texts" of the pair as review.jsonl writes it (edgepref.data.review.texts_hash).

    \b
    Example:
      edgepref review out/
      edgepref review out/ --sample 30 --hide-judge
      edgepref review out/ --stats
      edgepref review out/ --decisions reviewed_in_a_notebook.jsonl
    """
    from ...runs.review import ReviewSession, apply_decisions, review_summary

    if stats_only and decisions_file:
        raise click.UsageError("--stats and --decisions do not go together: apply the decisions, then ask for --stats")
    if decisions_file is not None:
        summary, outcome = apply_decisions(path, decisions_file, reviewer)
        display.render_review(summary, f"{outcome['applied']} decision(s) applied from {decisions_file}")
        return
    if stats_only:
        display.render_review(review_summary(path))
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise EdgeprefError(
            "edgepref review needs a terminal: its input or output is not one (a pipe, or CI)",
            "run it in a terminal; or apply decisions made elsewhere with --decisions FILE, "
            "or print the figures with --stats",
        )
    from ..review import ReviewApp

    session = ReviewSession(path, reviewer=reviewer, sample=sample, seed=seed, decider=decider, model=model,
                            max_margin=max_margin)
    for problem in session.problems:
        display.render_warning(problem)
    try:
        ReviewApp(session, hide_judge=hide_judge).run()
    finally:
        summary = session.close()
    display.render_review(summary)
