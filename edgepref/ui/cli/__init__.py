"""The `edgepref` command line: click groups and commands, nothing else.

    root.py      the `edgepref` group, its error handling, the shared --models-file option
    options.py   pipeline options, generated from the settings table (edgepref.runs.settings)
    models.py    models list/path/pull/info, serve
    pipeline.py  run, complete/evolve/judge/pair, try, eval-judge
    output.py    inspect, export, merge
    review.py    review (the terminal screen itself is ui/review.py)

Adding a command: decorate a function with `@cli.command()` in the module it belongs to, give
its docstring a `\\b` "Example:" block (tests check every --help has one), and reuse the shared
options. If a body does more than parse, call and render, the work belongs in the library.
"""

from __future__ import annotations

from . import models, output, pipeline, review
from .root import cli

COMMAND_MODULES = (models, pipeline, output, review)  # importing each registers its commands on `cli`


def main() -> None:
    """Console-script entry point (`edgepref`)."""
    cli.main(prog_name="edgepref")


__all__ = ["cli", "main"]
