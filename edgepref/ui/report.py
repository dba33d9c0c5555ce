"""The report of a run: one self-contained HTML file to look at a preference dataset before
training on it (`edgepref report DIR`, or `edgepref run ... --report`).

It reads what a run wrote (run.json, records.jsonl, pairs.jsonl; a merged shard directory is the
same) and shows the run's settings and counts, plots drawn with matplotlib and inlined as SVG,
and every instruction with its pair or the reason it has none, in a table to filter and open.
The page needs no network: no CDN, no fonts, no request of any kind; it works from file://.
Its Content-Security-Policy allows its own script alone, by hash (no 'unsafe-inline'), so a
model's text is kept from running by the policy as well as by escaping.
A partial run directory gives a report that says what is missing, not an error.
The page carries REPORT_MARKER in its head: `write_report` replaces a file only when it is such a
page, or the report.html of a run directory (a name the run directory's layout owns), never a
file of the user's or one the report is made from, unless told to overwrite.

Which record was dropped for what is recomputed with the pair stage (`pair.pick_pairs`) from the
records and the run's [pair] settings: the pair stage needs no model, so this is what the run
decided.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..core.errors import EdgeprefError, InputError
from ..stages.config import PairConfig
from ..stages.pair import pick_pairs, rank_completions
from ..core.records import Record
from ..data.review import STATUS, match_review, review_counts
from ..data.rundir import PAIRS, RECORDS, REPORT, RUN, RunDir, refuse_inputs_inside, run_json_problem
from ..runs.summary import completions_per_model

PAGE = Path(__file__).with_name("report.html.jinja2")
# in the page's head (report.html.jinja2), within its first MARKER_BYTES: a file that has it is a report
REPORT_MARKER = '<meta name="generator" content="edgepref report">'
MARKER_BYTES = 4096


@dataclass
class RunView:
    """What a run directory holds, with what is missing or unreadable said in `problems`."""

    directory: Path
    run: dict = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pair_cfg: PairConfig = field(default_factory=PairConfig)
    review: dict | None = None  # a person's review (review.review_counts), when DIR has one
    reviewed: dict = field(default_factory=dict)  # pair id -> "kept" | "swapped" | "dropped"


def load_run_dir(directory: str | Path) -> RunView:
    run_dir = RunDir(directory)
    if not run_dir.path.is_dir():
        raise InputError(f"not a run directory: {directory}", "pass the --out directory of `edgepref run` or `merge`")
    view = RunView(run_dir.path)
    if not run_dir.exists():
        raise InputError(f"{directory} has no {RUN}, {RECORDS} or {PAIRS}",
                         f"run the pipeline first: edgepref run INPUT --out {directory}")
    view.run, problem = run_dir.read_run()
    problem = problem or run_json_problem(view.run)
    if problem:
        view.run = {}
        view.problems.append(f"{problem}; settings and timings are not shown")
    elif not run_dir.run_file.is_file():
        view.problems.append(f"no {RUN} (the run has not finished): settings, timings and drop counts "
                             "come from the records alone")
    if run_dir.records_file.is_file():
        view.records, bad = run_dir.read_records()
        view.problems += bad
    else:
        view.problems.append(f"no {RECORDS}: candidates, scores and drop reasons cannot be shown")
    if run_dir.pairs_file.is_file():
        view.pairs, bad = run_dir.read_pairs()
        view.problems += bad
    else:
        view.problems.append(f"no {PAIRS} yet: the run has not reached the pair stage")
    if run_dir.review_file.is_file():
        matched, bad = match_review(view.pairs, run_dir.review_file)
        view.problems += bad
        view.review = review_counts(view.pairs, matched)
        view.reviewed = {pid: STATUS[d.decision] for pid, d in matched.applied.items() if d.decision in STATUS}
    raw = (view.run.get("config") or {}).get("pair") or {}
    known = {f.name for f in fields(PairConfig)}
    try:
        view.pair_cfg = PairConfig(**{k: v for k, v in raw.items() if k in known})
    except EdgeprefError as exc:
        view.problems.append(f"{RUN} [pair] settings are not valid ({exc.message}); defaults used")
    return view


def _text(value) -> str:
    """A pair field as text: standard pairs hold strings, conversational ones message lists."""
    return value if isinstance(value, str) else (value[-1]["content"] if value else "")


def _rounded(value: float | None) -> float | None:
    """A score for the page: 3 decimals, or None when the run rated nothing."""
    return None if value is None else round(value, 3)


def _context_dropped(record: Record) -> int:
    """How many of a conversation's oldest turns were dropped to fit the context (fit_history)."""
    return sum(int(d.get("turns") or 0) for d in record.dropped
               if d.get("stage") == "input" and d.get("reason") == "context")


