"""The report of a run: one self-contained HTML file to look at a preference dataset before
training on it (`edgepref report DIR`, or `edgepref run ... --report`).

It reads what a run wrote (run.json, records.jsonl, pairs.jsonl; a merged shard directory is the
same) and shows the run's settings and counts, plots drawn with matplotlib and inlined as SVG,
and every instruction with its pair or the reason it has none, in a table to filter and open.
The page needs no network: no CDN, no fonts, no request of any kind; it works from file://.
A partial run directory gives a report that says what is missing, not an error.

Which record was dropped for what is recomputed with the pair stage (`pair.pick_pair`) from the
records and the run's [pair] settings: the pair stage needs no model, so this is what the run
decided.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import EdgeprefError, InputError
from .inputs import iter_jsonl_rows, read_records
from .pair import PairConfig, pick_pair, rank_completions
from .records import Record
from .summary import completions_per_model

PAGE = Path(__file__).with_name("report.html.jinja2")


@dataclass
class RunView:
    """What a run directory holds, with what is missing or unreadable said in `problems`."""

    directory: Path
    run: dict = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pair_cfg: PairConfig = field(default_factory=PairConfig)


def load_run_dir(directory: str | Path) -> RunView:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"not a run directory: {directory}", "pass the --out directory of `edgepref run` or `merge`")
    view = RunView(directory)
    run_file, records_file, pairs_file = (directory / n for n in ("run.json", "records.jsonl", "pairs.jsonl"))
    if not any(f.is_file() for f in (run_file, records_file, pairs_file)):
        raise InputError(f"{directory} has no run.json, records.jsonl or pairs.jsonl",
                         f"run the pipeline first: edgepref run INPUT --out {directory}")
    if run_file.is_file():
        try:
            view.run = json.loads(run_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            view.problems.append(f"run.json is not readable JSON ({exc}); settings and timings are not shown")
    else:
        view.problems.append("no run.json (the run has not finished): settings, timings and drop counts "
                             "come from the records alone")
    if records_file.is_file():
        view.records, bad = read_records(records_file)
        view.problems += [f"records.jsonl line {p.row}: {p.reason} (left out)" for p in bad]
    else:
        view.problems.append("no records.jsonl: candidates, scores and drop reasons cannot be shown")
    if pairs_file.is_file():
        for n, row, problem in iter_jsonl_rows(pairs_file):
            if problem or not {"prompt", "chosen", "rejected"} <= set(row):
                view.problems.append(f"pairs.jsonl line {n}: {problem or 'not a pair'} (left out)")
            else:
                view.pairs.append(row)
    else:
        view.problems.append("no pairs.jsonl yet: the run has not reached the pair stage")
    raw = view.run.get("config", {}).get("pair", {})
    known = {f.name for f in fields(PairConfig)}
    try:
        view.pair_cfg = PairConfig(**{k: v for k, v in raw.items() if k in known})
    except EdgeprefError as exc:
        view.problems.append(f"run.json [pair] settings are not valid ({exc.message}); defaults used")
    return view


def _text(value) -> str:
    """A pair field as text: standard pairs hold strings, conversational ones message lists."""
    return value if isinstance(value, str) else (value[-1]["content"] if value else "")


def instruction_rows(view: RunView) -> list[dict]:
    """One row per instruction: its pair or why it has none, and every candidate with its ratings."""
    pairs = {p.get("id"): p for p in view.pairs}
    rows = []
    for record in view.records:
        pair, reason = pick_pair(record, view.pair_cfg)
        written = pairs.get(record.id)
        ranked = {r.completion.id: r for r in rank_completions(record, view.pair_cfg.score)}
        candidates = []
        for c in record.completions:
            ratings = [r for r in record.ratings if r.completion_id == c.id]
            rank = ranked.get(c.id)
            candidates.append({
                "id": c.id, "model": c.model, "member": c.member, "source": c.source, "criterion": c.criterion,
                "score": round(rank.primary, 3) if rank else None,
                "ratings": [{"judge": r.judge, "score": r.score, "expected": r.expected, "rationale": r.rationale,
                             "positions": r.positions} for r in ratings],
                "text": c.text, "note": c.note,
                "role": ("chosen" if pair and c.id == pair.completion_chosen else
                         "rejected" if pair and c.id == pair.completion_rejected else ""),
            })
        rows.append({
            "id": record.id, "instruction": record.instruction,
            "status": "pair" if written or pair else reason or "no pair",
            "model_chosen": pair.model_chosen if pair else None,
            "model_rejected": pair.model_rejected if pair else None,
            "score_chosen": round(pair.score_chosen, 3) if pair else None,
            "score_rejected": round(pair.score_rejected, 3) if pair else None,
            "margin": round(pair.margin, 3) if pair else None,
            "confidence": pair.confidence if pair else None,
            "dropped": record.dropped, "candidates": candidates,
        })
    if not view.records:  # pairs without records: show what the pairs carry
        rows = [{"id": p.get("id"), "instruction": _text(p.get("prompt")), "status": "pair",
                 "model_chosen": p.get("model_chosen"), "model_rejected": p.get("model_rejected"),
                 "score_chosen": p.get("score_chosen"), "score_rejected": p.get("score_rejected"),
                 "margin": p.get("margin"), "confidence": p.get("confidence"), "dropped": [],
                 "candidates": [{"id": p.get("completion_chosen"), "model": p.get("model_chosen"), "role": "chosen",
                                 "text": _text(p.get("chosen")), "score": p.get("score_chosen"), "ratings": [],
                                 "source": "", "rationale": p.get("rationale_chosen")},
                                {"id": p.get("completion_rejected"), "model": p.get("model_rejected"),
                                 "role": "rejected", "text": _text(p.get("rejected")), "score": p.get("score_rejected"),
                                 "ratings": [], "source": "", "rationale": p.get("rationale_rejected")}]}
                for p in view.pairs]
    return rows


def overview(view: RunView, rows: list[dict]) -> dict:
    """The run at a glance; counts come from run.json's summary when there is one."""
    summary = view.run.get("summary", {})
    cfg = view.run.get("config", {})
    drops = Counter(r["status"] for r in rows if r["status"] != "pair")
    seconds = summary.get("stage_seconds", {})
    tokens = summary.get("stage_completion_tokens", {})
    return {
        "instructions": summary.get("instructions", len(view.records) or len(rows)),
        "candidates": summary.get("completions_per_model") or completions_per_model(view.records),
        "pairs": len(view.pairs),
        "dropped": summary.get("pairs_dropped") or dict(drops),
        "judges": view.run.get("judges") or cfg.get("judge", {}).get("models", []),
        "recipe": cfg.get("judge", {}).get("recipe"),
        "decide": view.pair_cfg.decide,
        "min_confidence": view.pair_cfg.min_confidence,
        "verdict_chain": summary.get("verdict_chain"),
        "expected_agreement": summary.get("expected_agreement"),
        "target_agreement": summary.get("target_agreement"),
        "risk": summary.get("risk"),
        "coverage": summary.get("coverage"),
        "min_margin": view.pair_cfg.min_margin,
        "stages": [{"stage": s, "seconds": sec, "tokens": tokens.get(s),
                    "tokens_per_second": round(tokens[s] / sec, 1) if tokens.get(s) and sec else None}
                   for s, sec in seconds.items()],
        "wall_seconds": summary.get("wall_seconds"),
        "settings": cfg,
    }


def build_report(view: RunView) -> str:
    """The HTML page of a loaded run."""
    import jinja2

    from .report_plots import draw_plots

    rows = instruction_rows(view)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(PAGE.read_text(encoding="utf-8"))
    # The rows (most of the page's weight: every candidate's text) go in gzipped and base64-encoded,
    # about a third of their JSON; the page inflates them with the browser's DecompressionStream.
    data = base64.b64encode(gzip.compress(json.dumps(rows, ensure_ascii=False).encode("utf-8"), mtime=0)).decode()
    return page.render(
        title=f"edgepref report: {view.directory.name}", directory=str(view.directory),
        problems=view.problems, overview=overview(view, rows), plots=draw_plots(view, rows),
        settings=json.dumps(view.run.get("config", {}), indent=1, ensure_ascii=False),
        data=data, models=sorted({c["model"] for r in rows for c in r["candidates"] if c.get("model")}),
        statuses=sorted({r["status"] for r in rows}),
    )


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of run directory `directory` to `out` (default DIR/report.html)."""
    view = load_run_dir(directory)
    out = Path(out) if out else view.directory / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with io.open(tmp, "w", encoding="utf-8") as fh:
        fh.write(build_report(view))
    tmp.replace(out)
    return out
