"""The `edgepref` command line: click groups and commands, nothing else.

Each command body parses its options, calls one library function and hands the result to
display.py. Errors: `EdgeprefGroup` catches EdgeprefError from any command below it and prints
`error: ...` / `hint: ...` on stderr with exit code 1; `--debug` (or EDGEPREF_DEBUG=1) lets
the traceback through instead.

Adding a command: decorate a function with `@cli.command()` (or a group with `@cli.group()`),
give its docstring a `\\b` "Example:" block (tests check every --help has one), and reuse the
shared options below (`models_file_option`). If a body does more than parse, call and render,
the work belongs in the library.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, display
from .errors import EdgeprefError
from .ggufmeta import summarize_gguf
from .registry import availability, load_registry, pull_model, resolve_model_path

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
            display.render_error("interrupted")
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


# ---------------------------------------------------------------- models


@cli.group()
def models() -> None:
    """List, locate, download and inspect GGUF models.

    \b
    Example:
      edgepref models list
      edgepref models path qwen2.5-coder-0.5b
    """


@models.command("list")
@models_file_option
def models_list(models_file: Path | None) -> None:
    """List every known model and whether it is available on this machine now.

    A model that is not available shows the command that makes it available.

    \b
    Example:
      edgepref models list
      edgepref models list --models-file my-models.toml
    """
    registry = load_registry(models_file)
    display.render_models_table((entry, availability(entry)) for entry in registry.entries.values())


@models.command("path")
@click.argument("name")
@models_file_option
def models_path(name: str, models_file: Path | None) -> None:
    """Print the local path of model NAME (a registry name or a .gguf file), verified.

    Nothing is downloaded: a model that is not on this machine is an error that says how
    to get it.

    \b
    Example:
      edgepref models path qwen2.5-coder-0.5b
      llama-cli -m "$(edgepref models path smollm2-135m)"
    """
    display.render_path(resolve_model_path(name, load_registry(models_file)))


@models.command("pull")
@click.argument("name")
@models_file_option
def models_pull(name: str, models_file: Path | None) -> None:
    """Download model NAME from the Hugging Face Hub (if not already local); print its path.

    The file goes to the Hugging Face cache and is checked against the registry's size and
    sha256. This is the only edgepref command that uses the network.

    \b
    Example:
      edgepref models pull qwen2.5-1.5b
    """
    display.render_path(pull_model(name, load_registry(models_file)))


@models.command("info")
@click.argument("name")
@models_file_option
@click.option("--template", "show_template", is_flag=True, help="Also print the chat template.")
def models_info(name: str, models_file: Path | None, show_template: bool) -> None:
    """Show the GGUF metadata of model NAME (a registry name or a .gguf file).

    \b
    Example:
      edgepref models info qwen2.5-coder-0.5b
      edgepref models info ./my-model.Q4_K_M.gguf --template
    """
    path = resolve_model_path(name, load_registry(models_file))
    display.render_gguf_summary(summarize_gguf(path), show_template=show_template)


def main() -> None:
    """Console-script entry point (`edgepref`)."""
    cli.main(prog_name="edgepref")


if __name__ == "__main__":  # pragma: no cover
    main()
