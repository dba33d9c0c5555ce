"""Options shared by the pipeline commands. The pipeline's settings come from one table,
edgepref.runs.settings.SETTINGS: `setting_options(group)` turns its rows into click options and
`build_config` applies what the user gave over a preset and a config file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ...core.checks import check_value
from ...core.errors import ConfigError
from ...runs.settings import PRESET_NAMES, Setting, apply_overrides, settings_for
from .root import F, models_file_option


class Number(click.ParamType):
    """A number an option declared here (outside the settings table) allows: click reads it as
    `kind` and edgepref.stages.config's checker holds it to `limits` (ge, gt, le, lt), so these options
    meet the settings' rule: a bad value is one line naming the flag, the value and the range,
    before any model loads, and a float must be finite (click's FloatRange takes "nan")."""

    def __init__(self, kind: type[int] | type[float], **limits: float):
        self.kind, self.limits = kind, limits
        self.name = "integer" if kind is int else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | float:
        number = (click.INT if self.kind is int else click.FLOAT).convert(value, param, ctx)
        try:
            check_value("", number, self.kind, self.limits, sep="")
        except ConfigError as exc:
            self.fail(exc.message, param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Number({self.kind.__name__}, {self.limits})"


COUNT = Number(int, ge=0)  # a number of things where 0 means none
LIMIT = Number(int, ge=1)  # "use only N": 0 would not mean none, so it is refused


def input_options(func: F) -> F:
    for opt in reversed([
        click.option("--column", default=None, help="Instruction column (default: instruction, then prompt)."),
        click.option("--messages-column", default=None,
                     help="Conversation column: role/content or ShareGPT from/value messages ending with the user "
                          "turn to answer (default: messages, then conversations, unless --column is given)."),
        click.option("--split", default=None, help="Dataset split for Hub datasets and DatasetDicts."),
        click.option("--limit", type=LIMIT, default=None, help="Use only the first N instructions."),
        click.option("--shuffle", is_flag=True, help="Shuffle the rows (with --seed) before --limit."),
        click.option("--shard", default=None, metavar="I/N",
                     help="Process only shard I of N (0 <= I < N) of the input; combine with `edgepref merge`."),
    ]):
        func = opt(func)
    return func


def _click_option(setting: Setting):
    decls = [setting.flag, *([setting.short] if setting.short else []), setting.name]
    kw: dict[str, Any] = {"default": () if setting.multiple else None, "help": setting.help or None,
                          "multiple": setting.multiple, "metavar": setting.metavar}
    if setting.choices:
        kw["type"] = click.Choice(list(setting.choices))
    elif setting.type is not bool:
        kw["type"] = setting.type
    return click.option(*decls, **kw)


def setting_options(group: str) -> Callable[[F], F]:
    """The click options of every setting (edgepref.runs.settings.SETTINGS) in `group`."""
    def decorate(func: F) -> F:
        for setting in reversed(settings_for(group)):
            func = _click_option(setting)(func)
        return func
    return decorate


config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                             help="Pipeline config (TOML); flags override it.")


def pipeline_options(func: F) -> F:
    """Options shared by run, try and the stage commands; each overrides the config file."""
    func = click.option("--quiet", "-q", is_flag=True, help="No progress display.")(func)
    func = models_file_option(func)
    func = setting_options("pipeline")(func)
    func = click.option("--preset", type=click.Choice(list(PRESET_NAMES)), default=None,
                        help="Start from a named config: embedded models (default) or the course's pool.")(func)
    return config_option(func)


def build_config(config_file: Path | None, preset_name: str | None = None, **values):
    """The config a command runs with: a preset, the config file over it, the flags over that."""
    from ...stages.config import load_config, preset

    return apply_overrides(load_config(config_file, preset(preset_name or "embedded")), **values)
