"""One check of every setting (edgepref.stages.config.check_fields), whether a value comes from a config
file, a flag or the Python API: a wrong type, a value out of range, NaN, an unknown choice or a
string where a list belongs is a ConfigError naming the key, the value, what is allowed and the
file, before any model is opened. Property-based: any TOML-able document loads or is a
ConfigError, never another exception, and a config that loads is JSON without NaN."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepref.ui.cli import cli
from edgepref.stages.config import (
    EngineConfig, EvolveConfig, JudgeConfig, PipelineConfig, PoolMember, config_from_dict, load_config)
from edgepref.core.errors import ConfigError
from edgepref.stages.config import PairConfig
from edgepref.runs.pipeline import run_pipeline
from edgepref.runs.settings import SETTINGS, apply_overrides

POOL = '[[pool]]\nmodel = "qwen2.5-coder-0.5b"\n'

# (TOML, text the message must hold besides the file name): each names the key, shows the value
# as written and says what is allowed
BAD_FILES = [
    (POOL + 'temperature = "hot"\n', ['[[pool]] #1 temperature = "hot"', "a finite number >= 0.0 and <= 2.0"]),
    (POOL + 'max_tokens = "16"\n', ['[[pool]] #1 max_tokens = "16"', "an integer >= 1"]),
    (POOL + "max_tokens = true\n", ["[[pool]] #1 max_tokens = true", "an integer"]),
    (POOL + "max_tokens = 0\n", ["max_tokens = 0", "an integer >= 1"]),
    (POOL + "n = 0\n", ["n = 0", ">= 1"]),
    (POOL + "temperature = -0.5\n", ["temperature = -0.5", ">= 0.0"]),
    (POOL + "temperature = nan\n", ["temperature = NaN", "a finite number"]),
    (POOL + "top_p = 1.5\n", ["top_p = 1.5", "> 0.0 and <= 1.0"]),
    (POOL + "top_p = 0.0\n", ["top_p = 0.0", "> 0.0"]),
    (POOL + "top_k = -1\n", ["top_k = -1", ">= 0"]),
    ('[judge]\nmodels = "qwen"\n', ['[judge] models = "qwen"', "a non-empty list of text"]),
    ("[judge]\nmodels = []\n", ["[judge] models = []", "a non-empty list"]),
    ('[judge]\ncascade = "x"\n', ['[judge] cascade = "x"', "a list of text"]),
    ('[judge]\naspect = "vibes"\n', ['aspect = "vibes"', "one of: overall, helpfulness"]),
    ('[judge]\nmode = "fast"\n', ['mode = "fast"', "one of: rationale, score-only, pairwise"]),
    ('[judge]\nrecipe = "coin"\n', ['recipe = "coin"', "headings-ab"]),
    ('[judge]\nexpected = "true"\n', ['[judge] expected = "true"', "true or false"]),
    ("[judge]\nshuffle = 1\n", ["[judge] shuffle = 1", "true or false"]),
    ("[judge]\nn_ctx = 5\n", ["[judge] n_ctx = 5", ">= 64"]),
    ('[evolve]\ncriteria = "helpfulness"\n', ['criteria = "helpfulness"', "a non-empty list of text"]),
    ('[evolve]\ncriteria = ["kindness"]\n', ['criteria = ["kindness"]', "each one of: helpfulness"]),
    ("[evolve]\nnum_evolutions = -1\n", ["[evolve] num_evolutions = -1", ">= 0"]),
    ('[evolve]\npick = "best"\n', ['pick = "best"', "one of: own, all"]),
    ('[evolve]\nmembers = ["nobody"]\n', ['[evolve] members = ["nobody"]: nobody is not a pool member']),
    ("[pair]\nmin_margin = nan\n", ["[pair] min_margin = NaN", "a finite number >= 0.0"]),
    ("[pair]\nmin_margin = -1\n", ["min_margin = -1", ">= 0.0"]),
    ("[pair]\ntarget_agreement = 1.0\n", ["target_agreement = 1.0", "< 1.0"]),
    ("[pair]\nmin_confidence = inf\n", ["min_confidence = Infinity", "a finite number"]),
    ('[pair]\nstrategy = "coin"\n', ['strategy = "coin"', "one of: best-worst, best-random"]),
    ("[engine]\nslots = 0\n", ["[engine] slots = 0", ">= 1 and <= 256"]),
    ("[engine]\nn_ctx = 5\n", ["[engine] n_ctx = 5", ">= 64"]),
    ("[engine]\nprompt_block = 100000\n", ["prompt_block = 100000", "<= 512"]),
    ("[engine]\ngpu_layers = -1\n", ["gpu_layers = -1", ">= 0"]),
    ("seed = -3\n", ["seed = -3", ">= 0"]),
    ("similarity_threshold = inf\n", ["similarity_threshold = Infinity", "a finite number"]),
    ('similarity_threshold = "0.9"\n', ['similarity_threshold = "0.9"', "a finite number"]),
    ('pool = "qwen"\n', ['pool = "qwen"', "[[pool]] tables"]),
    ("judge = 3\n", ["judge = 3", "[judge] table"]),
    ("[[pool]]\ntemperature = 0.5\n", ["[[pool]] #1 has no model"]),
    ('[models]\nx = "oops"\n', ['models = {"x": "oops"}: expected a table of tables']),
    ('[judge]\nmodel = "qwen"\n', ["[judge]: unknown setting(s) model (did you mean models?)"]),
    ('[[pool]]\nmodel = ""\n', ['model = ""', "non-empty text"]),
    ("sed = 1\n", ['unknown top-level setting "sed" (did you mean seed?)']),
    (POOL + 'template = "{{ instruction"\n', ['[[pool]] #1 template = "{{ instruction"', "not a jinja2 template"]),
    (POOL + 'template = "{{ question }}"\n', ["uses question; only instruction is known"]),
    (POOL + 'template = "Say hi."\n', ["does not use {{ instruction }}"]),
]


@pytest.mark.parametrize("toml,expected", BAD_FILES, ids=[t for t, _ in BAD_FILES])
def test_a_wrong_value_in_a_config_file_names_file_key_value_and_what_is_allowed(tmp_path, toml, expected):
    path = tmp_path / "pipeline.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith(f"{path}: ") and "\n" not in message
    for part in expected:
        assert part in message, message


def test_the_hint_says_how_to_write_it(tmp_path):
    def hint(toml: str) -> str:
        path = tmp_path / "c.toml"
        path.write_text(toml)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        return info.value.hint or ""

    assert hint('[judge]\nmodels = "qwen"\n') == 'a list is written in brackets: models = ["qwen"]'
    assert "without quotes" in hint(POOL + 'max_tokens = "16"\n')
    assert "true or false" in hint("[judge]\nshuffle = 1\n")


def test_right_values_load(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(
        "seed = 7\n[engine]\nn_ctx = 1024\nslots = 256\nthreads = 2\ngpu_layers = 0\n"
        + POOL + 'system_prompt = "Be brief."\ntemplate = "Answer: {{ instruction | trim }}"\ntemperature = 0\ntop_p = 1\ntop_k = 0\nmax_tokens = 64\nn = 2\n'
        + '[[pool]]\nmodel = "smollm2-135m"\nlabel = "smol"\ntemperature = 2.0\n'
        + '[evolve]\nnum_evolutions = 0\nmembers = ["smol"]\ncriteria = ["details"]\n'
        + '[judge]\nmodels = ["qwen2.5-coder-0.5b"]\ncascade = ["smollm2-135m", "qwen2.5-coder-0.5b"]\n'
        + '[pair]\nmin_margin = 0\ntarget_agreement = 0.9\n'
        + '[models.big]\nendpoints = ["http://gpu:8080/v1"]\n'
    )
    cfg = load_config(path)
    assert [m.name for m in cfg.pool] == ["qwen2.5-coder-0.5b", "smol"]
    assert cfg.pool[0].temperature == 0 and cfg.pool[0].top_p == 1 and cfg.engine.slots == 256
    assert cfg.judge.cascade == ["smollm2-135m", "qwen2.5-coder-0.5b"] and cfg.evolve.members == ["smol"]
    assert cfg.pair.target_agreement == 0.9 and cfg.seed == 7


def test_a_config_file_that_is_not_utf8_or_not_a_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[pool]]\nmodel = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)  # a directory


@pytest.mark.parametrize("values,expected", [
    ({"max_tokens": 0}, "--max-tokens 0: expected an integer >= 1"),
    ({"completions": 0}, "--completions 0: expected an integer >= 1"),
    ({"slots": 0}, "--slots 0: expected an integer >= 1 and <= 256"),
    ({"n_ctx": 5}, "--n-ctx 5: expected an integer >= 64"),
    ({"temperature": -0.1}, "--temperature -0.1: expected a finite number >= 0.0"),
    ({"temperature": math.nan}, "--temperature NaN: expected a finite number"),
    ({"evolutions": -1}, "--evolutions -1: expected an integer >= 0"),
    ({"min_margin": math.inf}, "--min-margin Infinity: expected a finite number"),
    ({"target_agreement": 2.0}, "--target-agreement 2.0: expected a finite number > 0.0 and < 1.0"),
    ({"threads": 0}, "--threads 0: expected an integer >= 1"),
    ({"max_tokens": 2**31}, "--max-tokens 2147483648: expected an integer >= 1 and <= 2147483647"),
    ({"both_orders": "yes"}, '--both-orders "yes": expected true or false'),
    ({"max_tokens": True}, "--max-tokens true: expected an integer"),
    ({"max_tokens": "16"}, '--max-tokens "16": expected an integer'),
    ({"judge_mode": "fast"}, '--judge-mode "fast": expected one of: rationale, score-only, pairwise'),
    ({"judges": "qwen"}, "--judge 'qwen': expected a list of values"),
    ({"pool": "qwen"}, "--pool 'qwen': expected a list of values"),
    ({"seed": -1}, "--seed -1: expected an integer >= 0"),
])
def test_a_wrong_flag_value_names_the_flag(values, expected):
    with pytest.raises(ConfigError) as info:
        apply_overrides(PipelineConfig(), **values)
    assert info.value.message.startswith(expected), info.value.message


@pytest.mark.parametrize("build", [
    lambda: PipelineConfig(pool=[PoolMember("qwen2.5-coder-0.5b", temperature=math.nan)]),
    lambda: PipelineConfig(pool=[PoolMember("qwen2.5-coder-0.5b", max_tokens=0)]),
    lambda: PipelineConfig(pool=[PoolMember("qwen2.5-coder-0.5b", n=True)]),
    lambda: PipelineConfig(pool=["qwen2.5-coder-0.5b"]),
    lambda: PipelineConfig(pool=[]),
    lambda: PipelineConfig(judge=JudgeConfig(models="qwen2.5-coder-0.5b")),
    lambda: PipelineConfig(evolve=EvolveConfig(criteria="details")),
    lambda: PipelineConfig(engine=EngineConfig(slots=0)),
    lambda: PipelineConfig(similarity_threshold=math.inf),
    lambda: PipelineConfig(seed="0"),
])
def test_the_python_api_is_checked_before_a_model_is_opened(tmp_path, monkeypatch, build):
    monkeypatch.setattr("edgepref.backends.engine.Engine", _no_model)
    with pytest.raises(ConfigError):
        run_pipeline(["Name a color."], tmp_path / "out", build())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [
    {"min_margin": math.nan}, {"min_confidence": -0.1}, {"target_agreement": 0.0}, {"seed": 1.5},
    {"strategy": ["best-worst"]}, {"decide": "vibes"},
])
def test_pair_config_checks_itself(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        PairConfig(**kwargs)


def _no_model(*args, **kwargs):
    raise AssertionError("a model was opened before the settings were checked")


def test_a_bad_flag_fails_on_the_cli_with_one_line_and_no_model(tmp_path, monkeypatch):
    monkeypatch.setattr("edgepref.backends.engine.Engine", _no_model)
    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "Name a color."}\n')
    for flags, expected in (
        (["--max-tokens", "0"], "error: --max-tokens 0: expected an integer >= 1"),
        (["--temperature", "nan"], "error: --temperature NaN: expected a finite number"),
        (["-n", "0"], "error: --completions 0: expected an integer >= 1"),
    ):
        out = tmp_path / "out"
        result = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "-q", *flags])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert lines[0].startswith(expected) and len(lines) == 1, result.output
        assert "Traceback" not in result.output and not out.exists()
    config = tmp_path / "pipeline.toml"
    config.write_text('[judge]\nmodels = "qwen"\n')
    result = CliRunner().invoke(cli, ["run", str(src), "--out", str(tmp_path / "out"), "--config", str(config)])
    assert result.exit_code == 1 and f'error: {config}: [judge] models = "qwen"' in result.output
    assert 'hint: a list is written in brackets: models = ["qwen"]' in result.output


# ---------------------------------------------------------------- property-based

# Every value TOML can hold (tomllib reads datetimes too, and NaN and inf floats)
TOML_SCALARS = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=12)
                | st.datetimes() | st.dates())
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
SECTIONS = {"evolve": EvolveConfig, "judge": JudgeConfig, "pair": PairConfig, "engine": EngineConfig}
TOP_KEYS = [f.name for f in fields(PipelineConfig) if f.name not in SECTIONS and f.name != "pool"]
# values near each field's limits and of its type, so that some documents load
NEAR = st.sampled_from([0, 1, 2, 64, 256, 0.5, 1.0, "auto", "qwen2.5-coder-0.5b", "own", "details",
                        ["qwen2.5-coder-0.5b"], ["details"], True, False])


def _table(cls) -> st.SearchStrategy[dict]:
    keys = st.sampled_from([f.name for f in fields(cls)]) | st.text(max_size=8)
    return st.dictionaries(keys, NEAR | TOML_VALUES, max_size=4)


DOCUMENTS = st.fixed_dictionaries({}, optional={
    **{name: _table(cls) | TOML_VALUES for name, cls in SECTIONS.items()},
    "pool": st.lists(_table(PoolMember).map(lambda t: {"model": "smollm2-135m", **t}) | TOML_VALUES,
                     max_size=3) | TOML_VALUES,
    **{key: NEAR | TOML_VALUES for key in TOP_KEYS},
}) | st.dictionaries(st.text(max_size=8), TOML_VALUES, max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_any_document_loads_or_is_a_config_error(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        assert exc.message
        return
    # a config that loads goes into run.json as it is: strict JSON, no NaN or Infinity
    json.dumps(asdict(cfg), allow_nan=False, default=str)


FLAG_VALUES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
               | st.lists(st.text(max_size=10), max_size=2).map(tuple) | NEAR)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([s.name for s in SETTINGS]), FLAG_VALUES, max_size=4))
def test_any_flag_values_apply_or_are_a_config_error(values):
    try:
        cfg = apply_overrides(PipelineConfig(), **values)
    except ConfigError:
        return
    json.dumps(asdict(cfg), allow_nan=False)