def _prompt_turns(prompt) -> dict:
    """The system prompt and earlier turns of a pair's prompt (none for a string prompt)."""
    if isinstance(prompt, str) or not prompt:
        return {"system": None, "history": []}
    system = prompt[0]["content"] if prompt[0].get("role") == "system" else None
    turns = prompt[1:] if system is not None else prompt
    return {"system": system, "history": [{"role": t.get("role"), "content": t.get("content")} for t in turns[:-1]]}


def instruction_rows(view: RunView) -> list[dict]:
    """One row per instruction: its pairs (the surest in the columns, how many in `pairs`) or
    why it has none, and every candidate with its ratings and the pairs it is chosen and rejected
    in. A conversation's row also has its own system prompt, the earlier turns, and how many
    turns were dropped to fit the context (the page shows them collapsed under the instruction)."""
    pairs = {p.get("id"): p for p in view.pairs}
    rows = []
    for record in view.records:
        picked, reason = pick_pairs(record, view.pair_cfg)
        pair = picked[0] if picked else None
        chosen_in = Counter(p.completion_chosen for p in picked)
        rejected_in = Counter(p.completion_rejected for p in picked)
        written = pairs.get(record.id)
        ranked = {r.completion.id: r for r in rank_completions(record, view.pair_cfg.score)}
        candidates = []
        for c in record.completions:
            ratings = [r for r in record.ratings if r.completion_id == c.id]
            rank = ranked.get(c.id)
            candidates.append({
                "id": c.id, "model": c.model, "member": c.member, "source": c.source, "criterion": c.criterion,
                "score": _rounded(rank.primary) if rank else None,
                "ratings": [{"judge": r.judge, "score": r.score, "expected": r.expected, "rationale": r.rationale,
                             "positions": r.positions} for r in ratings],
                "text": c.text, "note": c.note,
                "role": ("chosen" if pair and c.id == pair.completion_chosen else
                         "rejected" if pair and c.id == pair.completion_rejected else ""),
                "chosen_in": chosen_in[c.id], "rejected_in": rejected_in[c.id],
            })
        rows.append({
            "id": record.id, "instruction": record.instruction,
            "system": record.system, "history": record.history, "turns_dropped": _context_dropped(record),
            "status": "pair" if written or pair else reason or "no pair",
            "pairs": len(picked) or int(bool(written)),
            "model_chosen": pair.model_chosen if pair else None,
            "model_rejected": pair.model_rejected if pair else None,
            "score_chosen": _rounded(pair.score_chosen) if pair else None,
            "score_rejected": _rounded(pair.score_rejected) if pair else None,
            "margin": _rounded(pair.margin) if pair else None,
            "confidence": pair.confidence if pair else None,
            "dropped": record.dropped, "candidates": candidates, "reviewed": view.reviewed.get(record.id),
        })
    if not view.records:  # pairs without records: show what the pairs carry
        rows = [{"id": p.get("id"), "instruction": _text(p.get("prompt")), **_prompt_turns(p.get("prompt")),
                 "turns_dropped": 0, "status": "pair", "pairs": 1,
                 "model_chosen": p.get("model_chosen"), "model_rejected": p.get("model_rejected"),
                 "score_chosen": p.get("score_chosen"), "score_rejected": p.get("score_rejected"),
                 "margin": p.get("margin"), "confidence": p.get("confidence"), "dropped": [],
                 "reviewed": view.reviewed.get(p.get("id")),
                 "candidates": [{"id": p.get("completion_chosen"), "model": p.get("model_chosen"), "role": "chosen",
                                 "text": _text(p.get("chosen")), "score": p.get("score_chosen"), "ratings": [],
                                 "source": "", "rationale": p.get("rationale_chosen")},
                                {"id": p.get("completion_rejected"), "model": p.get("model_rejected"),
                                 "role": "rejected", "text": _text(p.get("rejected")), "score": p.get("score_rejected"),
                                 "ratings": [], "source": "", "rationale": p.get("rationale_rejected")}]}
                for p in view.pairs]
    return rows


def _rate(n: int | None, seconds: float | None) -> float | None:
    return round(n / seconds, 1) if n and seconds else None


def stage_rows(summary: dict) -> list[dict]:
    """The stage table from the summary's per-stage counters (a run.json older than them has
    seconds and generated tokens only). Tokens/s counts the tokens a stage generated in its own
    time: rewrites that ran as follow-ups of the complete stage are shown, not rated."""
    stages = summary.get("stages")
    if stages is None:
        tokens = summary.get("stage_completion_tokens", {})
        stages = {s: {"seconds": sec, "completion_tokens": tokens.get(s)}
                  for s, sec in summary.get("stage_seconds", {}).items()}
    rows = []
    for name, st in stages.items():
        own = (st.get("completion_tokens") or 0) - (st.get("continued_tokens") or 0)
        rows.append({"stage": name, "seconds": st.get("seconds"), "tokens": st.get("completion_tokens"),
                     "continued_tokens": st.get("continued_tokens") or 0,
                     "tokens_per_second": _rate(own, st.get("seconds")),
                     "prompt_decoded": st.get("prompt_decoded"), "prompt_cached": st.get("prompt_cached"),
                     "prompt_tokens_per_second": _rate(st.get("prompt_decoded"), st.get("seconds"))})
    return rows


