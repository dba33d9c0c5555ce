"""What edgepref reads back is input too: damaged run directories given to merge, inspect, export
and report (property-based: lines cut, types swapped, fields removed, bad bytes), the public
Python functions called with arguments of the wrong types, merge's lock, input and prompt-shape
rules, a mistyped model followed by the corrected command, OpenAI text parts, and rewrites that
ask instead of answering."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepref import PipelineConfig, PoolMember, load_config, merge_runs, read_instructions, run_pipeline
from edgepref.core.errors import ConfigError, EdgeprefError, InputError
from edgepref.data.rundir import RunDir, RunDirInUse
from edgepref.stages.config import config_from_dict
from edgepref.stages.evolve import drop_reason, strip_leaked_headings
from edgepref.ui.cli import cli

from edgepref.backends.engine.serve import free_port

from .conftest import SMOL

FILES = ("records.jsonl", "pairs.jsonl", "errors.jsonl", "run.json")
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


@st.composite
def damage(draw):
    """(file, what to do to it): a line cut, replaced, a field removed or retyped, bad bytes."""
    name = draw(st.sampled_from(FILES))
    kind = draw(st.sampled_from(["cut", "replace", "drop_field", "retype_field", "bad_bytes", "empty_line"]))
    return name, kind, draw(st.integers(0, 10_000)), draw(JSON)


def apply_damage(run: Path, name: str, kind: str, n: int, value) -> None:
    path = run / name
    raw = path.read_bytes()
    lines = raw.split(b"\n") if name != "run.json" else [raw]
    i = n % max(1, len([x for x in lines if x]))
    line = lines[i]
    if kind == "cut":
        lines[i] = line[: n % max(1, len(line))]
    elif kind == "replace":
        lines[i] = json.dumps(value).encode()
    elif kind == "bad_bytes":
        lines[i] = line[: n % max(1, len(line))] + b"\xff\xfe\x80" + line[n % max(1, len(line)):]
    elif kind == "empty_line":
        lines.insert(i, b"   ")
    else:
        try:
            row = json.loads(line)
        except ValueError:
            return
        if isinstance(row, dict) and row:
            key = sorted(row)[n % len(row)]
            if kind == "drop_field":
                del row[key]
            else:
                row[key] = value
            lines[i] = json.dumps(row).encode()
    path.write_bytes(b"\n".join(lines))


def no_traceback(result) -> None:
    """A clear error (exit 1, `error:` and a hint) or success; never a Python exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1) and "Traceback" not in result.output
    if result.exit_code == 1:
        assert "error:" in result.output


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hurt=st.lists(damage(), min_size=1, max_size=3))
def test_a_damaged_run_directory_gives_a_clear_error_or_a_reported_skip(reference_run, tmp_path_factory, hurt) -> None:
    tmp = tmp_path_factory.mktemp("damaged")
    run = copy_run(reference_run.out, tmp / "run")
    for spec in hurt:
        apply_damage(run, *spec)
    runner = CliRunner()
    no_traceback(runner.invoke(cli, ["inspect", str(run), "--limit", "2"]))
    no_traceback(runner.invoke(cli, ["export", str(run), "--to", str(tmp / "export")]))
    no_traceback(runner.invoke(cli, ["export", str(run), "--format", "axolotl", "--to", str(tmp / "axolotl")]))
    no_traceback(runner.invoke(cli, ["merge", str(run), "--out", str(tmp / "merged")]))
    no_traceback(runner.invoke(cli, ["review", str(run), "--stats"]))
    no_traceback(runner.invoke(cli, ["report", str(run), "--out", str(tmp / "page.html")]))


def test_bad_lines_are_named_by_file_and_line_and_the_rest_goes_on(reference_run, tmp_path) -> None:
    run = copy_run(reference_run.out, tmp_path / "run")
    pairs = (run / "pairs.jsonl").read_bytes().split(b"\n")
    count = len([p for p in pairs if p])
    first = json.loads(pairs[0])
    pairs[0:0] = [b"\xff not utf-8", b"[1, 2]", json.dumps({**first, "id": "null-chosen", "chosen": None}).encode()]
    (run / "pairs.jsonl").write_bytes(b"\n".join(pairs))
    result = CliRunner().invoke(cli, ["inspect", str(run), "--limit", "0"])
    no_traceback(result)
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and f"{count} shown by the filters, of {count}" in text
    assert "pairs.jsonl line 1: not valid UTF-8" in text and "line 2: a JSON list, not an object" in text
    assert "line 3: chosen is null, not text or a message list" in text
    records = (run / "records.jsonl").read_text().splitlines()
    (run / "records.jsonl").write_text("\n".join([records[0], "{\"no\": \"id\"}", *records[1:]]) + "\n")
    report = merge_runs([run], tmp_path / "merged")
    assert report.pairs == count and report.records == len(records)
    assert any("records.jsonl line 2: no id" in p for p in report.problems)
    assert any("pairs.jsonl line 3: chosen is null" in p for p in report.problems)


