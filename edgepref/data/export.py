"""Reading a run's output back, filtering pairs, and exporting them with a dataset card.

`load_run` accepts an output directory or a pairs.jsonl file. Export goes through `datasets`
(JSONL, Parquet, a save_to_disk directory, or the Hub), or writes a trainer's own layout
(`TRAINER_LAYOUTS` in trainers.py: LLaMA-Factory's rows and dataset_info.json, axolotl's rows and
config lines), and always writes a README.md card that records the models, the settings, the
counts and the method, and how to train on a trainer layout.

What an export may write over (`check_export_dir`): --to must be new, empty or an export
directory, one whose EXPORT_MARKER file edgepref wrote. The marker lists each file the
exports wrote there with its sha256, so a later export replaces only what it wrote itself and
nobody changed since: a README.md card the user edited, or a pairs file cleaned by hand, is
refused like any other file of the user's, unless `overwrite`. Files of other names in the
directory are never touched. A dataset_info.json is the one file an export merges into rather than
replaces: its other entries (a LLaMA-Factory data folder's datasets) are kept.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checks import check_path
from ..core.errors import EdgeprefError, InputError
from ..core.files import write_jsonl_atomic, write_text_atomic
from ..core.paths import hub_offline
from .rundir import PAIRS, pairs_source, run_json_problem
from .review import match_review, review_counts, reviewed_pairs
from .trainers import TRAINER_LAYOUTS, TrainerLayout, one_trl_layout, trainer_rows

# file types of `edgepref export`: TRL's layout through `datasets`, then the trainers' own layouts
EXPORT_FORMATS = ("jsonl", "parquet", "hf", *TRAINER_LAYOUTS)
DATA_NAMES = {"jsonl": PAIRS, "parquet": "pairs.parquet", "hf": "dataset",  # what each format writes in --to
              **{name: layout.data_name for name, layout in TRAINER_LAYOUTS.items()}}
CARD = "README.md"
# {"edgepref": {"export_layout": 1}, "files": {name: sha256, or null for the `hf` directory}}
EXPORT_MARKER, EXPORT_LAYOUT = ".edgepref-export.json", 1


class NotAnExportDir(InputError):
    """--to holds files that an export would write over and that edgepref did not write."""


@dataclass
class RunOutput:
    pairs: list[dict]
    run: dict = field(default_factory=dict)  # run.json: config and summary, when present
    source: Path | None = None
    review: dict | None = None  # a person's review applied to `pairs` (review.review_counts)
    problems: list[str] = field(default_factory=list)  # lines of the pairs file left out, and why


def load_run(path: str | Path) -> RunOutput:
    """The pairs of a run directory or a pairs file, with the run's run.json when there is one.
    A line that is not a pair (not UTF-8, not JSON, not an object, a field missing or of the
    wrong type) is left out and said in `problems`; a file with no pair at all but such lines is
    refused. A run directory that a person reviewed (review.jsonl) gives the reviewed pairs:
    swapped ones flipped, dropped ones left out, each with `reviewed`."""
    check_path("path", path)
    run_dir, pairs_file = pairs_source(path)
    pairs, problems = run_dir.read_pairs(pairs_file)
    if problems and not pairs:
        raise InputError(f"{pairs_file} holds no pair: {problems[0]}" + (
            f" (and {len(problems) - 1} more lines like it)" if len(problems) > 1 else ""),
            "pass a pairs.jsonl written by edgepref (prompt, chosen and rejected on each line), or its run directory")
    run, run_problem = run_dir.read_run()
    run_problem = run_problem or run_json_problem(run)
    if run_problem:
        run = {}
        if pairs_file == run_dir.pairs_file:
            problems.append(f"{run_problem}: the dataset card leaves out the run's settings")
    counts = None
    if pairs_file == run_dir.pairs_file and run_dir.review_file.is_file():
        matched, _ = match_review(pairs, run_dir.review_file)
        pairs, counts = reviewed_pairs(pairs, matched), review_counts(pairs, matched)
    return RunOutput(pairs, run if isinstance(run, dict) else {}, pairs_file, counts, problems)


def filter_pairs(pairs: list[dict], min_margin: float | None = None, model: str | None = None) -> list[dict]:
    out = []
    for p in pairs:
        # a pair without a margin (a run that rated nothing) cannot be shown to reach one
        if min_margin is not None and (p.get("margin") is None or p["margin"] < min_margin - 1e-9):
            continue
        if model is not None and model not in (p.get("model_chosen"), p.get("model_rejected")):
            continue
        out.append(p)
    return out


def pair_stats(pairs: list[dict]) -> dict:
    from collections import Counter

    return {
        "pairs": len(pairs),
        "mean_margin": _mean(p.get("margin") for p in pairs),
        "chosen_by_model": dict(Counter(p.get("model_chosen") for p in pairs)),
        "rejected_by_model": dict(Counter(p.get("model_rejected") for p in pairs)),
        "mean_score_chosen": _mean(p.get("score_chosen") for p in pairs),
        "mean_score_rejected": _mean(p.get("score_rejected") for p in pairs),
    }


def _mean(values) -> float | None:
    """The mean of the values that are there: scores and margins are None in a run that rated nothing."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def dataset_card(run: RunOutput, export_format: str = "jsonl", trainers: dict[str, str] | None = None) -> str:
    """The README.md card of an export in `export_format`; `trainers` maps each format of
    TRAINER_LAYOUTS written beside it to the lines of that trainer's config that train on it."""
    # run.json as load_run read it: of the shape edgepref writes (rundir.run_json_problem), a table
    # possibly null
    cfg = run.run.get("config") or {}
    summary = run.run.get("summary") or {}
    pool = cfg.get("pool") or []
    judges = run.run.get("judges") or (cfg.get("judge") or {}).get("models", [])
    judges = [str(j) for j in judges] if isinstance(judges, list) else []
    # what the export writes: a run that mixes the two layouts is written conversational (one_trl_layout)
    fmt = "standard" if all(isinstance(p.get("prompt"), str) for p in run.pairs) else "conversational"
    stats = pair_stats(run.pairs)
    pool_lines = "\n".join(
        f"- `{m.get('model')}` (temperature {m.get('temperature')}, top_p {m.get('top_p')}, "
        f"{m.get('n', 1)} completion(s), system prompt: {json.dumps(m.get('system_prompt'))})"
        for m in pool
    ) or "- (unknown)"
    judge_cfg = cfg.get("judge") or {}
    return f"""---
tags:
- dpo
- preference
- synthetic
- edgepref
---
# Preference dataset made with edgepref

Format: {_format_line(export_format, fmt)},
with `score_chosen`, `score_rejected`, `margin`, the models and the judge's rationales.
Type: preference (DPO).
{_conversation_section(run.pairs)}{_trainer_sections(trainers or {})}
## Method

1. Model pooling: every instruction was answered by each pool member:
{pool_lines}
2. EvolQuality: {(cfg.get('evolve') or {}).get('num_evolutions', 0)} rewrite(s) per completion along a criterion drawn
   with a seeded RNG (helpfulness, relevance, deepening, creativity, details); evolved
   responses were judged like the others.
3. UltraFeedback judging by {', '.join(f'`{j}`' for j in judges)}: aspect `{judge_cfg.get('aspect')}`, mode
   `{judge_cfg.get('mode')}`, both orders: {judge_cfg.get('both_orders')}, probability-weighted scores:
   {judge_cfg.get('expected')}. Answers were constrained by a GBNF grammar, so every rating parsed.
4. Pairs: {_decision(cfg, summary)}{_review_line(run.review)}

## Counts

- instructions: {summary.get('instructions', '?')}
- pairs: {stats['pairs']} (dropped: {json.dumps(summary.get('pairs_dropped', {}))})
- mean margin: {stats['mean_margin'] if stats['mean_margin'] is None else round(stats['mean_margin'], 3)}
- chosen by model: {json.dumps(stats['chosen_by_model'])}
- rejected by model: {json.dumps(stats['rejected_by_model'])}
- seed: {cfg.get('seed')}

Generated offline with llama.cpp by edgepref.
"""


