"""Calibrated thresholds (edgepref.judging.calibration) and the verdict chain (edgepref.judging.cascade), on
hand-built margins whose answer follows from the binomial bound; the shipped figure files
(calibration.json, self_preference.json) and the commands they record; no model."""

import importlib.util
import json
import math
import re
import shlex
from pathlib import Path

import pytest

from edgepref.judging.calibration import (
    CalibrationFile, JudgeMargins, binomial_tail, calibrate_chain, candidate_thresholds, fixed_sequence,
    read_calibration)
from edgepref.judging.cascade import Decider, build_chain, check_chain, decide, settle
from edgepref.core.errors import ConfigError


def test_binomial_tail_is_exact():
    # P(Bin(3, 0.5) >= 2) = 4/8; P(Bin(10, 0.7) >= 10) = 0.7^10
    assert binomial_tail(2, 3, 0.5) == pytest.approx(0.5)
    assert binomial_tail(10, 10, 0.7) == pytest.approx(0.7 ** 10)
    assert binomial_tail(0, 10, 0.7) == 1.0
    assert binomial_tail(11, 10, 0.7) == 0.0
    direct = sum(math.comb(40, i) * 0.7 ** i * 0.3 ** (40 - i) for i in range(33, 41))
    assert binomial_tail(33, 40, 0.7) == pytest.approx(direct, rel=1e-9)


def test_candidates_come_from_margins_alone_and_respect_the_noise_floor():
    conf = [i / 100 for i in range(1, 101)]  # 100 pairs, confidences 0.01 .. 1.00
    grid = candidate_thresholds(conf, noise_floor=0.0)
    # first share with >= 20 pairs is 20%: the 20th most confident pair has 0.81
    assert grid[0] == pytest.approx(0.81)
    assert grid == sorted(grid, reverse=True)
    assert grid[-1] == pytest.approx(0.01)
    floored = candidate_thresholds(conf, noise_floor=0.5)
    assert min(floored) >= 0.5 and floored == [t for t in grid if t >= 0.5]


def _pairs(n_right_top: int, n_top: int, n_rest_right: int, n_rest: int):
    """n_top confident pairs (|margin| 1.0 ... ) of which n_right_top right, then n_rest weak ones."""
    conf = [2.0 - i / 1000 for i in range(n_top)] + [0.5 - i / 1000 for i in range(n_rest)]
    hits = [i < n_right_top for i in range(n_top)] + [i < n_rest_right for i in range(n_rest)]
    return conf, hits


def test_fixed_sequence_picks_the_threshold_the_bound_implies():
    # 40 confident pairs, 38 right; then 60 weak ones, the first 30 right. Candidates keep 20, 25,
    # ..., 100 pairs. Kept 85: 68 right, P(Bin(85, 0.7) >= 68) = 0.03 <= 0.1; kept 90: 68 right,
    # P(Bin(90, 0.7) >= 68) = 0.16 > 0.1 stops the sequence. So the threshold keeps 85 pairs:
    # the 45th weak pair's confidence, 0.5 - 44/1000.
    conf, hits = _pairs(38, 40, 30, 60)
    assert binomial_tail(68, 85, 0.7) <= 0.1 < binomial_tail(68, 90, 0.7)
    threshold, tests = fixed_sequence(conf, hits, target=0.7, alpha=0.1)
    assert threshold == pytest.approx(0.456)
    assert [t.kept for t in tests] == list(range(20, 95, 5))
    assert tests[-1].p_value > 0.1 and all(t.p_value <= 0.1 for t in tests[:-1])
    # a stricter target certifies less
    strict, _ = fixed_sequence(conf, hits, target=0.8, alpha=0.1)
    assert strict > threshold


def test_fixed_sequence_stops_at_the_first_failure():
    # the most confident pairs are wrong: nothing can be certified, even if later shares look fine
    conf = [1.0 - i / 100 for i in range(100)]
    hits = [i >= 30 for i in range(100)]
    threshold, tests = fixed_sequence(conf, hits, target=0.7, alpha=0.1)
    assert threshold is None and len(tests) == 1


def test_calibrate_chain_sends_what_the_first_judge_keeps_nowhere_else():
    labels_a = [True] * 100
    # judge 1 is right and confident on pairs 0-39, unsure (tiny margins, half right) on the rest
    m1 = [1.0] * 40 + [0.001 if i % 2 else -0.001 for i in range(60)]
    # judge 2 is right on everything, confidently
    m2 = [0.8] * 100
    cal = calibrate_chain([JudgeMargins("small", "r", "alone-512", m1, 0.01),
                           JudgeMargins("big", "r", "alone-512", m2, 0.01)], labels_a, 0.7, 0.1)
    small, big = cal.judges
    assert small.threshold == 1.0 and small.kept == 40 and small.agreement == 1.0
    assert big.reached == 60 and big.kept == 60 and big.agreement == 1.0
    assert cal.coverage == 1.0 and cal.agreement == 1.0


