"""`edgepref review`: the screen driven by key presses (Textual's headless pilot, and the real
command in a pseudo-terminal, killed and resumed), decisions made elsewhere, what the review
changes (pairs.reviewed.jsonl, export, inspect, report, a rerun of the pipeline), what it
measures (each judge's agreement, counted by hand on a fixed review) and calibrate on a review.
The pairs are the reference run's (conftest), reviewed on a copy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepref.core.errors import ConfigError, InputError
from edgepref.runs.review import ReviewSession, labelled_pairs, review_summary
from edgepref.ui.cli import cli

from .conftest import SMOL

pytest.importorskip("textual", reason="edgepref review needs textual (a dependency of edgepref)")

from edgepref.ui.review import ReviewApp  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def texts_of(pair: dict) -> str:
    """The decision's `texts`, written out from its definition: sha256 of [prompt, chosen,
    rejected] as compact JSON with sorted keys, first 16 hex digits."""
    raw = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], ensure_ascii=False, sort_keys=True,
                     separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def least_sure_first(pairs: list[dict]) -> list[dict]:
    return sorted(pairs, key=lambda p: p["confidence"])  # every reference pair has a pairwise margin


async def _drive(app: ReviewApp, keys: list[str], size: tuple[int, int], seen: dict) -> None:
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        seen["first_chosen"] = str(app.query_one("#chosen-text").content)
        seen["stacked"] = app.query_one("#sides").has_class("stacked")
        for key in keys:
            await pilot.press(key)
        await pilot.pause()
        seen["judge_hidden"] = app.query_one("#judge").has_class("hidden")
        seen["decision_line"] = str(app.query_one("#decision").content)
        seen["svg"] = app.export_screenshot()


def drive(session: ReviewSession, keys: list[str], size=(120, 40), hide_judge=False) -> dict:
    seen: dict = {}
    asyncio.run(_drive(ReviewApp(session, hide_judge=hide_judge), keys, size, seen))
    return seen


def test_keys_write_each_decision_at_once(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    pairs = read_jsonl(run / "pairs.jsonl")
    order = least_sure_first(pairs)
    session = ReviewSession(run, reviewer="tester")
    # keep the first; swap the second, undo that and drop it; skip the third, go back to it and
    # swap it; look at the fourth without deciding (h hides the judge); quit
    seen = drive(session, ["k", "s", "u", "d", "space", "left", "s", "h"])
    assert seen["first_chosen"] == order[0]["chosen"] and not seen["stacked"]
    assert seen["judge_hidden"] and seen["decision_line"] == ""
    lines = read_jsonl(run / "review.jsonl")
    expected = [(order[0], "keep"), (order[1], "swap"), (order[1], "undo"), (order[1], "drop"),
                (order[2], "skip"), (order[2], "swap")]
    assert [(r["pair"], r["texts"], r["decision"]) for r in lines] == [
        (p["id"], texts_of(p), d) for p, d in expected]
    assert {(r["reviewer"], r["order"], r["seed"]) for r in lines} == {("tester", "least-sure", None)}
    assert all(r["at"].endswith("Z") for r in lines)

    summary = session.close()
    assert (summary.counts["kept"], summary.counts["swapped"], summary.counts["dropped"]) == (1, 1, 1)
    reviewed = {r["id"]: r for r in read_jsonl(run / "pairs.reviewed.jsonl")}
    assert len(reviewed) == len(pairs) - 1 and order[1]["id"] not in reviewed  # dropped
    kept, flipped = reviewed[order[0]["id"]], reviewed[order[2]["id"]]
    assert kept == {**order[0], "reviewed": "kept"}
    original = order[2]
    assert (flipped["chosen"], flipped["rejected"]) == (original["rejected"], original["chosen"])
    assert (flipped["model_chosen"], flipped["score_chosen"], flipped["completion_chosen"]) == (
        original["model_rejected"], original["score_rejected"], original["completion_rejected"])
    assert flipped["margin"] == -original["margin"] and flipped["reviewed"] == "swapped"
    assert {r["reviewed"] for i, r in reviewed.items() if i not in (order[0]["id"], order[2]["id"])} == {"unreviewed"}
    assert read_jsonl(run / "pairs.jsonl") == pairs  # never edited

    # a later session goes back to the first pair, swaps it, and undoes that: the keep it had holds again
    later = ReviewSession(run, reviewer="tester")
    assert later.pos == 3
    while later.back():
        pass
    later.decide("swap")
    assert later.undo() and later.pos == 0 and later.decision_for(order[0]) == "keep"
    assert [(r["pair"], r["decision"]) for r in read_jsonl(run / "review.jsonl")[-2:]] == [
        (order[0]["id"], "swap"), (order[0]["id"], "keep")]
    assert later.undo() is False  # nothing else was decided in this session


def test_a_narrow_terminal_stacks_the_responses_and_the_judge_can_start_hidden(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    seen = drive(ReviewSession(run), [], size=(80, 30), hide_judge=True)
    assert seen["stacked"] and seen["judge_hidden"]
    assert "chosen:" in seen["svg"] and "rejected:" in seen["svg"]
    assert not (run / "review.jsonl").read_text()  # nothing decided, nothing written


def test_a_seeded_sample_is_fixed_and_a_larger_one_extends_it(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    three = [p["id"] for p in ReviewSession(run, sample=3, seed=5).queue]
    assert three == [p["id"] for p in ReviewSession(run, sample=3, seed=5).queue]
    assert [p["id"] for p in ReviewSession(run, sample=5, seed=5).queue][:3] == three
    every = [p["id"] for p in ReviewSession(run, sample=100, seed=5).queue]
    assert sorted(every) == sorted(p["id"] for p in read_jsonl(run / "pairs.jsonl"))
    assert every != [p["id"] for p in ReviewSession(run, sample=100, seed=6).queue]
    session = ReviewSession(run, sample=3, seed=5, reviewer="tester")
    session.decide("keep")
    assert read_jsonl(run / "review.jsonl")[0] | {"at": None} == {
        "pair": three[0], "texts": texts_of(session.queue[0]), "decision": "keep", "reviewer": "tester",
        "at": None, "order": "sample", "seed": 5}
    # the filters: by decider and by how sure it was
    pairs = read_jsonl(run / "pairs.jsonl")
    judge = pairs[0]["decided_by"]
    assert len(ReviewSession(run, decider=judge).queue) == sum(p["decided_by"] == judge for p in pairs)
    cut = sorted(p["confidence"] for p in pairs)[2]
    assert len(ReviewSession(run, max_margin=cut).queue) == sum(p["confidence"] <= cut for p in pairs)


class Terminal:
    """`edgepref review` in a pseudo-terminal of 120x40: keys in, the screen's bytes drained."""

    def __init__(self, args: list[str]):
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgepref", "review", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.screen = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen += data

    def wait_for(self, what: bytes, timeout: float = 60) -> None:
        """Until `what` is on the screen; once the command has ended, what it wrote is read for 2 s more."""
        deadline = time.time() + timeout
        while what not in self.screen and time.time() < deadline:
            if self.proc.poll() is not None:
                deadline = min(deadline, time.time() + 2)
            time.sleep(0.05)
        assert what in self.screen, self.screen[-2000:].decode("utf-8", "replace")

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        os.close(self.master)


