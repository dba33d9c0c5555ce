"""Combine the output directories of shard runs (`edgepref run ... --shard I/N`) into one.

Each shard wrote a run directory (rundir.py) for its share of the input. The merge keeps every
record and pair once (by id: a shard that was run twice, or a directory given twice, adds
nothing), keeps every error once, checks that the shards were made with the same settings and
from the same input (run.json's "input": its content hash, or Hub name, split and revision), and
says which shards of 0..N-1 are missing. An empty shard (no instruction fell to it) adds
nothing and counts as seen. Every run merged must come from the same input; a run still being
written (its lock held) is refused; the pairs of all runs must share one prompt shape. The
result is an ordinary run directory: `edgepref export`,
`inspect` and TRL read it like any other. It is written to a new or empty directory, or over an
earlier merge's output, never over a run's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.checks import check_path, check_path_list, fits
from ..core.errors import ConfigError, InputError
from .rundir import (
    RECORDS, NotARunDir, RunDir, RunDirInUse, config_changes, describe_input, input_key, refuse_inputs_inside,
    run_json_problem)


@dataclass
class MergeReport:
    out_dir: str
    runs: int = 0
    records: int = 0
    pairs: int = 0
    errors: int = 0
    duplicate_records: int = 0
    duplicate_pairs: int = 0
    shard_count: int | None = None
    shards_seen: list = field(default_factory=list)
    missing_shards: list = field(default_factory=list)
    runs_without_pairs: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # lines left out: "<file> line N: why"
    files: dict = field(default_factory=dict)


def _check_out(out: Path, dirs: list[Path]) -> None:
    """out_dir may be new, empty or an earlier merge's output; no input may be it or lie among
    the files it gets."""
    refuse_inputs_inside(out, dirs)
    target = RunDir(out)
    target.check_writable()
    run, _ = target.read_run()
    if target.is_run_dir() and "merged_from" not in run:
        raise NotARunDir(f"--out {out} holds a run of `edgepref run`, not a merge: merging would replace its pairs",
                         "write the merge to a new directory")


def _check_same_input(d: Path, run: dict, base: tuple[Path, dict] | None, allow_mixed: bool) -> None:
    """Runs merged into one must come from one input (compared when both recorded theirs)."""
    ident = run.get("input")
    if base is None or not isinstance(ident, dict) or not ident or not base[1] or allow_mixed:
        return
    if input_key(ident) != input_key(base[1]):
        raise ConfigError(
            f"{d} was made from another input than {base[0]}: {describe_input(ident)} vs {describe_input(base[1])}",
            "merge the runs of one input (rerun the odd one on it); --allow-mixed merges anyway",
        )


def _wait_for_lock(run_dir: RunDir, wait: bool, poll: float = 0.5) -> None:
    """Refuse a directory that a run is still writing (its lock held), or with `wait` wait for it."""
    holder = run_dir.lock_holder()
    while holder is not None and wait:
        time.sleep(poll)
        holder = run_dir.lock_holder()
    if holder is not None:
        raise RunDirInUse(f"{run_dir.path} is still being written by a run ({holder}): its pairs are not final",
                          "wait for that run to finish, or pass --wait to merge when it has")


def _check_prompt_shapes(pairs: dict[str, dict], where: dict[str, Path]) -> None:
    """One pairs file holds one prompt shape: TRL reads a dataset as standard (text prompts) or
    conversational (message lists), never both."""
    shapes: dict[bool, str] = {}
    for pid, row in pairs.items():
        shapes.setdefault(isinstance(row["prompt"], str), pid)
    if len(shapes) > 1:
        text_id, conv_id = shapes[True], shapes[False]
        raise ConfigError(
            f"the runs mix single-turn pairs (text prompts, e.g. {text_id} from {where[text_id]}) and "
            f"conversation pairs (message-list prompts, e.g. {conv_id} from {where[conv_id]}); one pairs "
            "file cannot hold both: TRL's DPOTrainer reads a dataset as one format or the other",
            "merge the instruction runs and the conversation runs separately (each export is then one format); "
            "--allow-mixed does not change this",
        )


def merge_runs(dirs: list[str | Path], out_dir: str | Path, *, allow_mixed: bool = False,
               wait: bool = False) -> MergeReport:
    """Merge run directories into out_dir (new, empty or an earlier merge; not one of them).
    A line of a run's records, pairs or errors that cannot be read back (not UTF-8, not JSON,
    not an object, no id, a pair field of the wrong type) is left out and listed in the
    report's `problems`; a run still being written is refused (or, `wait`, waited for)."""
    dirs = [Path(d) for d in check_path_list("dirs", dirs)]
    check_path("out_dir", out_dir)
    out = Path(out_dir)
    if not dirs:
        raise InputError("nothing to merge", "name the shard output directories: edgepref merge out-0 out-1 --out all")
    _check_out(out, dirs)
    report = MergeReport(out_dir=str(out))
    records: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    came_from: dict[str, Path] = {}
    errors: dict[str, dict] = {}
    base_config: dict | None = None
    base_dir: Path | None = None
    base_input: tuple[Path, dict] | None = None  # the first run's directory and input
    judges: list = []
    for d in dirs:
        run_dir = RunDir(d)
        if not d.is_dir():
            raise InputError(f"{d} is not a directory", "pass directories written by `edgepref run --out DIR`")
        if not run_dir.records_file.is_file():
            raise InputError(f"{d} has no {RECORDS}", "pass directories written by `edgepref run --out DIR`")
        _wait_for_lock(run_dir, wait)
        run, problem = run_dir.read_run()
        problem = problem or run_json_problem(run)
        if problem:
            raise InputError(f"{d}: {problem}", "rerun that shard (it resumes) to write its run.json again")
        config = run.get("config")
        if isinstance(config, dict):
            if base_config is None:
                base_config, base_dir, judges = config, d, run.get("judges", [])
            else:
                diff = config_changes(base_config, config)
                if diff and not allow_mixed:
                    raise ConfigError(
                        f"{d} was made with other settings than {base_dir}: " + "; ".join(diff[:5]),
                        "merge only shards of one run, or pass --allow-mixed to merge anyway",
                    )
        _check_same_input(d, run, base_input, allow_mixed)
        if base_input is None and isinstance(run.get("input"), dict):
            base_input = (d, run["input"])
        summary = run.get("summary") if isinstance(run.get("summary"), dict) else {}
        shard = summary.get("shard")
        if shard:
            if not (fits(shard, list[int]) and len(shard) == 2):
                raise InputError(f"{d}: run.json's shard is {shard!r}, not [I, N]",
                                 "rerun that shard (it resumes) to write its run.json again")
            i, n = shard
            if report.shard_count is not None and n != report.shard_count:
                raise ConfigError(f"{d} is shard {i}/{n} but another input is a shard of {report.shard_count}",
                                  "merge the shards of one split")
            report.shard_count = n
            report.shards_seen.append(i)
        report.runs += 1
        rows, bad = run_dir.read_rows(run_dir.records_file)
        report.problems += [f"{d}/{p}" for p in bad]
        for row in rows:
            if row["id"] in records:
                report.duplicate_records += 1
            else:
                records[row["id"]] = row
        if run_dir.pairs_file.is_file():
            rows, bad = run_dir.read_pairs()
            report.problems += [f"{d}/{p}" for p in bad]
            for row in rows:
                if not isinstance(row.get("id"), str):
                    report.problems.append(f"{run_dir.pairs_file}: a pair without an id (left out)")
                elif row["id"] in pairs:
                    report.duplicate_pairs += 1
                else:
                    pairs[row["id"]], came_from[row["id"]] = row, d
        else:
            report.runs_without_pairs.append(str(d))
        rows, bad = run_dir.read_rows(run_dir.errors_file, need_id=False)
        report.problems += [f"{d}/{p}" for p in bad]
        for row in rows:
            errors.setdefault(json.dumps(row, sort_keys=True), row)
    _check_prompt_shapes(pairs, came_from)
    if report.shard_count is not None:
        report.shards_seen = sorted(set(report.shards_seen))
        report.missing_shards = [i for i in range(report.shard_count) if i not in report.shards_seen]
    report.records, report.pairs, report.errors = len(records), len(pairs), len(errors)
    run = {
        "config": base_config or {},
        "judges": judges,
        "input": (base_input or (None, None))[1] or None,
        "merged_from": [str(d) for d in dirs],
        "summary": {"instructions": len(records), "pairs": len(pairs), **asdict(report)},
    }
    report.files = RunDir(out).write(records.values(), errors.values(), pairs.values(), run)
    return report
