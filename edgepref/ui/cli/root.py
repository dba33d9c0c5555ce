"""The root `edgepref` group, its error handling and the option every command group shares.

Errors: `EdgeprefGroup` catches EdgeprefError from any command below it and prints
`error: ...` / `hint: ...` on stderr with exit code 1; `--debug` (or EDGEPREF_DEBUG=1) lets
the traceback through instead.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ... import __version__
from .. import display
from ...core.errors import EdgeprefError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def package_version() -> str:
    try:
        return importlib.metadata.version("edgepref")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return __version__


class EdgeprefGroup(click.Group):
    """A click group that turns library errors into two lines on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeprefError as exc:
            if _debug(ctx):
                raise
            display.render_error(exc)
            ctx.exit(1)
        except OSError as exc:  # disk full, permission denied: the user can act on these
            if _debug(ctx):
                raise
            display.render_error(str(exc), "run again with --debug to see where it happened")
            ctx.exit(1)
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            display.render_error("interrupted", "finished work is saved; run the same command again to resume")
            ctx.exit(130)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug"))


# ---------------------------------------------------------------- shared options


def models_file_option(func: F) -> F:
    return click.option(
        "--models-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="A models.toml merged over the built-in and user registries (its entries win).",
    )(func)


# ---------------------------------------------------------------- root


@click.group(cls=EdgeprefGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_version(), "--version", prog_name="edgepref")
@click.option(
    "--debug",
    is_flag=True,
    envvar="EDGEPREF_DEBUG",
    help="Show full tracebacks instead of one-line errors.",
)
def cli(debug: bool) -> None:
    """Turn a list of instructions into a DPO preference dataset, offline, with llama.cpp.

    \b
    Example:
      edgepref models list
      edgepref --debug models info qwen2.5-coder-0.5b
    """
