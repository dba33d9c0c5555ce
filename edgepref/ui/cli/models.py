"""Model commands: `edgepref models list/path/pull/info` and `edgepref serve`."""

from __future__ import annotations

from pathlib import Path

import click

from .. import display
from ...models.ggufmeta import summarize_gguf
from ...models.modelfiles import availability, pull_model, resolve_model_path
from ...models.registry import load_registry
from .options import setting_options
from .root import cli, models_file_option


@cli.group()
def models() -> None:
    """List, locate, download and inspect models.

    NAME is a registry name (see `edgepref models list`) or a path to a .gguf file.

    \b
    Example:
      edgepref models list
      edgepref models path qwen2.5-coder-0.5b
    """


@models.command("list")
@models_file_option
def models_list(models_file: Path | None) -> None:
    """List known models and whether each is here.

    Every model of the registry and whether it is available on this machine now. A model that is
    not available shows the command that makes it available.

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
    """Print a model's verified local path.

    NAME is a registry name or a .gguf file. Nothing is downloaded: a model that is not on this
    machine is an error that says how to get it.

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
    """Download a model from the Hugging Face Hub.

    Downloads model NAME unless it is already local, then prints its path. The file goes to the
    Hugging Face cache and is checked against the registry's size and sha256. This is the only
    edgepref command that uses the network.

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
    """Show a model's GGUF metadata.

    NAME is a registry name or a .gguf file.

    \b
    Example:
      edgepref models info qwen2.5-coder-0.5b
      edgepref models info ./my-model.Q4_K_M.gguf --template
    """
    path = resolve_model_path(name, load_registry(models_file))
    display.render_gguf_summary(summarize_gguf(path), show_template=show_template)


@cli.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (0.0.0.0: all interfaces).")
@click.option("--port", type=int, default=8080, show_default=True)
@setting_options("serve")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require the key held in this environment variable.")
@models_file_option
def serve(models, host, port, n_ctx, threads, api_key_env, models_file) -> None:
    """Serve models over an OpenAI-compatible API.

    Runs llama-cpp-python's server on local models. Each MODEL (a registry name or a .gguf path)
    is served under its name; point a model entry's `endpoints` (or --endpoint MODEL=URL) at
    http://HOST:PORT/v1. Needs `pip install 'edgepref[server]'`.

    \b
    Example:
      edgepref serve qwen2.5-coder-0.5b --port 8080
      edgepref run data.jsonl --out out --endpoint qwen2.5-coder-0.5b=http://127.0.0.1:8080/v1
    """
    from ...stages.config import JudgeConfig
    from ...backends.engine.serve import api_key_from_env, served_models
    from ...backends.engine.serve import serve as run_server

    n_ctx = n_ctx or JudgeConfig().n_ctx  # a served model may be asked judge prompts
    served = served_models(models, load_registry(models_file))
    key = api_key_from_env(api_key_env)
    ready = f"serving {', '.join(a for a, _ in served)} at http://{host}:{port}/v1 (Ctrl-C stops)"
    run_server(served, host=host, port=port, n_ctx=n_ctx, n_threads=threads, api_key=key,
               on_ready=lambda: display.render_path(ready))
