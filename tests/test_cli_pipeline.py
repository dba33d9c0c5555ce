"""The pipeline commands as a user runs them: bad input, summaries, inspect, export, try, resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli


# Short generations keep each run to seconds on the embedded models.
FAST = ["--max-tokens", "24", "--evolutions", "0", "--judge-mode", "score-only", "--slots", "4", "-q"]
# The verdict chain of the 0.5B alone (above its noise floor): a run that does not test the chain
# never waits for the 1.5B (the messy run below keeps the default chain of both)
FAST_RUN = [*FAST, "--cascade", "qwen2.5-coder-0.5b"]


def write_messy_input(path: Path) -> None:
    lines = [
        b'{"id": "a", "instruction": "Name a planet."}',
        b"this is not json",
        b'{"id": "b", "instruction": "   "}',
        b'{"id": "c", "question": "no instruction field"}',
        b'{"id": "d", "instruction": "Caf\xe9 au lait?"}',  # Latin-1 byte: not UTF-8
        b'{"id": "e", "instruction": "Name a planet."}',  # duplicate of a
        b'{"id": "f", "instruction": "Say hello in Spanish."}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("messy")
    src = tmp / "in.jsonl"
    write_messy_input(src)
    out = tmp / "out"
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), *FAST])
    return result, out


def test_bad_rows_are_reported_and_the_run_goes_on(messy_run) -> None:
    result, out = messy_run
    assert result.exit_code == 0, result.output
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_row = {e["row"]: e["reason"] for e in errors if e["stage"] == "input"}
    assert set(by_row) == {2, 3, 4, 5}
    assert "not JSON" in by_row[2] and "blank" in by_row[3]
    assert "no 'instruction' field" in by_row[4] and "UTF-8" in by_row[5]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "f"]  # the duplicate ran once
    assert "2 duplicates" not in result.output and "1 duplicates" in result.output
    assert (out / "pairs.jsonl").exists() and "pairs" in result.output


def test_missing_column_lists_the_columns(tmp_path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("question,answer\nWhat is 2+2?,4\n")
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(tmp_path / "o"), *FAST_RUN])
    assert result.exit_code == 1
    assert "its columns are: question, answer" in result.output and "--column" in result.output
    assert "Traceback" not in result.output


def test_column_option_and_csv(tmp_path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("question,answer\nName a color.,red\n")
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["run", str(src), "--column", "question", "--out", str(out), *FAST_RUN])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "records.jsonl").read_text().splitlines()[0])["instruction"] == "Name a color."


def test_nothing_usable_exits_non_zero(tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": ""}\nnot json\n')
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), *FAST_RUN])
    assert result.exit_code == 1 and "no usable instructions" in result.output
    assert len((out / "errors.jsonl").read_text().splitlines()) == 2


def rated_run_dir(tmp: Path) -> Path:
    """An output directory written by the real pair stage from hand-rated records."""
    from edgepref.stages.config import PipelineConfig
    from edgepref.stages.pair import pair_records
    from edgepref.core.records import Completion, Rating, Record
    from edgepref.core.files import write_jsonl_atomic

    records = [
        Record(id=f"r{i}", instruction=f"Question {i}?", completions=[
            Completion("qwen2.5-coder-0.5b:0", f"A good answer {i}.", "qwen2.5-coder-0.5b"),
            Completion("smollm2-135m:0", f"meh {i}", "smollm2-135m"),
        ], ratings=[
            Rating("qwen2.5-coder-0.5b:0", "qwen2.5-coder-0.5b", "overall", 5, 4.8, "clear"),
            Rating("smollm2-135m:0", "qwen2.5-coder-0.5b", "overall", 2, 2.1, "vague"),
        ]) for i in range(3)
    ]
    cfg = PipelineConfig()
    cfg.pair.decide = "ratings"  # hand-made ratings and no pairwise verdicts
    report = pair_records(records, cfg.pair)
    out = tmp / "run"
    write_jsonl_atomic(out / "pairs.jsonl", (p.to_row() for p in report.pairs))
    from dataclasses import asdict

    (out / "run.json").write_text(json.dumps({"config": asdict(cfg), "judges": ["qwen2.5-coder-0.5b"],
                                              "summary": {"instructions": 3, "pairs_dropped": {}}}, default=str))
    return out


def test_inspect_a_real_run(messy_run) -> None:
    _, out = messy_run
    shown = CliRunner().invoke(cli, ["inspect", str(out), "--limit", "3"])
    assert shown.exit_code == 0 and "chosen by" in shown.output


def test_export_with_card_and_hub_edge(tmp_path, monkeypatch) -> None:
    out = rated_run_dir(tmp_path)
    shown = CliRunner().invoke(cli, ["inspect", str(out), "--min-margin", "2"])
    assert shown.exit_code == 0 and "3 shown by the filters, of 3" in shown.output
    dest = tmp_path / "release"
    res = CliRunner().invoke(cli, ["export", str(out), "--format", "parquet", "--to", str(dest)])
    assert res.exit_code == 0, res.output
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(dest / "pairs.parquet"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names) and len(ds) == 3
    card = (dest / "README.md").read_text()
    assert "## Method" in card and "qwen2.5-coder-0.5b" in card and "pairs: 3" in card
    offline = CliRunner().invoke(cli, ["export", str(out), "--to", str(dest), "--push-to-hub", "me/x"])
    assert offline.exit_code == 1 and "HF_HUB_OFFLINE" in offline.output
    # Up to the network edge: with the Hub reachable, the dataset and its card are handed over.
    pushed = {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, private=True: pushed.update(repo=repo, rows=len(self), private=private))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kw: pushed.update(card=kw["path_or_fileobj"]))
    res = CliRunner().invoke(cli, ["export", str(out), "--format", "hf", "--to", str(dest), "--push-to-hub", "me/x"])
    assert res.exit_code == 0, res.output
    assert pushed["repo"] == "me/x" and pushed["rows"] == 3 and pushed["private"] is True and b"## Method" in pushed["card"]
    assert (dest / "dataset").is_dir()


def test_export_with_no_pairs_is_a_clear_error(tmp_path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    (out / "pairs.jsonl").write_text("")
    res = CliRunner().invoke(cli, ["export", str(out), "--to", str(tmp_path / "x")])
    assert res.exit_code == 1 and "no pairs to export" in res.output and "Traceback" not in res.output


def test_try_shows_candidates_and_verdict() -> None:
    # every verdict decides at |margin| >= 0: the instruction gets a pair, and try says which
    res = CliRunner().invoke(cli, ["try", "Name a fruit.", *FAST, "--min-confidence", "0"])
    assert res.exit_code == 0, res.output
    assert "qwen2.5-coder-0.5b:0" in res.output and "smollm2-135m:0" in res.output
    assert "pairwise check: margins of " in res.output and "no pair" not in res.output
    assert re.search(r"^pair: \S+:\d\S* \(\d\.\d\d\) over \S+:\d\S* \(\d\.\d\d\); pairwise \|margin\| ≥ 0\.0$",
                     res.output, re.M), res.output


def test_a_seeded_run_is_byte_identical_in_two_fresh_processes(tmp_path) -> None:
    # Sampled completions (temperature > 0), evolutions and rationale ratings: every stage that
    # draws tokens. Two processes, each loading the models afresh, must write the same bytes.
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q}) + "\n" for i, q in enumerate(
        ["Name a planet and one fact about it.", "Give a tip for learning to cook."])))
    config = tmp_path / "short.toml"  # short rewrites and rationales: the same stages, in seconds
    config.write_text("[evolve]\nmax_tokens = 24\n[judge]\nmax_rationale_chars = 40\n")
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        subprocess.run(
            [sys.executable, "-m", "edgepref", "run", str(src), "--out", str(out), "--seed", "5", "--config", str(config),
             "--max-tokens", "24", "--evolutions", "1", "--judge-mode", "rationale",
             "--cascade", "qwen2.5-coder-0.5b", "--candidates", "2", "--slots", "4", "-q"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(),
        )
        outs.append(out)
    for name in ("pairs.jsonl", "records.jsonl"):
        first, second = ((o / name).read_bytes() for o in outs)
        assert first and first == second, name
    records = [json.loads(line) for line in (outs[0] / "records.jsonl").read_text().splitlines()]
    for r in records:  # every completion, rewrites too, has a rating with its rationale
        assert {x["completion_id"] for x in r["ratings"]} == {c["id"] for c in r["completions"]}
        assert all(x["rationale"].strip() and 1 <= x["score"] <= 5 for x in r["ratings"])
    assert any(c["source"] == "evol" for r in records for c in r["completions"])


def test_pair_command_takes_the_pair_settings_from_the_table(tmp_path) -> None:
    from edgepref.core.records import Completion, Rating, Record
    from edgepref.core.files import write_jsonl_atomic

    def record(i: int, margin: float) -> Record:
        return Record(id=f"r{i}", instruction=f"Question {i}?", completions=[
            Completion("q:0", f"A good answer {i}.", "qwen2.5-coder-0.5b"),
            Completion("s:0", f"meh {i}", "smollm2-135m"),
        ], ratings=[Rating("q:0", "j", "overall", 4, 4.0), Rating("s:0", "j", "overall", 2, 2.0)],
            judge_info={"verdict": {"x": "q:0", "y": "s:0", "margin": margin, "margins": {"j": margin},
                                    "asked": ["j"], "decided_by": ["j"] if abs(margin) > 0.1 else []}})

    src = tmp_path / "judged.jsonl"
    write_jsonl_atomic(src, (record(i, m).to_row() for i, m in enumerate((0.5, 0.01, -0.3))))
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(cli, ["pair", str(src), "--out", str(out)])
    assert result.exit_code == 0 and "2 pairs; dropped: uncertain 1" in result.output  # no judge was sure of r1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["chosen"] for r in rows] == ["A good answer 0.", "meh 2"]  # the verdict decides, not the scores
    result = CliRunner().invoke(cli, ["pair", str(src), "--out", str(out), "--min-confidence", "0",
                                      "--pair-format", "conversational"])
    assert result.exit_code == 0 and "3 pairs; dropped: none" in result.output
    assert json.loads(out.read_text().splitlines()[0])["chosen"][-1]["role"] == "assistant"
    result = CliRunner().invoke(cli, ["pair", str(src), "--out", str(out), "--decide", "ratings"])
    assert "3 pairs" in result.output


def test_a_rerun_with_other_settings_says_what_changed_and_needs_overwrite(tmp_path) -> None:
    """One real run; then the same directory with another threshold (refused, nothing touched),
    the same settings (resumed from the cache), and the other threshold with --overwrite."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a planet."}) + "\n")
    out = tmp_path / "out"
    run = ["run", str(src), "--out", str(out), *FAST_RUN]
    first = CliRunner().invoke(cli, run)
    assert first.exit_code == 0, first.output
    pairs, records = (out / "pairs.jsonl").read_bytes(), (out / "records.jsonl").read_bytes()

    changed = CliRunner().invoke(cli, [*run, "--min-confidence", "1000"])
    assert changed.exit_code == 1, changed.output
    assert "holds a run made with other settings" in changed.output
    assert "pair.min_confidence: null -> 1000.0" in changed.output and "--overwrite" in changed.output
    assert (out / "pairs.jsonl").read_bytes() == pairs and (out / "records.jsonl").read_bytes() == records

    same = CliRunner().invoke(cli, [*run, "--threads", "1"])  # how it runs is not a change: it resumes
    assert same.exit_code == 0, same.output
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["completion_tokens"] == 0 and summary["cached_requests"] > 0
    assert (out / "pairs.jsonl").read_bytes() == pairs

    # no judge is that sure: no pair, and that is a result (exit 0), not a failure
    over = CliRunner().invoke(cli, [*run, "--min-confidence", "1000", "--overwrite"])
    assert over.exit_code == 0, over.output
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["config"]["pair"]["min_confidence"] == 1000.0
    assert run_json["summary"]["pairs"] == 0 and run_json["summary"]["pairs_dropped"] == {"uncertain": 1}
    assert run_json["summary"]["failures"] == [] and (out / "pairs.jsonl").read_text() == ""
    assert run_json["summary"]["completion_tokens"] == 0  # the cache still answered every request