def test_merge_waits_for_or_refuses_a_run_still_writing(reference_run, tmp_path) -> None:
    run = copy_run(reference_run.out, tmp_path / "run")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with RunDir(run).lock():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    with pytest.raises(RunDirInUse, match="still being written") as info:
        merge_runs([run], tmp_path / "m1")
    assert "--wait" in info.value.hint and not (tmp_path / "m1" / "pairs.jsonl").exists()
    threading.Timer(0.3, release.set).start()
    started = time.time()
    report = merge_runs([run], tmp_path / "m2", wait=True)
    assert time.time() - started >= 0.25 and report.pairs > 0
    t.join()


def test_merge_refuses_mixed_prompt_shapes_and_other_inputs(reference_run, tmp_path) -> None:
    text_run = copy_run(reference_run.out, tmp_path / "text")
    conv = copy_run(reference_run.out, tmp_path / "conv")
    rows = [json.loads(line) for line in (conv / "pairs.jsonl").read_text().splitlines()]
    for row in rows:
        row["id"] += "-conv"
        row["prompt"] = [{"role": "user", "content": row["prompt"]}]
        row["chosen"] = [{"role": "assistant", "content": row["chosen"]}]
        row["rejected"] = [{"role": "assistant", "content": row["rejected"]}]
    (conv / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for allow_mixed in (False, True):
        with pytest.raises(ConfigError, match="mix single-turn pairs .* and conversation pairs") as info:
            merge_runs([text_run, conv], tmp_path / f"m{allow_mixed}", allow_mixed=allow_mixed)
        assert "separately" in info.value.hint and "--allow-mixed does not change this" in info.value.hint
    other = copy_run(reference_run.out, tmp_path / "other")
    run_json = json.loads((other / "run.json").read_text())
    run_json["input"]["sha256"] = "0" * 64  # another file, not a shard of anything
    (other / "run.json").write_text(json.dumps(run_json))
    with pytest.raises(ConfigError, match="made from another input"):
        merge_runs([text_run, other], tmp_path / "m-input")
    result = CliRunner().invoke(cli, ["merge", str(text_run), str(conv), "--out", str(tmp_path / "cli")])
    no_traceback(result)
    assert result.exit_code == 1 and "DPOTrainer" in result.output


def test_the_python_api_checks_its_arguments_at_the_door(tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "Name a bird."}\n')
    cases = [
        (lambda: run_pipeline(src, tmp_path / "o", {"seed": 1}), ConfigError, "cfg = .*expected a PipelineConfig"),
        (lambda: run_pipeline(None, tmp_path / "o"), ConfigError, "source = null: expected a path"),
        (lambda: run_pipeline(["Name a bird.", 3], tmp_path / "o"), InputError, r"source\[1\] = 3"),
        (lambda: run_pipeline(src, 5), ConfigError, "out_dir = 5"),
        (lambda: run_pipeline(src, tmp_path / "o", overwrite="yes"), ConfigError, "overwrite"),
        (lambda: run_pipeline(src, tmp_path / "o", shard="1/0"), InputError, "--shard '1/0'"),
        (lambda: run_pipeline(src, tmp_path / "o", shard=(0, 0)), InputError, r"shard = \(0, 0\)"),
        (lambda: read_instructions(None), ConfigError, "source = null"),
        (lambda: read_instructions(7), ConfigError, "source = 7"),
        (lambda: read_instructions(src, column=3), InputError, "column = 3"),
        (lambda: read_instructions(src, shard="two"), InputError, "--shard 'two'"),
        (lambda: merge_runs(str(tmp_path / "run"), tmp_path / "m"), ConfigError, "a list of paths, got one path"),
        (lambda: merge_runs([3], tmp_path / "m"), ConfigError, r"dirs\[0\] = 3"),
        (lambda: merge_runs([tmp_path], None), ConfigError, "out_dir = null"),
        (lambda: load_config(5), ConfigError, "path = 5"),
        (lambda: load_config(None, base={"seed": 1}), ConfigError, "base = "),
        (lambda: config_from_dict(["seed"]), ConfigError, "a table of settings"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()
    assert not (tmp_path / "o").exists()  # nothing was written for any of them


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=4), st.booleans(),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2)),
       argument=st.sampled_from(["source", "out_dir", "cfg", "cache_dir", "on_event", "overwrite"]))
def test_any_wrong_type_is_an_edgepref_error(tmp_path_factory, value, argument) -> None:
    tmp = tmp_path_factory.mktemp("api")
    src = tmp / "in.jsonl"
    src.write_text('{"instruction": "Name a bird."}\n')
    args = {"source": src, "out_dir": tmp / "o", "cfg": None, "cache_dir": None, "on_event": None, "overwrite": False}
    if (value is None and argument != "source") or (argument == "overwrite" and isinstance(value, bool)):
        return  # a right value (None is the default of the others): that would run the pipeline
    args[argument] = value
    if argument == "source" and isinstance(value, list) and not value:
        return  # [] is an empty list of instructions: "no usable instructions", checked below
    with pytest.raises(EdgeprefError):
        run_pipeline(args.pop("source"), args.pop("out_dir"), **args)
    assert not (tmp / "o" / "run.json").exists()