def wait_for_lines(path: Path, n: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and (not path.is_file() or path.read_text().count("\n") < n):
        time.sleep(0.05)
    assert path.read_text().count("\n") == n


def test_the_command_in_a_terminal_killed_then_resumed_loses_nothing(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    order = least_sure_first(read_jsonl(run / "pairs.jsonl"))
    log = run / "review.jsonl"
    term = Terminal([str(run), "--reviewer", "tester"])
    term.wait_for(b"least sure first")
    term.press(b"k")
    wait_for_lines(log, 1)
    term.press(b"s")
    wait_for_lines(log, 2)
    term.kill()  # a killed terminal: no quit, no cleanup
    assert [(r["pair"], r["decision"]) for r in read_jsonl(log)] == [(order[0]["id"], "keep"), (order[1]["id"], "swap")]

    # the same command resumes at the third pair; Ctrl-C quits and writes pairs.reviewed.jsonl
    term = Terminal([str(run), "--reviewer", "tester"])
    term.wait_for(f"pair 3 of {len(order)}".encode())
    term.press(b"d")
    wait_for_lines(log, 3)
    term.press(b"\x03")
    assert term.proc.wait(timeout=30) == 0
    term.kill()
    assert [(r["pair"], r["decision"]) for r in read_jsonl(log)] == [
        (order[0]["id"], "keep"), (order[1]["id"], "swap"), (order[2]["id"], "drop")]
    assert len(read_jsonl(run / "pairs.reviewed.jsonl")) == len(order) - 1
    # and again, at the fourth; q quits, and the summary is printed on the terminal
    term = Terminal([str(run), "--reviewer", "tester"])
    term.wait_for(f"pair 4 of {len(order)}".encode())
    term.press(b"q")
    assert term.proc.wait(timeout=30) == 0
    term.wait_for(b"1 kept, 1 swapped, 1 dropped")
    term.kill()
    assert len(read_jsonl(log)) == 3


def test_without_a_terminal_it_says_what_to_do_and_writes_nothing(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    result = CliRunner().invoke(cli, ["review", str(run)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "needs a terminal" in text and "--decisions FILE" in text and "--stats" in text
    assert not (run / "review.jsonl").exists()


def test_decisions_from_a_file_change_export_inspect_report_and_survive_a_rerun(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    pairs = read_jsonl(run / "pairs.jsonl")
    p0, p1, p2, p3 = pairs[:4]
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("".join(json.dumps(row) + "\n" for row in [
        {"pair": p0["id"], "texts": texts_of(p0), "decision": "keep", "reviewer": "ana"},
        {"pair": p1["id"], "texts": texts_of(p1), "decision": "swap"},
        {"pair": p2["id"], "texts": texts_of(p2), "decision": "drop"},
        {"pair": "no-such-pair", "texts": "0" * 16, "decision": "keep"},
        {"pair": p3["id"], "texts": "0" * 16, "decision": "keep"},  # made on other texts
        {"pair": p3["id"], "decision": "maybe"},
    ]) + "not json\n")
    result = CliRunner().invoke(cli, ["review", str(run), "--decisions", str(decisions), "--reviewer", "bo"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "3 decision(s) applied" in text and "1 kept, 1 swapped, 1 dropped" in text
    assert "no such pair" in text and "made on other texts" in text
    assert "line 6: no texts" in text and "line 7: not JSON" in text
    assert [(r["pair"], r["reviewer"], r["order"]) for r in read_jsonl(run / "review.jsonl")] == [
        (p0["id"], "ana", "file"), (p1["id"], "bo", "file"), (p2["id"], "bo", "file")]

    def expected_rows(rows: list[dict]) -> dict:
        return {r["id"]: (r["chosen"], r["rejected"], r["reviewed"]) for r in rows}

    want = {p["id"]: (p["chosen"], p["rejected"], "unreviewed") for p in pairs[3:]}
    want[p0["id"]] = (p0["chosen"], p0["rejected"], "kept")
    want[p1["id"]] = (p1["rejected"], p1["chosen"], "swapped")
    assert expected_rows(read_jsonl(run / "pairs.reviewed.jsonl")) == want

    for fmt in ("jsonl", "llama-factory"):
        to = tmp_path / f"export-{fmt}"
        result = CliRunner().invoke(cli, ["export", str(run), "--format", fmt, "--to", str(to)])
        assert result.exit_code == 0, result.output
        card = " ".join((to / "README.md").read_text().split())
        assert "1 kept, 1 swapped (chosen and rejected exchanged), 1 dropped" in card
    assert expected_rows(read_jsonl(tmp_path / "export-jsonl" / "pairs.jsonl")) == want
    # a trainer's layout: the flipped texts and the review status, as its own fields
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "export-llama-factory" / "pairs.llama-factory.jsonl")}
    assert rows.keys() == want.keys()
    assert {i: (r["chosen"]["value"], r["rejected"]["value"], r["reviewed"]) for i, r in rows.items()} == want

    result = CliRunner().invoke(cli, ["inspect", str(run), "--limit", "3"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "1 kept, 1 swapped, 1 dropped" in text and "review: kept" in text

    result = CliRunner().invoke(cli, ["report", str(run), "--overwrite"])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "reviewed by a person" in page and "1 kept, 1 swapped, 1 dropped" in " ".join(page.split())

    # A rerun of the pipeline (the same command, resumed from the cache) rewrites
    # pairs.reviewed.jsonl, keeps the decisions that match their pair's texts, counts the rest
    (run / "review.jsonl").open("a").write(json.dumps(
        {"pair": p3["id"], "texts": "f" * 16, "decision": "keep", "order": "file"}) + "\n")
    (run / "pairs.reviewed.jsonl").unlink()
    result = CliRunner().invoke(cli, reference_run.command(run))
    assert result.exit_code == 0, result.output
    review = json.loads((run / "run.json").read_text())["summary"]["review"]
    assert (review["kept"], review["swapped"], review["dropped"], review["no_longer_matching"]) == (1, 1, 1, 1)
    assert expected_rows(read_jsonl(run / "pairs.reviewed.jsonl")) == want


def test_agreement_matches_a_count_by_hand(tmp_path) -> None:
    # seven pairs: judge A decided four, B two, the ratings one; the scores prefer one side or none
    def pair(i, decided_by, a, b):
        return {"id": f"p{i}", "prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}", "score_chosen": a,
                "score_rejected": b, "decided_by": decided_by, "confidence": 0.1 * i}

    pairs = [pair(1, "A", 4, 2), pair(2, "A", 2, 4), pair(3, "A", 3, 3), pair(4, "A", None, None),
             pair(5, "B", 5, 1), pair(6, "B", 1, 5), pair(7, "", 4, 3)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    review = [("p1", "keep", "sample"), ("p2", "swap", "sample"), ("p3", "keep", "sample"),
              ("p4", "swap", "least-sure"), ("p5", "drop", "sample"), ("p6", "keep", "least-sure"),
              ("p7", "keep", "sample"), ("p3", "skip", "least-sure"), ("p3", "undo", "least-sure"),
              ("p3", "keep", "sample")]
    by_id = {p["id"]: p for p in pairs}
    (tmp_path / "review.jsonl").write_text("".join(json.dumps(
        {"pair": i, "texts": texts_of(by_id[i]), "decision": d, "order": o}) + "\n" for i, d, o in review))
    rows = {(r.judge, r.scope): r for r in review_summary(tmp_path).agreement}
    # by hand: A sampled p1 agree, p2 disagree, p3 agree; all adds p4 disagree. B sampled: p5
    # dropped only; all adds p6 agree. Ratings (score sides; p3 and p4 have none): sampled p1
    # agree, p2 agree (rejected scored higher, swapped), p5 dropped, p7 agree (it decided); all
    # adds p6 disagree (rejected scored higher, kept).
    want = {("A", "sampled"): (3, 2, 0, (0.2077, 0.9385)), ("A", "all reviewed"): (4, 2, 0, (0.1500, 0.8500)),
            ("B", "sampled"): (0, 0, 1, None), ("B", "all reviewed"): (1, 1, 1, (0.2065, 1.0)),
            ("ratings", "sampled"): (3, 3, 1, (0.4385, 1.0)), ("ratings", "all reviewed"): (4, 3, 1, (0.3006, 0.9544))}
    assert rows.keys() == want.keys()
    for key, (n, hits, dropped, ci) in want.items():
        row = rows[key]
        assert (row.verdicts, row.agreed, row.dropped) == (n, hits, dropped), key
        assert row.ci95 is None if ci is None else row.ci95 == pytest.approx(ci, abs=5e-4), key
        assert row.biased == (key[1] == "all reviewed")
    result = CliRunner().invoke(cli, ["review", str(tmp_path), "--stats"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "4 kept, 2 swapped, 1 dropped, 0 not reviewed of 7 pairs" in text
    assert "all reviewed (biased: not a random sample)" in text and "sampled (unbiased)" in text


def test_calibrate_reads_a_review(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    pairs = read_jsonl(run / "pairs.jsonl")
    session = ReviewSession(run, reviewer="tester")
    decided = {}
    for decision in ("keep", "swap", "drop", "keep", "swap", "skip"):
        decided[session.current()["id"]] = decision
        session.decide(decision)
    session.close()
    labelled = {r["id"]: r for r in labelled_pairs(run)}
    assert labelled.keys() == {i for i, d in decided.items() if d in ("keep", "swap")}
    for pair in pairs:
        if pair["id"] in labelled:
            row = labelled[pair["id"]]
            better = pair["chosen"] if decided[pair["id"]] == "keep" else pair["rejected"]
            assert row["response_" + row["label"]] == better and row["instruction"] == pair["prompt"]
    out = tmp_path / "cal.json"
    result = CliRunner().invoke(cli, ["calibrate", str(run), "--judge", SMOL, "--noise-pairs", "1",
                                      "--target", "0.5", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    cal = json.loads(out.read_text())
    assert cal["calibrations"][0]["pairs"] == len(labelled) and cal["inputs"]["pairs_file"] == str(run)


def test_the_python_api_checks_its_arguments(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    for bad, words in ((123, "must be a path"), (tmp_path / "nowhere", "is not a directory"),
                       (tmp_path, "has no pairs.jsonl")):
        with pytest.raises(InputError, match=words):
            ReviewSession(bad)
    for sample in (0, -1, "3", True):
        with pytest.raises(ConfigError, match="sample = .*expected an integer >= 1"):
            ReviewSession(run, sample=sample)
    for name, value in (("reviewer", 7), ("max_margin", "0.1"), ("decider", ["a"]), ("seed", None)):
        with pytest.raises(ConfigError, match=name):
            ReviewSession(run, **{name: value})
    with pytest.raises(InputError, match="no reviewed pair to calibrate on"):
        labelled_pairs(run)
    # a directory with pairs.jsonl alone is reviewed too (records only say who rewrote what)
    (run / "records.jsonl").unlink()
    session = ReviewSession(run)
    assert len(session.queue) == len(read_jsonl(run / "pairs.jsonl"))
    assert all(isinstance(side.model, str) for side in session.sides(session.current()))
