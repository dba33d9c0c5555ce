"""Reading instructions from every supported format, with per-row problems."""

from __future__ import annotations

import json

import datasets
import pytest

from edgepref.config import EvolveConfig, JudgeConfig, PipelineConfig, PoolMember
from edgepref.errors import InputError
from edgepref.inputs import read_instructions
from edgepref.pipeline import run_pipeline

from .conftest import QWEN, SMOL

ROWS = [{"id": i, "prompt": f"Question number {i}?"} for i in range(6)]


@pytest.mark.parametrize("kind", ["json", "parquet", "csv", "disk", "jsonl"])
def test_every_format_reads_the_same(tmp_path, kind: str) -> None:
    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"data.{kind}"
    if kind == "json":
        path.write_text(json.dumps(ROWS))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "csv":
        ds.to_csv(str(path), index=False)
    elif kind == "disk":
        ds.save_to_disk(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    batch = read_instructions(path)
    assert batch.column == "prompt"  # the fallback column
    assert [r.instruction for r in batch.records] == [r["prompt"] for r in ROWS]
    assert [r.id for r in batch.records] == [str(r["id"]) for r in ROWS]


def test_limit_shuffle_seed(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    a = read_instructions(path, shuffle=True, seed=3, limit=3)
    b = read_instructions(path, shuffle=True, seed=3, limit=3)
    c = read_instructions(path, shuffle=True, seed=4, limit=3)
    assert [r.id for r in a.records] == [r.id for r in b.records] and len(a.records) == 3
    assert [r.id for r in a.records] != [r.id for r in c.records]


def test_unknown_column_and_hub_name_offline(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(InputError) as info:
        read_instructions(path)
    assert "its columns are: q" in str(info.value)
    with pytest.raises(InputError) as info:
        read_instructions(path, column="nope")
    assert "no column 'nope'" in str(info.value)
    with pytest.raises(InputError):
        read_instructions("some-user/some-dataset-that-is-not-cached")


def test_rows_too_long_for_the_context_go_to_errors(tmp_path, qwen_engine, smol_engine) -> None:
    cfg = PipelineConfig(
        pool=[PoolMember(QWEN, max_tokens=16), PoolMember(SMOL, max_tokens=16)],
        evolve=EvolveConfig(num_evolutions=0),
        judge=JudgeConfig(models=[QWEN], mode="score-only"),
    )
    too_long = "word " * 2500  # more than a 2048-token slot
    result = run_pipeline(["Name a color.", too_long], tmp_path, cfg,
                          backends={QWEN: qwen_engine, SMOL: smol_engine})
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in errors} == {"complete"}
    assert all("--n-ctx" in e["reason"] for e in errors) and len(errors) == 2  # one per pool member
    ok = next(r for r in result.records if r.instruction == "Name a color.")
    assert len(ok.completions) == 2 and len(ok.ratings) == 2