def test_calibration_file_round_trip_and_unknown_target(tmp_path):
    cal = calibrate_chain([JudgeMargins("j", "headings-ab", "alone-512", [1.0] * 30, 0.0)], [True] * 30, 0.7, 0.1)
    f = CalibrationFile(["j"], "headings-ab", 0.1, [cal], source="hand-built")
    path = tmp_path / "cal.json"
    f.write(path)
    back = read_calibration(path)
    assert back.at(0.7).judges[0].threshold == cal.judges[0].threshold
    with pytest.raises(ConfigError, match="edgepref calibrate"):
        back.at(0.75)


def test_chain_decides_with_the_first_sure_judge():
    chain = build_chain([("j",), ("k",)], min_confidence=0.2, target=0.7, calibration_path=None, recipe="x")
    assert [d.threshold for d in chain.deciders] == [0.2, 0.2]
    d, m = decide(chain, {"j": 0.1, "k": -0.3})
    assert d.name == "k" and m == -0.3
    assert decide(chain, {"j": 0.1, "k": 0.05}) == (None, None)
    verdict = {"x": "a", "y": "b", "margins": {}, "margin": None, "decided_by": []}
    assert not settle(verdict, Decider(("j",), 0.2), 0.1, "alone-512")
    assert settle(verdict, Decider(("k",), 0.2, 0.8), -0.3, "alone-512")
    assert verdict["decided_by"] == ["k"] and verdict["agreement"] == 0.8 and verdict["margins"] == {"j": 0.1, "k": -0.3}


def test_a_chain_that_decides_nothing_says_what_to_do(tmp_path):
    """The judge keeps nothing at 0.7 on the calibration pairs but does at 0.6: a run at 0.7
    would drop every pair, so it stops before any model runs and names the way out."""
    labels = [True] * 60
    margins = [1.0 - i / 100 for i in range(60)]  # confident and right on 36 of 60, in order
    hits = [i < 36 or i % 2 == 0 for i in range(60)]
    jm = JudgeMargins("small", "headings-ab", "alone-512", [m if h else -m for m, h in zip(margins, hits)], 0.0)
    f = CalibrationFile(["small"], "headings-ab", 0.1,
                        [calibrate_chain([jm], labels, t, 0.1) for t in (0.6, 0.95)])
    assert f.at(0.6).judges[0].decides and not f.at(0.95).judges[0].decides
    path = tmp_path / "cal.json"
    f.write(path)
    chain = build_chain([("small",)], min_confidence=None, target=0.95, calibration_path=str(path), recipe="headings-ab")
    assert not chain.active and chain.reachable == 0.6
    with pytest.raises(ConfigError, match="every pair would be dropped") as err:
        check_chain(chain)
    assert "--target-agreement to 0.6" in err.value.hint and "leave --target-agreement out" in err.value.hint
    check_chain(build_chain([("small",)], min_confidence=None, target=0.6, calibration_path=str(path),
                            recipe="headings-ab"))  # decides: no error


def test_by_default_each_judge_decides_above_its_noise_floor():
    """No target: each judge's threshold is the noise floor the shipped calibration measured."""
    shipped = read_calibration(None)
    assert shipped.chain == ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] and shipped.recipe == "headings-ab"
    chain = build_chain([(m,) for m in shipped.chain], min_confidence=None, target=None, calibration_path=None,
                        recipe=shipped.recipe)
    # the floors as the file has them, read here without the reader under test
    raw = json.loads((SHIPPED / "calibration.json").read_text())
    assert [d.threshold for d in chain.deciders] == [raw["noise"][m]["floor"] for m in raw["chain"]]
    assert all(d.threshold > 0.05 for d in chain.deciders) and chain.target is None
    assert "its noise floor" in chain.describe()
    # a judge the calibration never measured gets the fixed fallback, said in a note
    other = build_chain([("someone-else",)], min_confidence=None, target=None, calibration_path=None,
                        recipe=shipped.recipe)
    assert other.deciders[0].threshold == 0.1 and other.notes


# ------------------------------------------------------------- the shipped figure files

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "edgepref" / "judging"
DEV_PAIRS = "../shared/data/alpaca_eval_dev/judge_pairs.jsonl"
# a key that names a time; a string that holds a date, a temporary directory or a request cache
WALL_CLOCK_KEY = re.compile(r"second|time|date|elapsed|duration", re.IGNORECASE)
RUN_BOUND_TEXT = re.compile(r"/tmp/|\.cache\b|--cache-dir|\b\d{4}-\d{2}-\d{2}\b")