def _prompt_turns(prompt) -> tuple[str | None, list[dict]]:
    """A pair's system message (or None) and the turns before its last user turn; none for a string."""
    if isinstance(prompt, str) or not prompt:
        return None, []
    system = prompt[0].get("content") if prompt[0].get("role") == "system" else None
    turns = prompt[1:] if system is not None else prompt
    return system, list(turns[:-1])


def _conversation_section(pairs: list[dict]) -> str:
    """What the card says of pairs that continue a conversation: how many, the longest, and one
    example, collapsed; "" when no pair has earlier turns or a system message."""
    shapes = [(p, *_prompt_turns(p.get("prompt"))) for p in pairs]
    with_turns = sum(1 for _, _, turns in shapes if turns)
    with_system = sum(1 for _, system, _ in shapes if system is not None)
    if not with_turns and not with_system:
        return ""
    most = max(len(turns) for _, _, turns in shapes)
    # the example with the most earlier turns (a system message breaks a tie); the first such pair
    example, system, turns = max(shapes, key=lambda s: (len(s[2]), s[1] is not None))
    return f"""
## Conversations

Pairs with earlier turns: {with_turns} of {len(pairs)} (at most {most} earlier turn{'s' if most != 1 else ''} before the last
user turn); with a system message: {with_system}. The prompt holds the conversation, and `chosen` and
`rejected` answer its last user turn only.

<details>
<summary>An example conversation (pair <code>{html.escape(str(example.get("id")))}</code>)</summary>

{_example_block(system, turns, example)}

</details>
"""


