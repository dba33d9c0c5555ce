"""Numeric options declared in edgepref/ui/cli (outside the settings table) hold to a range: a value
out of it, or a float that is not a finite number, is one line naming the flag, the value and
what is allowed, with click's exit code 2, before any file is read or model loaded."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from edgepref.ui.cli import cli
from edgepref.ui.cli.pipeline import TargetSpan


@pytest.fixture
def judge_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"instruction": "Name a bird.", "response_a": "A robin.", "response_b": "Soup.",
                                "label": "a"}) + "\n")
    return str(path)


BAD = [
    # (command after PAIRS/DIR, flag, value, what the message says is allowed)
    (["inspect"], "--limit", "-1", "expected an integer >= 0"),
    (["inspect"], "--min-margin", "nan", "expected a finite number >= 0"),
    (["inspect"], "--min-margin", "-0.5", "expected a finite number >= 0"),
    (["eval-judge"], "--skip", "-1", "expected an integer >= 0"),
    (["eval-judge"], "--limit", "0", "expected an integer >= 1"),
    (["eval-judge"], "--noise-pairs", "-2", "expected an integer >= 0"),
    (["eval-judge"], "--self-preference", "-1", "expected an integer >= 0"),
    (["eval-judge"], "--target-agreement", "nan", "expected a finite number > 0.0 and < 1.0"),
    (["eval-judge"], "--target-agreement", "1.5", "expected a finite number > 0.0 and < 1.0"),
    (["calibrate", "--out", "cal.json"], "--risk", "nan", "expected a finite number > 0.0 and < 1.0"),
    (["calibrate", "--out", "cal.json"], "--risk", "1", "expected a finite number > 0.0 and < 1.0"),
    (["calibrate", "--out", "cal.json"], "--noise-pairs", "-1", "expected an integer >= 0"),
    (["calibrate", "--out", "cal.json"], "--skip", "-3", "expected an integer >= 0"),
    (["calibrate", "--out", "cal.json"], "--target", "inf", "expected a finite number > 0.0 and < 1.0"),
    (["calibrate", "--out", "cal.json"], "--target", "0.6..1.2", "expected a finite number > 0.0 and < 1.0"),
    (["calibrate", "--out", "cal.json"], "--target", "0.8..0.6", "from the lower target to the higher"),
    (["try", "--file"], "--limit", "0", "expected an integer >= 1"),
    (["run", "--out", "out"], "--limit", "0", "expected an integer >= 1"),
    (["complete", "--out", "done.jsonl"], "--limit", "-5", "expected an integer >= 1"),
]


@pytest.mark.parametrize("command, flag, value, allowed", BAD, ids=[f"{c[0]} {f} {v}" for c, f, v, _ in BAD])
def test_a_number_out_of_range_is_one_line_naming_flag_value_and_range(judge_pairs, tmp_path, monkeypatch,
                                                                       command, flag, value, allowed) -> None:
    monkeypatch.chdir(tmp_path)
    name, *rest = command
    args = [name, judge_pairs, *rest] if name != "try" else [name, *rest, judge_pairs]
    result = CliRunner().invoke(cli, [*args, flag, value])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"'{flag}'" in line and allowed in line
    shown = {"nan": "NaN", "inf": "Infinity", "1": "1.0"}.get(value, value)
    assert shown in line, line
    assert "Traceback" not in result.output and "loading" not in result.output
    assert not any((tmp_path / name).exists() for name in ("out", "cal.json", "done.jsonl"))  # nothing written


def test_values_in_range_are_accepted_and_reach_the_command(tmp_path) -> None:
    # The pairs file is missing, so each command gets past its options and stops at reading it.
    missing = str(tmp_path / "missing.jsonl")
    for args in (["eval-judge", missing, "--skip", "0", "--limit", "1", "--noise-pairs", "0",
                  "--self-preference", "0", "--target-agreement", "0.7"],
                 ["calibrate", missing, "--out", str(tmp_path / "c.json"), "--risk", "0.05", "--noise-pairs", "0",
                  "--target", "0.6..0.62", "--target", "0.9"],
                 ["inspect", str(tmp_path), "--limit", "0", "--min-margin", "0"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert "Invalid value" not in result.output and "Traceback" not in result.output


def test_a_target_range_is_every_hundredth_from_its_lower_end() -> None:
    span = TargetSpan()
    assert span.convert("0.6..0.63", None, None) == [0.6, 0.61, 0.62, 0.63]
    assert span.convert("0.75", None, None) == [0.75]
    with pytest.raises(click.BadParameter, match="not a number or a range"):
        span.convert("0.6-0.7", None, None)
    with pytest.raises(click.BadParameter, match="NaN: expected a finite number"):
        span.convert("nan..0.7", None, None)
