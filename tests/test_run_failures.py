"""Failure that looks like success: a run whose stage got no answer at all, or that lost every
pair to failed requests, exits non-zero with the server's status and an excerpt of its answer;
a run that wrote no pair because its judges were unsure does not (test_cli_pipeline's rerun test
runs that one for real)."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest
from click.testing import CliRunner

from edgepref.cli import cli
from edgepref.config import EvolveConfig, JudgeConfig, PipelineConfig, PoolMember
from edgepref.pair import PairReport
from edgepref.pipeline import RunFailed, run_pipeline
from edgepref.summary import UnitOutcome, excerpt, run_failures

from .conftest import SMOL


class NotAnInferenceServer:
    """Python's own file server on 127.0.0.1, over an empty directory: GET /v1/models is a 404
    page and every POST a 501 page ("Unsupported method"), as `python -m http.server` answers a
    client pointed at the wrong port."""

    def __init__(self, root):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def wrong_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = NotAnInferenceServer(root)
    yield server
    server.close()


def test_a_server_that_answers_501_to_everything_fails_the_run(wrong_server, tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a bird."}) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", str(src), "--out", str(out), "--pool", SMOL, "-n", "2", "--judge", SMOL,
        "--endpoint", f"{SMOL}={wrong_server.url}", "--evolutions", "0", "--judge-mode", "score-only",
        "--max-tokens", "8", "-q"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"every request of complete-{SMOL} failed" in text
    assert "HTTP 501" in text and "Unsupported method" in text  # the status and the server's own words
    assert "<html" not in text.lower() and "Traceback" not in text
    assert "no pair written" in text
    # the files are written all the same: the errors, the summary that says why it failed
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errors and all(e["stage"] == "complete" and "HTTP 501" in e["reason"] for e in errors)
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["pairs"] == 0 and len(summary["failures"]) == 2


def test_the_python_api_raises_with_what_the_run_made(wrong_server, tmp_path) -> None:
    cfg = PipelineConfig(pool=[PoolMember(SMOL, n=2, max_tokens=8)], evolve=EvolveConfig(num_evolutions=0),
                         judge=JudgeConfig(models=[SMOL], mode="score-only"))
    cfg.models = {SMOL: {"endpoints": [wrong_server.url]}}
    with pytest.raises(RunFailed) as info:
        run_pipeline(["Name a fish."], tmp_path / "out", cfg)
    assert "HTTP 501" in info.value.message and "errors.jsonl" in info.value.hint
    result = info.value.result
    assert len(result.records) == 1 and result.pairs == [] and result.summary.request_errors == 1


def _report(drops: dict[str, str]) -> PairReport:
    report = PairReport()
    for rid, reason in drops.items():
        report.dropped[reason] += 1
        report.drop_reasons[rid] = reason
    return report


def test_no_pair_is_a_failure_only_when_every_pair_was_lost_to_errors() -> None:
    judge_error = [{"stage": "judge", "id": "b", "reason": "qwen: HTTP 500: out of memory"}]
    # one instruction lost to an error, one left uncertain by the judges: not a failure
    assert run_failures(_report({"a": "uncertain", "b": "no_verdict"}), judge_error, {}) == []
    # uncertain, even with an error on the record (a rewrite that failed): not a failure
    assert run_failures(_report({"b": "uncertain"}), judge_error, {}) == []
    # input rows that were not instructions are not request errors
    input_error = [{"stage": "input", "row": 2, "id": "b", "reason": "not JSON"}]
    assert run_failures(_report({"b": "fewer_than_two_rated"}), input_error, {}) == []
    (message,) = run_failures(_report({"b": "no_verdict"}), judge_error, {})
    assert "no pair written" in message and "HTTP 500: out of memory" in message
    # a pair written: not a failure, whatever else was lost
    report = _report({"b": "no_verdict"})
    report.pairs.append(object())
    assert run_failures(report, judge_error, {}) == []


def test_a_unit_fails_when_none_of_its_requests_got_an_answer() -> None:
    page = "x: HTTP 501: <!DOCTYPE HTML>\n<html><head><title>Error response</title></head>\n<body><p>Error code: 501</p>"
    dead, alive = UnitOutcome(), UnitOutcome(answered=1)
    for outcome in (dead, alive):
        outcome.fail(page)
        outcome.fail("second")
    assert run_failures(None, [], {"judge-x": alive}) == []
    (message,) = run_failures(None, [], {"judge-x": dead, "judge-y": alive})
    assert message == "every request of judge-x failed (2): x: HTTP 501: Error response Error code: 501"
    assert excerpt("a" * 500).endswith("…") and len(excerpt("a" * 500)) == 160


def test_a_stage_command_whose_every_request_failed_exits_non_zero(wrong_server, tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a tree."}) + "\n")
    out = tmp_path / "completed.jsonl"
    result = CliRunner().invoke(cli, ["complete", str(src), "--out", str(out), "--pool", SMOL,
                                      "--endpoint", f"{SMOL}={wrong_server.url}", "--max-tokens", "8", "-q"])
    assert result.exit_code == 1, result.output
    assert f"every request of complete-{SMOL} failed" in result.output and "HTTP 501" in result.output
    assert json.loads(out.read_text())["completions"] == []  # written all the same
