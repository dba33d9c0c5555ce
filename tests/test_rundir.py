"""The run directory's one owner: its layout, lock, atomic writes and full-disk errors."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgepref
from edgepref.cli import cli
from edgepref.errors import EdgeprefError
from edgepref.rundir import CACHE, ERRORS, LOCK, PAIRS, RECORDS, RUN, RunDir, RunDirInUse
from edgepref.store import JsonlAppender, write_text_atomic

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
    assert len(pairs) == 1 and bad == [f"{PAIRS} line 2: not a pair (left out)"]
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
