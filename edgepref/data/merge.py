"""Combine the output directories of shard runs (`edgepref run ... --shard I/N`) into one.

Each shard wrote a run directory (rundir.py) for its share of the input. The merge keeps every
record and pair once (by id: a shard that was run twice, or a directory given twice, adds
nothing), keeps every error once, checks that the shards were made with the same settings and
from the same input (run.json's "input": its content hash, or Hub name, split and revision), and
says which shards of 0..N-1 are missing. An empty shard (no instruction fell to it) adds
nothing and counts as seen. The result is an ordinary run directory: `edgepref export`,
`inspect` and TRL read it like any other. It is written to a new or empty directory, or over an
earlier merge's output, never over a run's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, InputError
from .rundir import (
    RECORDS, NotARunDir, RunDir, config_changes, describe_input, input_key, refuse_inputs_inside)
from ..core.files import read_jsonl


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
    """Shards of one split must come from one input (compared when both recorded theirs)."""
    ident = run.get("input")
    if base is None or not ident or not base[1] or allow_mixed:
        return
    if input_key(ident) != input_key(base[1]):
        raise ConfigError(
            f"{d} is a shard of another input than {base[0]}: {describe_input(ident)} vs {describe_input(base[1])}",
            "merge the shards of one input (rerun the odd shard on it); --allow-mixed merges anyway",
        )


def merge_runs(dirs: list[str | Path], out_dir: str | Path, *, allow_mixed: bool = False) -> MergeReport:
    """Merge run directories into out_dir (new, empty or an earlier merge; not one of them)."""
    out = Path(out_dir)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise InputError("nothing to merge", "name the shard output directories: edgepref merge out-0 out-1 --out all")
    _check_out(out, dirs)
    report = MergeReport(out_dir=str(out))
    records: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    base_config: dict | None = None
    base_dir: Path | None = None
    base_input: tuple[Path, dict] | None = None  # the first shard's directory and input
    judges: list = []
    for d in dirs:
        run_dir = RunDir(d)
        if not run_dir.records_file.is_file():
            raise InputError(f"{d} has no {RECORDS}", "pass directories written by `edgepref run --out DIR`")
        run, problem = run_dir.read_run()
        if problem:
            raise InputError(f"{d}: {problem}", "rerun that shard (it resumes) to write its run.json again")
        config = run.get("config")
        if config is not None:
            if base_config is None:
                base_config, base_dir, judges = config, d, run.get("judges", [])
            else:
                diff = config_changes(base_config, config)
                if diff and not allow_mixed:
                    raise ConfigError(
                        f"{d} was made with other settings than {base_dir}: " + "; ".join(diff[:5]),
                        "merge only shards of one run, or pass --allow-mixed to merge anyway",
                    )
        shard = (run.get("summary") or {}).get("shard")
        if shard:
            _check_same_input(d, run, base_input, allow_mixed)
            base_input = base_input or (d, run.get("input") or {})
            i, n = shard
            if report.shard_count is not None and n != report.shard_count:
                raise ConfigError(f"{d} is shard {i}/{n} but another input is a shard of {report.shard_count}",
                                  "merge the shards of one split")
            report.shard_count = n
            report.shards_seen.append(i)
        report.runs += 1
        for row in run_dir.record_rows():
            if row.get("id") in records:
                report.duplicate_records += 1
            else:
                records[row["id"]] = row
        if run_dir.pairs_file.is_file():
            for row in read_jsonl(run_dir.pairs_file):
                if row.get("id") in pairs:
                    report.duplicate_pairs += 1
                else:
                    pairs[row["id"]] = row
        else:
            report.runs_without_pairs.append(str(d))
        for row in run_dir.error_rows():
            errors.setdefault(json.dumps(row, sort_keys=True), row)
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