def test_a_pool_member_given_a_path_is_its_model(tmp_path) -> None:
    from edgepref.models.modelfiles import resolve_model_path
    from edgepref.runs.pipeline import Runner

    gguf = resolve_model_path(SMOL)
    cfg = PipelineConfig(pool=[PoolMember(Path(gguf)), PoolMember(SMOL, label="smol")])
    assert cfg.pool[0].model == str(gguf) and cfg.validate() is cfg
    runner = Runner(cfg, None)
    try:
        for model in runner.models_needed():
            runner.host.check_model(model)
    finally:
        runner.close()


def test_a_mistyped_model_leaves_nothing_and_the_corrected_command_runs(tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "Name a bird."}\n')
    out = tmp_path / "out"
    fast = ["--max-tokens", "6", "--evolutions", "0", "--judge-mode", "none", "--slots", "1", "--min-confidence",
            "0", "--judge", SMOL, "--cascade", SMOL, "-q"]
    typo = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--pool", "smollm2-135x", "-n", "2", *fast])
    assert typo.exit_code == 1 and "unknown model 'smollm2-135x'" in typo.output and "smollm2-135m" in typo.output
    assert not out.exists()
    # a pool member whose server cannot be reached: the run stops at its first request, with
    # run.json written and nothing done; the corrected command is a new run, not "other settings"
    down = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--pool", "far", "--pool", SMOL, *fast,
                                    "--endpoint", f"far=http://127.0.0.1:{free_port()}/v1"])
    assert down.exit_code == 1 and "cannot reach" in down.output
    assert (out / "run.json").is_file() and not RunDir(out).did_work()
    fixed = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--pool", SMOL, "-n", "2", *fast])
    assert fixed.exit_code == 0, fixed.output
    assert json.loads((out / "run.json").read_text())["config"]["pool"][0]["n"] == 2


def test_openai_text_parts_are_joined_and_an_image_part_is_a_row_error(tmp_path) -> None:
    src = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name a bird"},
                                                   {"type": "text", "text": "that swims."}]}]},
        {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                      {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                   {"type": "image_url", "image_url": {"url": "x.png"}}]}]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batch = read_instructions(src)
    assert [r.instruction for r in batch.records] == ["Name a bird\n\nthat swims."]
    (problem,) = batch.problems
    assert problem.row == 2 and "turn 2 (user) content part 2 is of type 'image_url', not text" in problem.reason


def test_a_rewrite_that_asks_is_dropped_and_a_lead_in_is_found_after_a_sentence() -> None:
    asked = strip_leaked_headings("Sure, please provide the original answer.")
    assert drop_reason(asked, "Penguins swim.") == ("request", 0.0)
    assert drop_reason(strip_leaked_headings("Could you share the answer you want me to improve?"), "x")[0] == "request"
    text = strip_leaked_headings("Sure, I'd be happy to explain how penguins swim in more depth. "
                                 "Here's an improved version:\n\nPenguins swim with their flippers.")
    assert text == "Penguins swim with their flippers."
    # a bare refusal is no rewrite of an answer; an answer that declines something is kept
    assert drop_reason("I'm sorry, I can't assist with that request.", "Dear Sam, ...")[0] == "refusal"
    declining = "Dear Sam,\n\nI'm sorry, I can't attend the meeting on Friday. Could we meet next week?"
    assert drop_reason(declining, "Dear Sam, I cannot come.")[0] is None
    # an answer whose own first sentence precedes a list announcement keeps it
    answer = "The primary colours are red, yellow and blue. Here are the answers to each part:\n1. red"
    assert strip_leaked_headings(answer) == answer and drop_reason(answer, "x")[0] is None


def test_a_damaged_request_cache_line_is_asked_again(reference_run, tmp_path) -> None:
    run = reference_run.copy(tmp_path)
    cache = sorted((run / "cache").glob("complete-*.jsonl"))[0]
    lines = cache.read_bytes().split(b"\n")
    row = json.loads(lines[0])
    damaged = {**row, "generations": None}
    lines[0] = json.dumps(damaged).encode()
    lines.insert(1, b"\xff\xfe not utf-8")
    cache.write_bytes(b"\n".join(lines))
    result = CliRunner().invoke(cli, reference_run.command(run))
    no_traceback(result)
    assert result.exit_code == 0, result.output
    keys = []
    for line in cache.read_bytes().split(b"\n"):
        try:
            keys.append(json.loads(line).get("key"))
        except ValueError:
            pass
    assert keys.count(row["key"]) == 2  # the damaged line, and the answer asked again
    # asked again with the same seed: the same text, so the same pairs
    assert (run / "pairs.jsonl").read_text() == (reference_run.out / "pairs.jsonl").read_text()
