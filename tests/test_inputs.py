"""Reading instructions from every supported format, with per-row problems."""

from __future__ import annotations

import json

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepref.stages.config import EvolveConfig, JudgeConfig, PipelineConfig, PoolMember
from edgepref.core.errors import InputError
from edgepref.data.inputs import read_instructions
from edgepref.runs.pipeline import run_pipeline

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
    for wrong in (0, -1, True, 2.5):
        with pytest.raises(InputError, match="--limit"):
            read_instructions(path, limit=wrong)


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
    out = tmp_path / "out"  # a new directory: --out must be empty or a run directory
    result = run_pipeline(["Name a color.", too_long], out, cfg,
                          backends={QWEN: qwen_engine, SMOL: smol_engine})
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in errors} == {"complete"}
    assert all("--n-ctx" in e["reason"] for e in errors) and len(errors) == 2  # one per pool member
    ok = next(r for r in result.records if r.instruction == "Name a color.")
    assert len(ok.completions) == 2 and len(ok.ratings) == 2


# ---------------------------------------------------------------- edge cases

BOM = "\ufeff"


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_a_file_that_starts_with_a_bom_keeps_its_first_row(tmp_path, kind: str) -> None:
    path = tmp_path / f"bom.{kind}"
    rows = [{"instruction": "First question?"}, {"instruction": "Second question?"}]
    body = {"jsonl": "".join(json.dumps(r) + "\n" for r in rows), "json": json.dumps(rows),
            "csv": "instruction\nFirst question?\nSecond question?\n"}[kind]
    path.write_text(BOM + body, encoding="utf-8")
    batch = read_instructions(path)
    assert batch.column == "instruction" and not batch.problems
    assert [r.instruction for r in batch.records] == ["First question?", "Second question?"]


def test_an_instruction_with_nothing_printable_is_an_input_problem(tmp_path) -> None:
    invisible = ["\u200b\u200d\u2060", " \t\u00a0\u3000", "\x00\x07\x1b", "\ufeff\u200e\u202e", "\u3164\u2800",
                 "\u00ad"]
    lines = [json.dumps({"instruction": "Name a color."})]
    lines += [json.dumps({"id": f"x{i}", "instruction": text}) for i, text in enumerate(invisible)]
    lines.append(json.dumps({"instruction": "\u200bName a\u200d planet."}))  # visible text around them is kept
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batch = read_instructions(path)
    assert [r.instruction for r in batch.records] == ["Name a color.", "\u200bName a\u200d planet."]
    assert [(p.row, p.id) for p in batch.problems] == [(i + 2, f"x{i}") for i in range(len(invisible))]
    assert all(p.reason.startswith("blank 'instruction'") for p in batch.problems)
    assert "only invisible characters" in batch.problems[0].reason


@pytest.mark.parametrize("name", ["missing.parquet", "missing.csv", "missing.json", "missing.arrow",
                                  "missing.jsonl", "no/such/dir", "./data", "../data"])
def test_a_missing_local_path_is_not_tried_as_a_hub_name(tmp_path, monkeypatch, name: str) -> None:
    def hub(*args, **kwargs):
        raise AssertionError("a local path was tried as a Hub dataset name")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        read_instructions(name)
    assert info.value.message == f"no such file: {name}" and "OWNER/NAME" in info.value.hint


def test_a_missing_file_suggests_the_near_one_and_a_hub_name_still_goes_to_the_hub(tmp_path, monkeypatch) -> None:
    (tmp_path / "train.csv").write_text("instruction\nHi?\n")
    with pytest.raises(InputError) as info:
        read_instructions(tmp_path / "trian.csv")
    assert info.value.hint == f"did you mean {tmp_path / 'train.csv'}?"
    asked = []

    def hub(name, *args, **kwargs):
        asked.append(name)
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    for name in ("some-user/some-dataset", "imdb"):
        with pytest.raises(InputError):
            read_instructions(name)
    assert asked == ["some-user/some-dataset", "imdb"]


