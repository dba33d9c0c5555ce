"""Prompt templates: jinja2 files in `edgepref/prompts/`, which a user directory can override.

Lookup order for a template name (first hit wins):
  1. `override_dir` passed to the function;
  2. else the directory in EDGEPREF_PROMPTS_DIR;
  3. else `config_dir()/prompts` (e.g. ~/.config/edgepref/prompts);
  4. the package's own templates.
An override file with the same name replaces a package template; the shared bases
(`_evol_base`, `_ultrafeedback_base`) can be overridden the same way and change every template
that extends them. Names starting with "_" are bases, not prompts, and are not listed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jinja2

from ..core.errors import ConfigError
from ..core.paths import config_dir

PACKAGE_PROMPTS_DIR = Path(__file__).parent
SUFFIX = ".jinja2"

EVOL_CRITERIA = ("helpfulness", "relevance", "deepening", "creativity", "details")
JUDGE_ASPECTS = ("overall", "helpfulness", "honesty", "instruction-following", "truthfulness")


def user_prompts_dir(override_dir: str | Path | None = None) -> Path:
    """The directory whose templates win over the package's (it need not exist)."""
    if override_dir is not None:
        return Path(override_dir)
    if os.environ.get("EDGEPREF_PROMPTS_DIR"):
        return Path(os.environ["EDGEPREF_PROMPTS_DIR"])
    return config_dir() / "prompts"


@functools.lru_cache(maxsize=8)
def _environment(user_dir: Path) -> jinja2.Environment:
    # Cached per directory so thousands of renders parse each template once; FileSystemLoader
    # still notices an edited file (auto_reload checks its mtime).
    loader = jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(str(user_dir)), jinja2.FileSystemLoader(str(PACKAGE_PROMPTS_DIR))]
    )
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,  # a missing variable is an error, not an empty string
        autoescape=False,  # prompts are plain text; HTML escaping would garble code and quotes
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _names_in(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    return {
        p.name[: -len(SUFFIX)]
        for p in directory.iterdir()
        if p.name.endswith(SUFFIX) and not p.name.startswith("_")
    }


def list_prompts(override_dir: str | Path | None = None) -> list[str]:
    """Every prompt name that `render_prompt` accepts, package and user ones together."""
    return sorted(_names_in(PACKAGE_PROMPTS_DIR) | _names_in(user_prompts_dir(override_dir)))


def render_prompt(
    name: str, /, *, override_dir: str | Path | None = None, **variables: object
) -> str:
    """Render template `name` (without the .jinja2 suffix) with `variables`."""
    user_dir = user_prompts_dir(override_dir)
    available = list_prompts(override_dir)
    if name not in available:
        raise ConfigError(
            f"unknown prompt template {name!r}; available: {', '.join(available)}",
            f"add {name}{SUFFIX} to {user_dir} or pick one of the names above",
        )
    env = _environment(user_dir.resolve())
    try:
        return env.get_template(name + SUFFIX).render(**variables)
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"prompt template {name!r} needs a variable it was not given: {exc.message}",
            f"check {name}{SUFFIX} in {user_dir} against the variables edgepref passes",
        ) from exc
    except jinja2.TemplateError as exc:
        raise ConfigError(
            f"prompt template {name!r} cannot be rendered: {exc}",
            f"fix {name}{SUFFIX} (a user override in {user_dir}?) or remove it",
        ) from exc


def evol_template_name(criterion: str) -> str:
    """The template for an EvolQuality criterion, e.g. "details" -> "evol_details"."""
    if criterion not in EVOL_CRITERIA:
        raise ConfigError(
            f"unknown evol criterion {criterion!r}; choose from {', '.join(EVOL_CRITERIA)}"
        )
    return f"evol_{criterion}"


def judge_template_name(aspect: str) -> str:
    """The template for an UltraFeedback aspect; "instruction-following" ->
    "ultrafeedback_instruction_following"."""
    if aspect not in JUDGE_ASPECTS:
        raise ConfigError(
            f"unknown judge aspect {aspect!r}; choose from {', '.join(JUDGE_ASPECTS)}"
        )
    return "ultrafeedback_" + aspect.replace("-", "_")