# each message of the card's example conversation is clipped to this many characters
CARD_EXAMPLE_CHARS = 600


def _example_block(system: str | None, turns: list[dict], pair: dict) -> str:
    """One conversation and its two answers as a fenced text block; the fence is longer than any
    run of backticks in the texts, so a model's markdown cannot close it."""
    def clipped(text) -> str:
        text = str(text if isinstance(text, str) else (text[-1]["content"] if text else "")).strip()
        return text if len(text) <= CARD_EXAMPLE_CHARS else text[:CARD_EXAMPLE_CHARS] + " …"

    last = pair["prompt"][-1].get("content", "")
    messages = ([("system", system)] if system is not None else []) + [(t.get("role"), t.get("content")) for t in turns]
    messages += [("user, answered by the pair", last), ("chosen", pair.get("chosen")), ("rejected", pair.get("rejected"))]
    body = "\n\n".join(f"[{role}]\n{clipped(text)}" for role, text in messages)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", body)), default=0))
    return f"{fence}text\n{body}\n{fence}"


def _review_line(counts: dict | None) -> str:
    if counts is None:
        return ""
    return (f"\n5. A person reviewed the pairs (`edgepref review`): {counts['kept']} kept, {counts['swapped']} "
            f"swapped (chosen and rejected exchanged), {counts['dropped']} dropped, {counts['unreviewed']} not "
            "reviewed; each row's `reviewed` says which (kept, swapped or unreviewed).")


def _format_line(export_format: str, pair_format: str) -> str:
    layout = TRAINER_LAYOUTS.get(export_format)
    if layout:
        return (f"{layout.trainer}'s preference layout (`{layout.data_name}`, see \"Training with "
                f"{layout.trainer}\" below)")
    return (f"TRL preference, {pair_format} (`prompt`, `chosen`, `rejected`"
            f"{' as message lists' if pair_format == 'conversational' else ' as strings'})")


def _trainer_sections(trainers: dict[str, str]) -> str:
    sections = []
    for name, usage in trainers.items():
        layout = TRAINER_LAYOUTS[name]
        sections.append(
            f"\n## Training with {layout.trainer}\n\n`{layout.data_name}` (export format `{name}`) holds the "
            f"pairs, with the provenance columns above: {layout.columns}. In the {layout.trainer} "
            f"config:\n\n```yaml\n{usage}```\n")
    return "".join(sections)


def trainer_usage(fmt: str, to: str | Path) -> str | None:
    """The lines of the trainer's config that train on an export in `fmt` to `to` (None: no trainer layout)."""
    layout = TRAINER_LAYOUTS.get(fmt)
    return layout.usage(Path(to) / layout.data_name) if layout else None