def assert_nothing_run_bound(value, where: str = "") -> None:
    """What would differ between two runs of the same command on the same machine: none of it."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert not WALL_CLOCK_KEY.search(key), f"{where}/{key}"
            assert_nothing_run_bound(item, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_nothing_run_bound(item, f"{where}/{i}")
    elif isinstance(value, str):
        assert not RUN_BOUND_TEXT.search(value), f"{where}: {value}"


def regeneration_commands() -> list[str]:
    return [line for line in (ROOT / "scripts" / "regenerate_figures.sh").read_text().splitlines()
            if line and not line.startswith(("#", "set ", "cd "))]


def edgepref_params(command: str) -> dict:
    """Parse an `edgepref SUBCOMMAND ...` line with that subcommand's own click parser, which
    rejects an unknown flag or a bad value; nothing runs."""
    from edgepref.ui.cli import cli

    program, name, *args = shlex.split(command)
    assert program == "edgepref" and name in cli.commands, command
    return cli.commands[name].make_context(f"edgepref {name}", args).params


def test_the_shipped_calibration_records_how_to_make_it_again():
    text = (SHIPPED / "calibration.json").read_text()
    raw = json.loads(text)
    assert set(raw) == {"chain", "recipe", "risk", "source", "command", "inputs", "machine", "noise", "calibrations"}
    assert raw["inputs"] == {"pairs_file": DEV_PAIRS, "skip": 0, "limit": 114, "noise_pairs": 16}
    assert raw["machine"]["cpu"] and "CPU" in raw["machine"]["note"]
    for judge in raw["chain"]:
        assert set(raw["noise"][judge]) == {"pairs", "paths", "median", "p90", "max", "floor"}
    assert_nothing_run_bound(raw)
    # the command is `edgepref calibrate` with these inputs, and the script that remakes the file runs it
    params = edgepref_params(raw["command"])
    assert (params["pairs_path"], params["skip"], params["limit"], params["noise_pairs"]) == (DEV_PAIRS, 0, 114, 16)
    assert list(params["chain"]) == raw["chain"] and params["risk"] == raw["risk"] and params["cache_dir"] is None
    assert sorted({t for span in params["targets"] for t in span}) == [c["target"] for c in raw["calibrations"]]
    assert str(params["out"]) == "edgepref/judging/calibration.json"
    assert raw["command"] in regeneration_commands()
    # as `edgepref calibrate` writes it: read and written again, the same bytes
    assert json.dumps(read_calibration(None).to_dict(), indent=1) + "\n" == text


def test_a_calibration_file_records_no_time_and_no_cache_dir(tmp_path):
    from edgepref.ui.cli.pipeline import recorded_command

    cal = calibrate_chain([JudgeMargins("j", "headings-ab", "alone-512", [1.0] * 30, 0.0)], [True] * 30, 0.7, 0.1)
    f = CalibrationFile(["j"], "headings-ab", 0.1, [cal], seconds={"j": {"alone-128": 9.5}})
    f.write(tmp_path / "cal.json")
    assert "seconds" not in (tmp_path / "cal.json").read_text()  # printed by the command, not written
    assert recorded_command(["calibrate", "p.jsonl", "--cache-dir", "/tmp/c", "-q", "--cache-dir=/tmp/d",
                             "--out", "cal.json"]) == "edgepref calibrate p.jsonl --out cal.json"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_self_preference_records_how_to_make_it_again():
    from edgepref.judging.compare import shipped_self_preference

    text = (SHIPPED / "self_preference.json").read_text()
    raw = json.loads(text)
    assert set(raw) == {"about", "command", "pairs_file", "figures"} and raw["pairs_file"] == DEV_PAIRS
    for figure in raw["figures"]:
        assert set(figure) == {"judge", "recipe", "pairs", "n", "share"}
        assert 0 < figure["n"] <= figure["pairs"] and 0.0 <= figure["share"] <= 1.0
    assert_nothing_run_bound(raw)
    assert text == json.dumps(raw, indent=1, sort_keys=True) + "\n"  # as scripts/self_preference.py writes it
    # the command is that script with these inputs (argparse exits on a flag it does not know)
    program, script, *args = shlex.split(raw["command"])
    assert program == "python" and script == "scripts/self_preference.py"
    parsed = load_script(ROOT / script).build_parser().parse_args(args)
    assert parsed.pairs == DEV_PAIRS and parsed.cache_dir is None
    assert str(parsed.out) == "edgepref/judging/self_preference.json"
    assert [(m.judge, m.pairs, r) for m in parsed.measure for r in m.recipes] == [
        (f["judge"], f["pairs"], f["recipe"]) for f in raw["figures"]]
    assert raw["command"] in regeneration_commands()
    # what the run's notice reads, for the default judge and recipe among the rest
    default = next(f for f in raw["figures"] if (f["judge"], f["recipe"]) == ("qwen2.5-coder-0.5b", "headings-ab"))
    assert shipped_self_preference()[("qwen2.5-coder-0.5b", "headings-ab")] == (default["share"], default["n"])
