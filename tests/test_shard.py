"""Sharding (`run --shard I/N`) and `edgepref merge`: every instruction in exactly one shard,
shard outputs combined with nothing lost and nothing twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli
from edgepref.core.errors import ConfigError, InputError
from edgepref.data.inputs import parse_shard, read_instructions, shard_index
from edgepref.data.merge import merge_runs

from .test_cli_pipeline import FAST, FAST_RUN


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
        result = CliRunner().invoke(cli, ["run", str(src), "--shard", f"{i}/2", "--out", str(out), *FAST_RUN])
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


# ---------------------------------------------------------------- empty shards and the input's identity


def text_in_shard(shard: int, count: int = 2, start: int = 0) -> str:
    """An instruction that falls to `shard` of `count` (the split hashes the text)."""
    return next(t for i in range(start, start + 100) if shard_index(t := f"Give one fact about the number {i}.",
                                                                     count) == shard)


@pytest.fixture(scope="module")
def one_row_shards(tmp_path_factory):
    """An input of one instruction run as two shards: shard `full` gets it, the other none."""
    tmp = tmp_path_factory.mktemp("one-row")
    text = text_in_shard(0)
    src = tmp / "in.jsonl"
    src.write_text(json.dumps({"instruction": text}) + "\n")
    results = {}
    for i in range(2):
        results[i] = CliRunner().invoke(cli, ["run", str(src), "--shard", f"{i}/2", "--out", str(tmp / f"out-{i}"),
                                              *FAST_RUN])
    return tmp, src, results


def test_an_empty_shard_succeeds_with_empty_outputs_that_merge(one_row_shards) -> None:
    tmp, src, results = one_row_shards
    assert results[0].exit_code == 0, results[0].output
    assert results[1].exit_code == 0, results[1].output  # no instruction fell to shard 1: not an error
    empty = tmp / "out-1"
    assert rows(empty / "records.jsonl") == [] and rows(empty / "pairs.jsonl") == []
    run = json.loads((empty / "run.json").read_text())
    assert run["summary"]["shard"] == [1, 2] and run["summary"]["instructions"] == 0
    import hashlib

    assert run["input"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert run["input"]["path"] == str(src.resolve()) and run["input"]["column"] == "instruction"
    merged = tmp / "all"
    result = CliRunner().invoke(cli, ["merge", str(tmp / "out-0"), str(empty), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert "2 of 2" in result.output and "missing" not in result.output
    assert len(rows(merged / "records.jsonl")) == 1
    assert json.loads((merged / "run.json").read_text())["input"]["sha256"] == run["input"]["sha256"]


def test_an_empty_shard_of_a_stage_command_succeeds(one_row_shards, tmp_path) -> None:
    _, src, _ = one_row_shards
    out = tmp_path / "completed-1.jsonl"
    result = CliRunner().invoke(cli, ["complete", str(src), "--shard", "1/2", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert out.read_text() == "" and "0 records" in result.output


def test_a_shard_of_an_input_with_no_usable_instruction_still_fails(tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": ""}\nnot json\n')
    for i in range(2):
        result = CliRunner().invoke(cli, ["run", str(src), "--shard", f"{i}/2", "--out", str(tmp_path / f"o{i}"), *FAST_RUN])
        assert result.exit_code == 1 and "no usable instructions" in result.output, result.output
        result = CliRunner().invoke(cli, ["complete", str(src), "--shard", f"{i}/2", "--out",
                                          str(tmp_path / f"c{i}.jsonl"), *FAST])
        assert result.exit_code == 1 and "no usable records" in result.output, result.output


def test_merge_refuses_shards_of_different_inputs(one_row_shards, tmp_path) -> None:
    tmp, src, _ = one_row_shards
    # shard 1 of another input that, like ours, has nothing in shard 1 (no model runs)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"instruction": text_in_shard(0, start=50)}) + "\n")
    # and shard 1 of a copy of our input at another path (another machine's disk)
    copy = tmp_path / "elsewhere" / "in.jsonl"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    for name, source in (("other-1", other), ("copy-1", copy)):
        result = CliRunner().invoke(cli, ["run", str(source), "--shard", "1/2", "--out", str(tmp_path / name), *FAST_RUN])
        assert result.exit_code == 0, result.output
    with pytest.raises(ConfigError) as info:
        merge_runs([tmp / "out-0", tmp_path / "other-1"], tmp_path / "m")
    assert "made from another input" in info.value.message
    assert str(src.resolve()) in info.value.message and str(other.resolve()) in info.value.message
    result = CliRunner().invoke(cli, ["merge", str(tmp / "out-0"), str(tmp_path / "other-1"), "--out",
                                      str(tmp_path / "m")])
    assert result.exit_code == 1 and "another input" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()
    # the same bytes at another path are the same input
    assert merge_runs([tmp / "out-0", tmp_path / "copy-1"], tmp_path / "m2").records == 1


def test_merge_writes_over_neither_a_run_nor_someone_elses_files(shard_runs, tmp_path) -> None:
    _, (a, b) = shard_runs
    run_copy = tmp_path / "a-copy"
    shutil.copytree(a, run_copy)
    with pytest.raises(InputError) as info:
        merge_runs([a, b], run_copy)
    assert "not a merge" in info.value.message
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "pairs.jsonl").write_text("mine\n")
    with pytest.raises(InputError) as info:
        merge_runs([a, b], foreign)
    assert "not an edgepref run directory" in info.value.message
    assert (foreign / "pairs.jsonl").read_text() == "mine\n"
    merge_runs([a, b], tmp_path / "m")
    assert merge_runs([a, b], tmp_path / "m").records == 5  # an earlier merge's output is merged over