def _decision(cfg: dict, summary: dict) -> str:
    pair, judge = cfg.get("pair") or {}, cfg.get("judge") or {}
    if pair.get("decide", "ratings") == "pairwise":
        if pair.get("min_confidence") is not None:
            rule = (f"each judge of the chain ({summary.get('verdict_chain') or judge.get('models')}) decided the pairs\n"
                    f"   whose |margin| reached {pair['min_confidence']} (a fixed threshold, no agreement promised)")
        elif pair.get("target_agreement") is None:
            rule = (f"each judge of the chain ({summary.get('verdict_chain')}) decided the pairs whose |margin|\n"
                    f"   was above its noise floor (no agreement promised)")
        else:
            expected = summary.get("expected_agreement")
            rule = (f"each judge of the chain ({summary.get('verdict_chain')}) decided the pairs above its threshold,\n"
                    f"   calibrated so that what it decides agrees with strong labels at least "
                    f"{pair.get('target_agreement')} of the time\n   with probability {1 - (summary.get('risk') or 0):g}"
                    + (f"; expected agreement of these pairs: {expected}" if expected is not None else ""))
        return (f"the ratings (ranked by `{pair.get('score')}`, strategy `{pair.get('strategy')}`) shortlisted two\n"
                f"   completions; a pairwise judge (recipe `{judge.get('recipe')}`: both showing orders, log-odds)\n"
                f"   decided which is chosen: {rule}; the rest were dropped as uncertain.\n"
                f"   `confidence` is the margin, `decided_by` the judge, `agreement` its calibrated agreement.")
    return (f"strategy `{pair.get('strategy')}`, ranked by `{pair.get('score')}`, minimum margin "
            f"{pair.get('min_margin')}; ties and small margins were dropped.")


def export_pairs(run: RunOutput, fmt: str, to: str | Path, push_to_hub: str | None = None,
                 private: bool = True, overwrite: bool = False) -> dict[str, str]:
    """Write the pairs in `fmt` under directory `to` with a README.md card; optionally push.
    `to` must be new, empty or an earlier export's (`check_export_dir`) unless `overwrite`.
    A trainer layout also writes its config file ("config"). Returns what was written, by kind."""
    import datasets

    if fmt not in EXPORT_FORMATS:
        raise EdgeprefError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if not run.pairs:
        raise EdgeprefError(
            f"{run.source} has no pairs to export",
            "every instruction was dropped (see the summary or records.jsonl); try a lower "
            "--target-agreement (or --min-margin with --decide ratings), more completions (-n), "
            "the second embedded judge (pip install 'edgepref[judge]'), --escalate-to a stronger "
            "judge, then run again",
        )
    to = Path(to)
    layout = TRAINER_LAYOUTS.get(fmt)
    names = [DATA_NAMES[fmt], *([layout.config_name] if layout else []), CARD]
    _refuse_source_inside(run.source, to, names)
    check_export_dir(to, names, overwrite)
    # a bad row stops it before any write
    rows = trainer_rows(run.pairs, layout) if layout else one_trl_layout(run.pairs)
    earlier = read_export_marker(to) or {}
    to.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    target = to / DATA_NAMES[fmt]
    if layout:
        written.update(_write_trainer_layout(layout, rows, target))
    else:
        ds = datasets.Dataset.from_list(rows)
        if fmt == "jsonl":
            ds.to_json(str(target), lines=True, force_ascii=False)
        elif fmt == "parquet":
            ds.to_parquet(str(target))
        else:
            ds.save_to_disk(str(target))
        written["data"] = str(target)
    # the card tells how to train on every trainer layout in `to`: this one and those of earlier exports
    trainers = {name: trainer_usage(name, to) for name, other in TRAINER_LAYOUTS.items()
                if name == fmt or (other.data_name in earlier and (to / other.data_name).is_file())}
    card = dataset_card(run, fmt, trainers)
    write_text_atomic(to / CARD, card)
    written["card"] = str(to / CARD)
    _mark_export(to, names)
    if push_to_hub:
        if hub_offline():
            raise EdgeprefError(
                f"cannot push to {push_to_hub}: HF_HUB_OFFLINE is set",
                "unset HF_HUB_OFFLINE (and log in with `hf auth login`) to publish",
            )
        ds = datasets.Dataset.from_list(rows)
        try:
            ds.push_to_hub(push_to_hub, private=private)
            from huggingface_hub import HfApi

            HfApi().upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md",
                                repo_id=push_to_hub, repo_type="dataset")
        except EdgeprefError:
            raise
        except Exception as exc:
            raise EdgeprefError(
                f"push to {push_to_hub} failed: {exc.__class__.__name__}: {exc}",
                "check your network and token (`hf auth login`); the local export is done",
            ) from exc
        written["hub"] = f"https://huggingface.co/datasets/{push_to_hub}"
    return written