def overview(view: RunView, rows: list[dict]) -> dict:
    """The run at a glance; counts come from run.json's summary when there is one."""
    summary = view.run.get("summary") or {}
    cfg = view.run.get("config") or {}
    drops = Counter(r["status"] for r in rows if r["status"] != "pair")
    return {
        "instructions": summary.get("instructions", len(view.records) or len(rows)),
        "candidates": summary.get("completions_per_model") or completions_per_model(view.records),
        "pairs": len(view.pairs),
        "dropped": summary.get("pairs_dropped") or dict(drops),
        "judges": view.run.get("judges") or (cfg.get("judge") or {}).get("models", []),
        "recipe": (cfg.get("judge") or {}).get("recipe"),
        "decide": view.pair_cfg.decide,
        "min_confidence": view.pair_cfg.min_confidence,
        "verdict_chain": summary.get("verdict_chain"),
        "expected_agreement": summary.get("expected_agreement"),
        "target_agreement": summary.get("target_agreement"),
        "risk": summary.get("risk"),
        "coverage": summary.get("coverage"),
        "min_margin": view.pair_cfg.min_margin,
        "stages": stage_rows(summary),
        "wall_seconds": summary.get("wall_seconds"),
        "review": view.review,
        "settings": cfg,
    }


def csp_sha256(script: str) -> str:
    """The Content-Security-Policy source that allows an inline script of exactly this text."""
    return "sha256-" + base64.b64encode(hashlib.sha256(str(script).encode("utf-8")).digest()).decode()


def build_report(view: RunView) -> str:
    """The HTML page of a loaded run."""
    import jinja2

    from .report_plots import draw_plots

    rows = instruction_rows(view)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["csp_sha256"] = csp_sha256
    page = env.from_string(PAGE.read_text(encoding="utf-8"))
    # The rows (most of the page's weight: every candidate's text) go in gzipped and base64-encoded,
    # about a third of their JSON; the page inflates them with the browser's DecompressionStream.
    data = base64.b64encode(gzip.compress(json.dumps(rows, ensure_ascii=False).encode("utf-8"), mtime=0)).decode()
    return page.render(
        title=f"edgepref report: {view.directory.name}", directory=str(view.directory),
        problems=view.problems, overview=overview(view, rows), plots=draw_plots(view, rows),
        settings=json.dumps(view.run.get("config") or {}, indent=1, ensure_ascii=False),
        data=data, models=sorted({c["model"] for r in rows for c in r["candidates"] if c.get("model")}),
        statuses=sorted({r["status"] for r in rows}),
    )


def is_report(path: str | Path) -> bool:
    """Whether the file at `path` is a page `write_report` wrote (its head has REPORT_MARKER)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(MARKER_BYTES)
    except OSError:
        return False
    return REPORT_MARKER in head.decode("utf-8", errors="replace")


def check_report_out(run_dir: RunDir, out: Path, overwrite: bool = False) -> None:
    """Refuse to write the report of `run_dir` to `out` when `out` is one of the run's files, a
    directory, or an existing file that is not a report (`is_report`) nor the run directory's own
    report.html, unless `overwrite` (the run's files are refused even then). Writes nothing."""
    refuse_inputs_inside(out, [run_dir.records_file, run_dir.pairs_file, run_dir.run_file], written=[out])
    if out.is_dir():
        raise InputError(f"--out {out} is a directory", f"pass a file name for the page, such as {out / REPORT}")
    if overwrite or not out.exists() or is_report(out):
        return
    if out.resolve() == (run_dir.path / REPORT).resolve() and run_dir.is_run_dir():
        return
    raise InputError(f"--out {out} exists and is not an edgepref report (its head has no {REPORT_MARKER})",
                     "pass another --out, or add --overwrite to replace that file")


def write_report(directory: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the report of run directory `directory` to `out` (default DIR/report.html); an
    existing `out` that is not a report is refused unless `overwrite` (`check_report_out`)."""
    view = load_run_dir(directory)
    out = Path(out) if out else view.directory / REPORT
    check_report_out(RunDir(view.directory), out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with io.open(tmp, "w", encoding="utf-8") as fh:
        fh.write(build_report(view))
    tmp.replace(out)
    return out
