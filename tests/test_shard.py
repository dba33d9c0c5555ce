"""Sharding (`run --shard I/N`) and `edgepref merge`: every instruction in exactly one shard,
shard outputs combined with nothing lost and nothing twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.cli import cli
from edgepref.errors import ConfigError, InputError
from edgepref.inputs import parse_shard, read_instructions
from edgepref.merge import merge_runs

from .test_cli_pipeline import FAST


def write_input(path: Path, n: int, extra: list[bytes] = ()) -> Path:
    lines = [json.dumps({"instruction": f"Give one fact about the number {i}."}).encode() for i in range(n)]
    path.write_bytes(b"\n".join([*lines, *extra]) + b"\n")
    return path


def test_parse_shard() -> None:
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(InputError) as info:
            parse_shard(bad)
        assert "0/4" in info.value.hint


def test_shards_partition_the_input(tmp_path) -> None:
    src = write_input(tmp_path / "in.jsonl", 40, [b"not json", b'{"instruction": "Give one fact about the number 3."}'])
    whole = read_instructions(src)
    shards = [read_instructions(src, shard=(i, 3)) for i in range(3)]
    ids = [r.id for s in shards for r in s.records]
    assert sorted(ids) == sorted(r.id for r in whole.records) and len(ids) == len(set(ids))
    assert all(s.records for s in shards)  # 40 instructions: no shard is empty
    assert sum(len(s.problems) for s in shards) == len(whole.problems) == 1
    assert sum(s.duplicates for s in shards) == whole.duplicates == 1
    # The split depends on the text, not on the row order.
    shuffled = read_instructions(src, shard=(1, 3), shuffle=True, seed=7)
    assert {r.id for r in shuffled.records} == {r.id for r in shards[1].records}


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    src = write_input(tmp / "in.jsonl", 5, [b"not json"])
    outs = []
    for i in range(2):
        out = tmp / f"out-{i}"
        result = CliRunner().invoke(cli, ["run", str(src), "--shard", f"{i}/2", "--out", str(out), *FAST])
        assert result.exit_code == 0, result.output
        outs.append(out)
    return tmp, outs


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_merge_combines_shards_once(shard_runs) -> None:
    tmp, (a, b) = shard_runs
    assert json.loads((a / "run.json").read_text())["summary"]["shard"] == [0, 2]
    merged = tmp / "all"
    result = CliRunner().invoke(cli, ["merge", str(a), str(b), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    records = rows(merged / "records.jsonl")
    assert len(records) == 5 and len({r["id"] for r in records}) == 5
    pairs = rows(merged / "pairs.jsonl")
    assert len(pairs) == len(rows(a / "pairs.jsonl")) + len(rows(b / "pairs.jsonl"))
    input_errors = [e for e in rows(merged / "errors.jsonl") if e["stage"] == "input"]
    assert len(input_errors) == 1  # reported by one shard only
    assert "2 of 2" in result.output
    # The merged directory is an ordinary run directory.
    result = CliRunner().invoke(cli, ["inspect", str(merged), "--limit", "0"])
    assert result.exit_code == 0, result.output


def test_merge_skips_repeats_and_names_missing_shards(shard_runs, tmp_path) -> None:
    _, (a, b) = shard_runs
    report = merge_runs([a, a], tmp_path / "m")
    assert report.duplicate_records == len(rows(a / "records.jsonl"))
    assert report.records == len(rows(a / "records.jsonl"))
    assert report.missing_shards == [1]
    result = CliRunner().invoke(cli, ["merge", str(a), "--out", str(tmp_path / "m2")])
    assert result.exit_code == 0 and "missing shard(s): 1/2" in result.output


def test_merge_refuses_shards_made_with_other_settings(shard_runs, tmp_path) -> None:
    _, (a, b) = shard_runs
    other = tmp_path / "other"
    shutil.copytree(b, other)
    run = json.loads((other / "run.json").read_text())
    run["config"]["judge"]["mode"] = "rationale"
    (other / "run.json").write_text(json.dumps(run))
    with pytest.raises(ConfigError) as info:
        merge_runs([a, other], tmp_path / "m")
    assert "judge.mode" in info.value.message and "--allow-mixed" in info.value.hint
    assert merge_runs([a, other], tmp_path / "m", allow_mixed=True).records == 5
    with pytest.raises(InputError):
        merge_runs([a, tmp_path], tmp_path / "m3")  # not a run directory
