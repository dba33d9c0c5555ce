"""The run directory's one owner: its layout, lock, atomic writes and full-disk errors."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgepref
from edgepref.ui.cli import cli
from edgepref.core.errors import EdgeprefError
from edgepref.data.rundir import (
    CACHE, ERRORS, LOCK, PAIRS, RECORDS, RUN, NotARunDir, RunDir, RunDirInUse, SettingsChanged,
    refuse_inputs_inside)
from edgepref.core.files import JsonlAppender, write_text_atomic

PACKAGE = Path(edgepref.__file__).parent
FULL = Path("/dev/full")  # every write to it fails with ENOSPC: a real full disk, for one file
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")


def test_no_other_module_spells_the_run_directorys_file_names() -> None:
    names = {RECORDS, PAIRS, ERRORS, RUN, CACHE, LOCK}
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled


def test_write_then_read_back(tmp_path) -> None:
    run_dir = RunDir(tmp_path / "out")
    files = run_dir.write([{"id": "r1", "instruction": "Hi?"}], [{"stage": "input", "reason": "x"}],
                          [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"nope": 1}],
                          {"config": {}, "summary": {"pairs": 1}})
    assert set(files) == {"records", "errors", "pairs"}
    run, problem = run_dir.read_run()
    assert problem is None and run["summary"]["files"] == files
    records, bad = run_dir.read_records()
    assert [r.id for r in records] == ["r1"] and bad == []
    pairs, bad = run_dir.read_pairs()
    assert len(pairs) == 1 and bad == [f"{PAIRS} line 2: not a pair (no prompt, chosen, rejected) (left out)"]
    run_dir.run_file.write_text("{torn")
    assert run_dir.read_run()[0] == {} and RUN in run_dir.read_run()[1]


def test_a_second_run_on_a_locked_directory_says_who_holds_it(tmp_path) -> None:
    run_dir = RunDir(tmp_path)
    with run_dir.lock():
        with pytest.raises(RunDirInUse) as exc:
            with RunDir(tmp_path).lock():
                pass
        assert f"pid {os.getpid()}" in exc.value.message and "another --out" in exc.value.hint
    with RunDir(tmp_path).lock():  # released when the holder is done
        pass


def test_edgepref_run_stops_before_any_model_when_the_out_directory_is_in_use(tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a color."}) + "\n")
    out = tmp_path / "out"
    with RunDir(out).lock():
        result = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "-q"])
    assert result.exit_code == 1
    assert "in use by another edgepref run" in result.output and "pid" in result.output
    assert not (out / CACHE).exists() and not (out / RECORDS).exists()  # nothing ran, nothing written


@needs_dev_full
def test_a_full_disk_names_the_file_and_the_free_space_and_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / RUN
    target.write_text('{"old": true}')
    # the temporary file the atomic write goes through lands on a full device
    (tmp_path / f".{RUN}.tmp{os.getpid()}").symlink_to(FULL)
    with pytest.raises(EdgeprefError) as exc:
        write_text_atomic(target, '{"new": true}')
    assert str(target) in exc.value.message and "free" in exc.value.message
    assert "rerun" in exc.value.hint
    assert target.read_text() == '{"old": true}'  # never left at 0 bytes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{RUN}.tmp")]  # the temporary file is gone


@needs_dev_full
def test_a_full_disk_while_caching_a_request_is_the_same_clear_error(tmp_path) -> None:
    cache = tmp_path / "complete-x.jsonl"
    cache.symlink_to(FULL)
    with pytest.raises(EdgeprefError) as exc, JsonlAppender(cache) as out:
        out.append({"key": "k"})
    assert str(cache) in exc.value.message and "no space left" in exc.value.message


# ---------------------------------------------------------------- what a run may write over


def _instructions(path: Path, *texts: str) -> Path:
    path.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    return path


def test_run_refuses_an_out_directory_that_holds_someone_elses_files(tmp_path) -> None:
    src = _instructions(tmp_path / "in.jsonl", "Name a color.")
    out = tmp_path / "mine"
    out.mkdir()
    (out / PAIRS).write_text("my own pairs\n")
    (out / "notes.txt").write_text("my notes\n")
    for command in (["run", str(src), "-q"], ["try", "Name a color.", "-q"], ["merge", str(tmp_path)]):
        result = CliRunner().invoke(cli, [*command, "--out", str(out)])
        assert result.exit_code == 1, result.output
        assert "is not empty" in result.output and "not an edgepref run directory" in result.output
        assert "Traceback" not in result.output
    # nothing was written: not the outputs, not the lock, not the cache
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", PAIRS]
    assert (out / PAIRS).read_text() == "my own pairs\n"


def test_a_directory_is_a_run_directory_by_the_marker_in_its_run_json(tmp_path) -> None:
    run_dir = RunDir(tmp_path / "out")
    run_dir.check_writable(require_empty=True)  # absent
    run_dir.path.mkdir()
    (run_dir.path / LOCK).write_text("")  # a run stopped before it wrote run.json
    run_dir.check_writable(require_empty=True)
    (run_dir.path / "notes.txt").write_text("mine")
    run_dir.check_writable()  # the Python API writes beside files it does not write over
    with pytest.raises(NotARunDir) as info:
        run_dir.check_writable(require_empty=True)  # --out does not
    assert "notes.txt" in info.value.message
    (run_dir.path / "notes.txt").unlink()
    run_dir.run_file.write_text(json.dumps({"config": {}, "summary": {}}))  # not written by edgepref
    assert not run_dir.is_run_dir()
    with pytest.raises(NotARunDir):
        run_dir.check_writable()
    run_dir.write_run({"config": {}, "summary": {}})
    assert run_dir.is_run_dir() and json.loads(run_dir.run_file.read_text())["edgepref"] == {"run_layout": 1}
    run_dir.check_writable()
    with pytest.raises(NotARunDir) as info:
        RunDir(run_dir.run_file).check_writable()  # a file
    assert "is a file" in info.value.message


def test_an_input_inside_the_outputs_is_refused_before_anything_is_written(tmp_path) -> None:
    out = tmp_path / "out"
    RunDir(out).write_run({"config": {}, "summary": {}})  # an edgepref run directory
    run_json = RunDir(out).run_file.read_bytes()
    for inside in (out / RECORDS, out / CACHE / "in.jsonl"):
        inside.parent.mkdir(exist_ok=True)
        _instructions(inside, "Name a color.")
        before = inside.read_bytes()
        result = CliRunner().invoke(cli, ["run", str(inside), "--out", str(out), "-q"])
        assert result.exit_code == 1, result.output
        assert "would overwrite what it reads" in result.output and "Traceback" not in result.output
        assert inside.read_bytes() == before and RunDir(out).run_file.read_bytes() == run_json
        assert not (out / LOCK).exists() and not (out / PAIRS).exists()
    # the same helper guards merge: an input may not be --out itself
    with pytest.raises(NotARunDir) as info:
        refuse_inputs_inside(out, [tmp_path / "x", out])
    assert "is one of the inputs" in info.value.message
    refuse_inputs_inside(out, [tmp_path / "elsewhere.jsonl", "some-user/some-hub-dataset"])  # not inside


def test_a_rerun_lists_what_changed_and_how_a_run_runs_is_not_a_change(tmp_path) -> None:
    def header() -> dict:
        return {"config": {"pool": [{"model": "a", "max_tokens": 24}, {"model": "b", "max_tokens": 24}],
                           "pair": {"min_confidence": None}, "engine": {"threads": 4, "slots": 4, "n_ctx": 2048},
                           "models": {"qwen2.5-coder-0.5b": {"endpoints": ["http://a:1/v1"]}}},
                "judges": ["qwen2.5-coder-0.5b"],
                "input": {"path": "/a/in.jsonl", "sha256": "ab" * 32, "column": "instruction"}}

    run_dir = RunDir(tmp_path / "out")
    run_dir.begin(header())
    (run_dir.path / PAIRS).write_text("old pairs\n")
    # how it runs (threads, slots, endpoints) and where the same input lies: it resumes
    same = header()
    same["config"]["engine"].update(threads=1, slots=8)
    same["config"]["models"]["qwen2.5-coder-0.5b"]["endpoints"] = ["http://b:2/v1"]
    same["input"]["path"] = "/b/in.jsonl"
    run_dir.begin(same)
    assert (run_dir.path / PAIRS).read_text() == "old pairs\n"
    changed = header()
    changed["config"]["pool"][0]["max_tokens"] = 16
    changed["config"]["pair"]["min_confidence"] = 0.5
    changed["config"]["engine"]["n_ctx"] = 4096
    changed["input"]["sha256"] = "cd" * 32
    with pytest.raises(SettingsChanged) as info:
        run_dir.begin(changed)
    message = info.value.message
    assert "pool[0].max_tokens: 24 -> 16" in message and "pair.min_confidence: null -> 0.5" in message
    assert "engine.n_ctx: 2048 -> 4096" in message and "input: /b/in.jsonl (abababababab" in message  # the resumed run recorded /b
    assert "threads" not in message and "pool[1]" not in message and "--overwrite" in info.value.hint
    assert (run_dir.path / PAIRS).read_text() == "old pairs\n"
    run_dir.begin(changed, overwrite=True)  # the old run's outputs go; the new header is written
    assert not (run_dir.path / PAIRS).exists()
    assert json.loads(run_dir.run_file.read_text())["config"]["pool"][0]["max_tokens"] == 16
    merged = RunDir(tmp_path / "merged")
    merged.write_run({**header(), "merged_from": ["out-0", "out-1"], "summary": {}})
    with pytest.raises(SettingsChanged) as info:
        merged.begin(header())  # a run over a merge's output would replace the merged pairs
    assert "the merge of 2 runs -> a run" in info.value.message


def test_a_stage_or_pair_command_does_not_write_its_output_over_its_input(tmp_path) -> None:
    src = _instructions(tmp_path / "in.jsonl", "Name a color.")
    before = src.read_bytes()
    for command in (["complete", str(src), "--out", str(src), "-q"],
                    ["judge", str(src), "--out", str(src), "-q"],
                    ["pair", str(src), "--out", str(src)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        assert "is one of the inputs" in result.output and "Traceback" not in result.output
        assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edgepref-config", "in.jsonl"]  # no .cache either