def _write_trainer_layout(layout: TrainerLayout, rows: list[dict], target: Path) -> dict[str, str]:
    # written as built, not through `datasets`: a trainer reads these exact keys and nesting
    write_jsonl_atomic(target, rows)
    config = target.parent / layout.config_name
    existing = config.read_text(encoding="utf-8", errors="replace") if config.is_file() else None
    write_text_atomic(config, layout.config_text(target, existing))
    return {"data": str(target), "config": str(config)}


# ---------------------------------------------------------------- what an export may write over


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export_marker(to: str | Path) -> dict[str, str | None] | None:
    """The files earlier exports wrote in `to` (name -> sha256; None for a directory), or None
    when `to` holds no marker that edgepref wrote."""
    try:
        raw = json.loads((Path(to) / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("edgepref"), dict) or not isinstance(raw.get("files"), dict):
        return None
    return raw["files"]


def check_export_dir(to: str | Path, names: list[str], overwrite: bool = False) -> None:
    """Refuse to export into `to` when it is a file, or a directory that is neither empty nor an
    export directory, or when one of `names` there is a file the exports did not write, or one
    changed since (its sha256 is not the marker's). `overwrite` lets such files be replaced
    (a file is still refused). Writes nothing."""
    to = Path(to)
    if to.exists() and not to.is_dir():
        raise NotAnExportDir(f"--to {to} is a file, not a directory", "pass a new directory to --to")
    if not to.is_dir() or overwrite:
        return
    entries = sorted(e.name for e in to.iterdir())
    if not entries:
        return
    marker = read_export_marker(to)
    if marker is None:
        raise NotAnExportDir(
            f"--to {to} is not empty ({_listed(entries)}) and is not an edgepref export (no {EXPORT_MARKER})",
            f"pass a new or empty directory to --to, or add --overwrite to write {' and '.join(names)} "
            "there (its other files are kept)",
        )
    changed = [n for n in names if (to / n).exists() and not _as_exported(to / n, marker)]
    if changed:
        raise NotAnExportDir(
            f"--to {to}: {_listed(changed)} {'was' if len(changed) == 1 else 'were'} not written by an edgepref "
            "export, or changed since",
            "pass a new or empty directory to --to, or add --overwrite to replace "
            f"{'it' if len(changed) == 1 else 'them'}",
        )


def _refuse_source_inside(source: Path | None, to: Path, names: list[str]) -> None:
    """The pairs file an export reads is never what it writes, even with overwrite."""
    if source is None or not Path(source).exists():
        return
    real = Path(source).resolve()
    for name in names:
        target = (to / name).resolve()
        if real == target or target in real.parents:
            raise NotAnExportDir(f"--to {to}: the export would write {name} over the pairs it reads ({source})",
                                 "pass another directory to --to")


def _as_exported(path: Path, marker: dict[str, str | None]) -> bool:
    """Whether `path` is as an export left it: listed in the marker, and a file unchanged."""
    if path.name not in marker:
        return False
    if path.is_dir():
        return marker[path.name] is None
    return path.is_file() and marker[path.name] == _sha256(path)


def _mark_export(to: Path, names: list[str]) -> None:
    """Add what this export wrote to `to`'s marker (the files of earlier exports stay listed)."""
    files = {k: v for k, v in (read_export_marker(to) or {}).items() if (to / k).exists()}
    for name in names:
        path = to / name
        files[name] = None if path.is_dir() else _sha256(path)
    marker = {"edgepref": {"export_layout": EXPORT_LAYOUT}, "files": dict(sorted(files.items()))}
    write_text_atomic(to / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
