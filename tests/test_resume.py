"""A run killed with SIGKILL in the middle of a stage, and the same command run again: it resumes
from the request cache with every row exactly once, redoes nothing that had finished, copes with
a torn last cache line, and writes the pairs an uninterrupted run writes. Instructions and
conversations, on SmolLM2 alone (a pool of two samples and the judge) with a few tokens, so
that the whole of it takes seconds; one slot, so that each request is decoded alone
and resuming changes nothing about what the rest generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SMOL, cache_lines, kill_when_cached

ROOT = Path(__file__).resolve().parent.parent


ROWS = 4


def write_instructions(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Give one fact about the number {i}."}) + "\n"
                            for i in range(ROWS)))
    return path


def write_conversations(path: Path) -> Path:
    """The first conversations of examples/conversations.jsonl (OpenAI and ShareGPT style, with
    and without a system message)."""
    lines = (ROOT / "examples" / "conversations.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:ROWS]))
    return path


INPUTS = {"instructions": write_instructions, "conversations": write_conversations}


def run_args(src: Path, out: Path) -> list[str]:
    # ratings on (score-only) and every verdict deciding: the complete, judge and verify stages
    # write to the cache, and there are pairs to compare
    return [sys.executable, "-m", "edgepref", "run", str(src), "--out", str(out), "--pool", SMOL, "-n", "2",
            "--judge", SMOL, "--max-tokens", "8", "--evolutions", "0", "--judge-mode", "score-only",
            "--candidates", "1", "--min-confidence", "0", "--slots", "1", "-q"]


def run(args: list[str]) -> None:
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_sigkill_mid_stage_then_resume_writes_what_an_uninterrupted_run_writes(kind: str, tmp_path: Path) -> None:
    src = INPUTS[kind](tmp_path / "in.jsonl")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run(run_args(src, whole))

    kill_when_cached(run_args(src, killed), killed, lines=3, timeout=300, env=os.environ.copy())
    done_before = cache_lines(killed)
    assert done_before >= 3 and not (killed / "pairs.jsonl").exists()
    # a torn last line, as a power cut in the middle of a write would leave
    with open(next((killed / "cache").glob("complete-*.jsonl")), "a") as fh:
        fh.write('{"key": "torn')
    run(run_args(src, killed))

    for name in ("pairs.jsonl", "records.jsonl"):
        assert (killed / name).read_text() == (whole / name).read_text(), name
    records = [json.loads(line) for line in (killed / "records.jsonl").read_text().splitlines()]
    assert len(records) == ROWS and len({r["id"] for r in records}) == ROWS
    for r in records:
        pool = sorted(c["id"] for c in r["completions"] if c["source"] == "pool")
        assert pool == [f"{SMOL}:0", f"{SMOL}:1"]
        assert sorted(x["completion_id"] for x in r["ratings"]) == sorted(c["id"] for c in r["completions"])
    summary = json.loads((killed / "run.json").read_text())["summary"]
    assert summary["cached_requests"] >= done_before - 1  # what finished before the kill was reused
    assert summary["pairs"] > 0 and summary["instructions_paired"] + sum(summary["pairs_dropped"].values()) == ROWS
    for f in (killed / "cache").glob("*.jsonl"):
        keys = [json.loads(line)["key"] for line in f.read_text().splitlines()]  # the torn line was repaired
        assert len(keys) == len(set(keys)), f"duplicate cache rows in {f.name}"
