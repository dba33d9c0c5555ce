"""The CLI's root options and `edgepref models ...`, through click's CliRunner."""

from __future__ import annotations

import re
import subprocess
import sys
from inspect import signature
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from edgepref import __version__
from edgepref.ui.cli import cli
from edgepref.core.errors import ModelNotFoundError
from edgepref.models.modelfiles import sha256_file
from edgepref.models.registry import load_registry


def run(*args: str) -> Result:
    # click >= 8.2 keeps stderr apart by default; 8.1 needs mix_stderr=False
    kwargs = {"mix_stderr": False} if "mix_stderr" in signature(CliRunner).parameters else {}
    return CliRunner(**kwargs).invoke(cli, list(args))


def assert_clean_error(result: Result) -> None:
    """Exit 1 through SystemExit (not an escaped exception), `error:` on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_models_list_shows_embedded_models_available() -> None:
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b"):
        (line,) = [ln for ln in lines if f" {name} " in ln]
        assert "yes (pypi)" in line
    (hub_line,) = [ln for ln in lines if " qwen2.5-1.5b " in ln]
    assert "no: edgepref models pull qwen2.5-1.5b" in hub_line


def test_models_list_with_models_file(tmp_path: Path, make_gguf, write_models_file) -> None:
    gguf = make_gguf()
    models_file = write_models_file(
        f'[models.my-local]\nparams = "1M"\nsources = [{{ path = "{gguf}" }}]\n',
        tmp_path / "mine.toml",
    )
    result = run("models", "list", "--models-file", str(models_file))
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.stdout.splitlines() if " my-local " in ln]
    assert "yes (path)" in line and "1M" in line


def test_models_path_qwen() -> None:
    result = run("models", "path", "qwen2.5-coder-0.5b")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    path = Path(line)
    assert path.is_file()
    assert sha256_file(path) == load_registry().get("qwen2.5-coder-0.5b").sha256


def test_models_path_of_a_gguf_file(make_gguf) -> None:
    gguf = make_gguf()
    result = run("models", "path", str(gguf))
    assert result.exit_code == 0
    assert result.stdout == f"{gguf}\n"


def test_models_path_with_models_file(tmp_path: Path, make_gguf, write_models_file) -> None:
    gguf = make_gguf("override.gguf")
    models_file = write_models_file(
        f'[models."smollm2-135m"]\nsources = [{{ path = "{gguf}" }}]\n', tmp_path / "m.toml"
    )
    result = run("models", "path", "smollm2-135m", "--models-file", str(models_file))
    assert result.stdout == f"{gguf}\n"


def test_unknown_model_is_a_clean_error() -> None:
    result = run("models", "path", "qwen2.5-coder")
    assert_clean_error(result)
    assert "unknown model 'qwen2.5-coder'" in result.stderr
    assert "hint: did you mean " in result.stderr and "qwen2.5-coder-0.5b" in result.stderr


def test_debug_lets_the_exception_through() -> None:
    result = run("--debug", "models", "path", "no-such-model")
    assert isinstance(result.exception, ModelNotFoundError)


def test_pull_offline_is_a_clean_error() -> None:
    result = run("models", "pull", "qwen2.5-1.5b")
    assert_clean_error(result)
    assert "HF_HUB_OFFLINE" in result.stderr


def test_bad_models_file_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.x\n")
    assert_clean_error(run("models", "list", "--models-file", str(bad)))


def test_models_info_qwen() -> None:
    result = run("models", "info", "qwen2.5-coder-0.5b")
    assert result.exit_code == 0, result.output
    assert re.search(r"^architecture\s+qwen2\s*$", result.stdout, re.M)
    assert re.search(r"^chat template\s+yes\s*$", result.stdout, re.M)
    assert re.search(r"^context length\s+32,768\s*$", result.stdout, re.M)
    assert re.search(r"^layers\s+24\s*$", result.stdout, re.M)
    assert "qwen2.5-coder-0.5b.gguf" in result.stdout


def test_models_info_template(make_gguf) -> None:
    result = run("models", "info", str(make_gguf()), "--template")
    assert result.exit_code == 0, result.output
    assert "{% for m in messages %}" in result.stdout


def test_models_info_of_a_non_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.gguf"
    path.write_text("not a model")
    result = run("models", "info", str(path))
    assert_clean_error(result)
    assert "not a GGUF file" in result.stderr


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("command", list(_all_commands(cli)), ids=lambda c: " ".join(c) or "root")
def test_every_help_has_an_example(command: tuple[str, ...]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout


def test_console_script_entry_point() -> None:
    """main() as the installed script runs it: a real process, real stderr, exit status 1."""
    proc = subprocess.run(
        [sys.executable, "-c", "from edgepref.ui.cli import main; main()", "models", "path", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unknown model 'nope'")
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
