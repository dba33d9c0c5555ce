"""The self-preference figures edgepref ships (edgepref/judging/self_preference.json, read by
compare.self_preference_notice): for each judge and recipe, how often the judge preferred its own
greedy answer to the better response of the first N labelled pairs, measured exactly as
`edgepref eval-judge` measures it (evaljudge.self_preference).

The file holds what identifies the figures (the command that wrote it, the pairs file, the
judges, recipes and pair counts) and the figures, with sorted keys and rounded shares; nothing
that changes from run to run (no times, dates or cache paths), so the same command on the same
machine writes the same bytes. scripts/self_preference.py is the command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.files import write_text_atomic
from .evaljudge import read_judge_pairs, self_preference

ABOUT = ("How often each judge preferred its own greedy answer to the better response of the "
         "first `pairs` labelled pairs (ties count half), with each recipe: `share` of the `n` "
         "instructions it answered. Made by `command`, run from the repository root.")


@dataclass(frozen=True)
class Measure:
    """One judge, asked on the first `pairs` pairs with each of `recipes`."""

    judge: str
    pairs: int
    recipes: tuple[str, ...]


def measure(pairs_path: str, measures: list[Measure], *, cache_dir=None, on_event=None,
            backends=None) -> list[dict]:
    """One row per judge and recipe: judge, recipe, pairs asked, n (own answers judged), share
    (None when the judge gave no verdict). The default pipeline settings; requests are cached in
    `cache_dir` (None: not kept), so a rerun resumes."""
    from ..stages.config import load_config
    from .pipeline import Runner

    cfg = load_config(None)
    pairs = read_judge_pairs(str(pairs_path), max(m.pairs for m in measures))
    runner = Runner(cfg, None, on_event, cache_dir=cache_dir, backends=backends)
    rows = []
    try:
        for m in measures:
            got = self_preference(runner, list(m.recipes), pairs[:m.pairs], [m.judge], cfg.seed)
            rows += [{"judge": m.judge, "recipe": r, "pairs": len(pairs[:m.pairs]), "n": got[r]["n"],
                      "share": got[r]["by_judge"][m.judge]} for r in m.recipes]
    finally:
        runner.close()
    return rows


def document(command: str, pairs_file: str, rows: list[dict]) -> dict:
    return {"about": ABOUT, "command": command, "pairs_file": pairs_file, "figures": rows}


def write(path: str | Path, doc: dict) -> None:
    """Sorted keys, one indent, a final newline: the same document gives the same bytes."""
    write_text_atomic(Path(path), json.dumps(doc, indent=1, sort_keys=True) + "\n")
