"""The settings table: one declaration per option drives the flags and the overrides."""

from __future__ import annotations

from dataclasses import fields

import pytest

from edgepref.ui.cli import cli
from edgepref.stages.config import PipelineConfig, PoolMember
from edgepref.core.errors import ConfigError
from edgepref.runs.settings import SETTINGS, apply_overrides, settings_for

SAMPLE = {str: "x", int: 64, float: 0.25, bool: True}  # in range of every setting of its type


def sample(setting):
    if setting.name in ("pool", "judges", "evolve_model", "escalate_to", "cascade"):
        return ("smollm2-135m",) if setting.multiple else "smollm2-135m"
    if setting.name == "endpoints":
        return ("big=http://gpu:8080/v1",)
    if setting.choices:
        return setting.choices[-1]
    return SAMPLE[setting.type]


def read(cfg: PipelineConfig, target: str):
    section, _, attr = target.rpartition(".")
    if section == "pool":
        return [getattr(m, attr) for m in cfg.pool]
    return getattr(getattr(cfg, section) if section else cfg, attr)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.target], ids=lambda s: s.name)
def test_each_setting_lands_where_its_table_row_says(setting):
    cfg = apply_overrides(PipelineConfig(pool=[PoolMember("qwen2.5-coder-0.5b"), PoolMember("smollm2-135m")]),
                          **{setting.name: sample(setting)})
    got = read(cfg, setting.target)
    want = list(sample(setting)) if setting.multiple else sample(setting)
    assert got == ([want, want] if setting.target.startswith("pool.") else want)


def test_targets_are_real_config_fields():
    sections = {f.name for f in fields(PipelineConfig)}
    member = {f.name for f in fields(PoolMember)}
    for s in SETTINGS:
        if s.target is None:
            assert s.apply is not None, s.name
            continue
        section, _, attr = s.target.rpartition(".")
        if section == "pool":
            assert attr in member, s.name
        elif not section:
            assert attr in sections, s.name
        else:
            assert section in sections and attr in {f.name for f in fields(getattr(PipelineConfig(), section))}


def test_settings_with_their_own_rule():
    cfg = apply_overrides(PipelineConfig(), pool=("smollm2-135m",), temperature=0.1, seed=7,
                          endpoints=("big=http://a:1/v1", "big=http://b:1/v1"), models_file="m.toml")
    assert [(m.model, m.temperature) for m in cfg.pool] == [("smollm2-135m", 0.1)]  # --pool first
    assert cfg.seed == 7 and cfg.pair.seed == 7
    assert cfg.models["big"]["endpoints"] == ["http://a:1/v1", "http://b:1/v1"]
    assert cfg.models_file == "m.toml"
    unset = apply_overrides(PipelineConfig(), temperature=None, pool=(), judges=())
    assert unset == PipelineConfig()
    with pytest.raises(ConfigError, match="MODEL=URL"):
        apply_overrides(PipelineConfig(), endpoints=("big",))
    with pytest.raises(TypeError, match="unknown settings: nope"):
        apply_overrides(PipelineConfig(), nope=1)


def test_every_setting_is_a_flag_of_the_commands_of_its_groups():
    for command, group in (("run", "pipeline"), ("try", "pipeline"), ("judge", "pipeline"), ("pair", "pair")):
        params = {p.name for p in cli.commands[command].params}
        assert {s.name for s in settings_for(group)} <= params, command
    assert "judge_recipe" not in {p.name for p in cli.commands["pair"].params}