def test_rows_python_reads_but_json_does_not_are_problems(tmp_path) -> None:
    lines = [
        '{"instruction": "Fine."}',
        '{"instruction": "Not a number.", "score": NaN}',
        '{"instruction": "Too big.", "score": Infinity}',
        '{"instruction": "Lone \\ud800 surrogate."}',
        '{"instruction": "Deep.", "x": ' + "[" * 100000 + "]" * 100000 + "}",
        '{"instruction": "Long int.", "x": ' + "9" * 5000 + "}",
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    batch = read_instructions(path)
    assert [r.instruction for r in batch.records] == ["Fine."]
    reasons = {p.row: p.reason for p in batch.problems}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "NaN" in reasons[2] and "Infinity" in reasons[3] and "surrogate" in reasons[4]


def test_other_fields_are_kept_as_strict_json(tmp_path) -> None:
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"instruction": "A?", "x": float("nan")}, {"instruction": "B?", "x": 2.5}]).to_parquet(
        str(path))
    batch = read_instructions(path)
    assert [r.extra for r in batch.records] == [{"x": None}, {"x": 2.5}]  # a parquet NaN is not JSON


def test_a_records_file_with_rows_that_are_not_records(tmp_path) -> None:
    from edgepref.data.inputs import read_records

    path = tmp_path / "records.jsonl"
    good = {"id": "a", "instruction": "Hi?", "completions": [{"id": "m:0", "text": "Hello.", "model": "m"}]}
    bad = [{"id": 1, "instruction": "Hi?"}, {"id": "b", "instruction": "Hi?", "completions": "oops"},
           {"id": "c", "instruction": "Hi?", "completions": [{"text": "no id"}]}, {"id": "d"}]
    path.write_text("\n".join(json.dumps(r) for r in [good, *bad]) + "\n")
    records, problems = read_records(path)
    assert [r.id for r in records] == ["a"] and records[0].completions[0].text == "Hello."
    assert [p.row for p in problems] == [2, 3, 4, 5]
    assert all(p.reason.startswith("not a record") for p in problems)


# ---------------------------------------------------------------- property-based: every row accounted for

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
INSTRUCTIONS = st.text(max_size=12) | st.sampled_from(["Name a color.", "   ", "\u200b", "Name a color."])
OBJECTS = st.dictionaries(st.sampled_from(["instruction", "prompt", "id", "extra"]) | st.text(max_size=5),
                          INSTRUCTIONS | JSON_VALUES, max_size=4)
# one line of a JSONL file: a JSON object, another JSON value, any text, any bytes or a blank line
LINES = st.one_of(
    OBJECTS.map(lambda o: json.dumps(o).encode()),
    OBJECTS.map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=20).map(lambda t: t.encode("utf-8")),
    st.binary(max_size=20),
    st.sampled_from([b"", b"  ", b"\t", b"\r", "\u2028".encode()]),
).map(lambda line: line.replace(b"\n", b" "))


def _non_blank_rows(content: bytes) -> list[int]:
    """The line numbers a reader must account for: lines that are not empty after decoding
    (a line that does not decode is a row too)."""
    rows = []
    for n, raw in enumerate(content.split(b"\n"), start=1):
        raw = raw[3:] if n == 1 and raw.startswith(b"\xef\xbb\xbf") else raw
        try:
            if raw.decode("utf-8").strip():
                rows.append(n)
        except UnicodeDecodeError:
            rows.append(n)
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, max_size=8), bom=st.booleans())
def test_every_row_is_a_record_or_a_numbered_problem(tmp_path, lines, bom) -> None:
    from edgepref.data.inputs import read_records

    content = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines)
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    rows = _non_blank_rows(content)
    try:
        batch = read_instructions(path)
    except InputError as exc:  # the file as a whole: objects, but none with an instruction column
        assert "column" in exc.message
    else:
        problem_rows = [p.row for p in batch.problems]
        assert len(set(problem_rows)) == len(problem_rows) and set(problem_rows) <= set(rows)
        assert len(batch.records) + len(problem_rows) + batch.duplicates == len(rows) == batch.rows_read
        assert all(r.instruction.strip() == r.instruction and r.instruction for r in batch.records)
        for r in batch.records:  # what a record keeps can be written back as strict UTF-8 JSON
            json.dumps({"instruction": r.instruction, **r.extra}, ensure_ascii=False, allow_nan=False).encode()
    records, problems = read_records(path)
    assert len(records) + len(problems) == len(rows)
    assert sorted({p.row for p in problems}) == sorted(p.row for p in problems)
