"""Measure judges' self-preference and write the figures file the run's notice quotes.

    python scripts/self_preference.py PAIRS --measure JUDGE:N:RECIPE[,RECIPE...] [--measure ...] --out FILE

Each --measure asks JUDGE for its own greedy answers to the first N instructions of PAIRS and
judges them against each pair's better response with each recipe, as `edgepref eval-judge
--self-preference N` does (edgepref.runs.selfpref). The file records the command (paths relative
to the repository root, without --cache-dir), the pairs file and each judge's recipes and pair
count; rerun on the same machine it writes the same bytes. scripts/regenerate_figures.sh runs the
command of the shipped edgepref/judging/self_preference.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from edgepref.runs.evaljudge import recipe_names
from edgepref.runs.selfpref import Measure, document, measure, write
from edgepref.ui.display import StageProgress

ROOT = Path(os.path.abspath(__file__)).parents[1]


def parse_measure(text: str) -> Measure:
    judge, n, recipes = (text.split(":") + ["", ""])[:3]
    names = tuple(r for r in recipes.split(",") if r)
    if not judge or not n.isdigit() or int(n) < 1 or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected JUDGE:N:RECIPE[,RECIPE...], N >= 1")
    unknown = [r for r in names if r not in recipe_names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(recipe_names())}")
    return Measure(judge, int(n), names)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/self_preference.py", description=__doc__.split("\n")[0])
    ap.add_argument("pairs", metavar="PAIRS", help="labelled pairs (instruction, response_a, response_b, label)")
    ap.add_argument("--measure", type=parse_measure, action="append", required=True, metavar="JUDGE:N:RECIPES",
                    help="repeatable: JUDGE's own answers to the first N instructions, judged with each recipe")
    ap.add_argument("--out", type=Path, required=True, help="the figures file to write")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="where requests are cached (default: beside --out); not recorded in the file")
    return ap


def from_root(path) -> str:
    """`path` (relative to the current directory) as seen from the repository root."""
    return os.path.relpath(os.path.abspath(path), ROOT)


def recorded_command(args) -> str:
    measures = [f"{m.judge}:{m.pairs}:{','.join(m.recipes)}" for m in args.measure]
    return shlex.join(["python", "scripts/self_preference.py", from_root(args.pairs),
                       *[a for m in measures for a in ("--measure", m)], "--out", from_root(args.out)])


def main() -> None:
    args = build_parser().parse_args()
    cache = args.cache_dir or Path(str(args.out) + ".cache")
    rows = measure(args.pairs, args.measure, cache_dir=cache, on_event=StageProgress())
    for r in rows:
        share = "-" if r["share"] is None else f"{r['share']:.0%}"
        print(f"{r['judge']:<22} {r['recipe']:<18} preferred its own answer in {share} of {r['n']}")
    write(args.out, document(recorded_command(args), from_root(args.pairs), rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
