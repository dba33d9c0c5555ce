"""Failure that looks like success: a run whose stage got no answer at all, or that lost every
pair to failed requests, exits non-zero with the server's status and an excerpt of its answer;
a run that wrote no pair because its judges were unsure does not (test_cli_pipeline's rerun test
runs that one for real)."""

from __future__ import annotations

import functools
import http.server
import json

import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli
from edgepref.stages.config import EvolveConfig, JudgeConfig, PipelineConfig, PoolMember
from edgepref.stages.pair import PairReport
from edgepref.runs.pipeline import RunFailed, run_pipeline
from edgepref.runs.summary import UnitOutcome, excerpt, run_failures

from .conftest import SMOL, ThreadedHttpServer


class NotAnInferenceServer(ThreadedHttpServer):
    """Python's own file server on 127.0.0.1, over an empty directory: GET /v1/models is a 404
    page and every POST a 501 page ("Unsupported method"), as `python -m http.server` answers a
    client pointed at the wrong port."""

    def __init__(self, root):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(root))
        super().__init__(handler)


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


def _judge_pairs(tmp_path, wrong_server):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"instruction": f"Name a bird ({i}).", "response_a": "A robin.",
                                         "response_b": "Soup.", "label": "a"}) + "\n" for i in range(2)))
    cfg = tmp_path / "server.toml"  # the judge runs on the server that answers 501
    cfg.write_text(f'[models."{SMOL}"]\nendpoints = ["{wrong_server.url}"]\n')
    return str(pairs), str(cfg)


def _says_the_server_failed(result) -> None:
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "HTTP 501" in text and "Unsupported method" in text, text  # the status and the server's own words
    assert "<html" not in text.lower() and "Traceback" not in text


def test_eval_judge_whose_every_request_failed_exits_non_zero(wrong_server, tmp_path) -> None:
    pairs, cfg = _judge_pairs(tmp_path, wrong_server)
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["eval-judge", pairs, "--judge", SMOL, "--config", cfg, "--json", str(report),
                                      "--self-preference", "0", "-q"])
    _says_the_server_failed(result)
    assert "agreement" not in result.output and not report.exists()  # no 0% agreement from nothing


def test_calibrate_whose_every_request_failed_exits_non_zero(wrong_server, tmp_path) -> None:
    pairs, cfg = _judge_pairs(tmp_path, wrong_server)
    out = tmp_path / "cal.json"
    result = CliRunner().invoke(cli, ["calibrate", pairs, "--out", str(out), "--judge", SMOL, "--config", cfg,
                                      "--noise-pairs", "0", "-q"])
    _says_the_server_failed(result)
    assert not out.exists()  # no thresholds from nothing


class AnswersWithoutProbabilities(ThreadedHttpServer):
    """An OpenAI-compatible server on 127.0.0.1 that answers every chat request 200 with the text
    "A" and no log probabilities: no pairwise verdict and no rating can be read from it."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send({"data": [{"id": SMOL}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

        super().__init__(Handler)


def test_answers_that_give_no_verdict_fail_eval_judge_and_calibrate(tmp_path) -> None:
    server = AnswersWithoutProbabilities()
    try:
        pairs, cfg = _judge_pairs(tmp_path, server)
        # ratings: no answer matches the rating format (the client retries, then the request fails)
        report = tmp_path / "eval.json"
        result = CliRunner().invoke(cli, ["eval-judge", pairs, "--judge", SMOL, "--config", cfg, "--json",
                                          str(report), "--recipe", "score-only-int", "--self-preference", "0", "-q"])
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())
        assert f"every request of eval-score-only-{SMOL} failed" in text and "expected format" in text, text
        assert "agreement" not in text and "Traceback" not in text and not report.exists()
        # pairwise verdicts need log probabilities: without them every request fails, and says why
        out = tmp_path / "cal.json"
        result = CliRunner().invoke(cli, ["calibrate", pairs, "--out", str(out), "--judge", SMOL, "--config", cfg,
                                          "--noise-pairs", "0", "-q"])
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())
        assert f"every request of eval-compare-{SMOL} failed" in text and "no logprobs" in text, text
        assert not out.exists()
    finally:
        server.close()