def test_out_and_overwrite_document_what_a_run_may_write_over() -> None:
    for command in ("run", "try"):
        shown = CliRunner().invoke(cli, [command, "--help"])
        assert shown.exit_code == 0
        text = " ".join(shown.output.split())
        assert "--overwrite" in text and "not edgepref's are never overwritten" in text
    text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "must be new, empty or a run directory of edgepref" in text


def test_export_writes_over_nothing_it_did_not_write(tmp_path) -> None:
    out = rated_run_dir(tmp_path)
    export = lambda dest, *more: CliRunner().invoke(cli, ["export", str(out), "--to", str(dest), *more])  # noqa: E731

    # a folder of the user's: its README.md is not replaced, nothing is added, the files are named
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my own notes")
    res = export(mine)
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "README.md" in text and "not an edgepref export" in text and "--overwrite" in text
    assert (mine / "README.md").read_text() == "my own notes" and sorted(p.name for p in mine.iterdir()) == ["README.md"]
    # a folder that only holds other files is not empty either
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    res = export(other, "--format", "parquet")
    assert res.exit_code == 1 and "notes.txt" in res.output and not (other / "pairs.parquet").exists()

    # an export's own folder: exporting again (another format too) replaces what it wrote
    release = tmp_path / "release"
    assert export(release).exit_code == 0
    card = (release / "README.md").read_text()
    again = export(release, "--format", "parquet")
    assert again.exit_code == 0, again.output
    assert (release / "pairs.parquet").is_file() and (release / "README.md").read_text() == card
    marker = json.loads((release / ".edgepref-export.json").read_text())
    assert set(marker["files"]) == {"README.md", "pairs.jsonl", "pairs.parquet"}
    # ... but not a card the user edited since
    (release / "README.md").write_text(card + "\nLicense: mine.\n")
    res = export(release)
    assert res.exit_code == 1 and "README.md" in res.output and "changed since" in " ".join(res.output.split())
    assert (release / "README.md").read_text().endswith("License: mine.\n")
    forced = export(release, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert (release / "README.md").read_text() == card

    # --overwrite into the user's folder writes the export and keeps the user's other files
    assert export(other, "--overwrite").exit_code == 0
    assert (other / "notes.txt").read_text() == "keep" and (other / "pairs.jsonl").is_file()
    # the pairs an export reads are never its output, --overwrite or not
    res = export(out, "--overwrite")
    assert res.exit_code == 1 and "over the pairs it reads" in " ".join(res.output.split())


def test_report_writes_over_no_file_that_is_not_a_report(tmp_path) -> None:
    from edgepref.ui.report import REPORT_MARKER
    from edgepref.data.rundir import RunDir

    out = rated_run_dir(tmp_path)
    report = lambda *args: CliRunner().invoke(cli, ["report", str(out), *args])  # noqa: E731

    notes = tmp_path / "notes.html"
    notes.write_text("<html><body>my notes</body></html>")
    res = report("--out", str(notes))
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert str(notes) in text and "not an edgepref report" in text and "--overwrite" in text
    assert notes.read_text() == "<html><body>my notes</body></html>"

    # a report may be written again over itself
    page = tmp_path / "page.html"
    assert report("--out", str(page)).exit_code == 0
    assert REPORT_MARKER in page.read_text()[:4096]
    assert report("--out", str(page)).exit_code == 0
    # the files the report is made from: never, --overwrite or not
    pairs = (out / "pairs.jsonl").read_bytes()
    res = report("--out", str(out / "pairs.jsonl"), "--overwrite")
    assert res.exit_code == 1 and "one of the inputs" in res.output
    assert (out / "pairs.jsonl").read_bytes() == pairs
    # with --overwrite the user's file is replaced
    assert report("--out", str(notes), "--overwrite").exit_code == 0 and REPORT_MARKER in notes.read_text()

    # DIR/report.html by default: refused in a directory edgepref did not mark as its run's ...
    (out / "report.html").write_text("<html>hand-written</html>")
    res = report()
    assert res.exit_code == 1 and "not an edgepref report" in res.output
    assert (out / "report.html").read_text() == "<html>hand-written</html>"
    # ... and replaced in a run directory, whose report.html is edgepref's by its layout
    RunDir(out).write_run(json.loads((out / "run.json").read_text()))
    assert report().exit_code == 0 and REPORT_MARKER in (out / "report.html").read_text()
