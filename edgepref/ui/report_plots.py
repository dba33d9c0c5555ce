"""The plots of a run report, drawn with matplotlib (Agg) and returned as inline SVG.

Text stays text in the SVG (no embedded fonts), so each plot weighs a few tens of kilobytes
whatever the number of pairs. A plot with nothing to draw is left out; the page says why.
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict

from ..core.errors import EdgeprefError

CHOSEN, REJECTED, OTHER = "#2e7d32", "#c62828", "#1565c0"
MODEL_COLOURS = [OTHER, "#ef6c00", "#6a1b9a", "#00838f"]  # one per model, in name order


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeprefError("the report draws its plots with matplotlib, which is not installed",
                            "pip install 'edgepref[report]'") from None
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "edgepref"})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    fig.clf()
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # matplotlib's RDF credits


def _bars(ax, groups: list[str], series: dict[str, list[float]], colours: list[str]) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, values, width, label=name, color=colours[k % len(colours)])
    ax.set_xticks(range(len(groups)), groups, rotation=20 if max(map(len, groups), default=0) > 12 else 0,
                  ha="right" if max(map(len, groups), default=0) > 12 else "center")
    ax.legend(frameon=False, loc="best", fontsize=8)


def draw_plots(view, rows: list[dict]) -> list[dict]:
    """[{"id", "title", "svg", "caption"}] for a loaded RunView and its instruction rows."""
    plt = _pyplot()
    out: list[dict] = []

    from matplotlib.ticker import MaxNLocator

    def add(key: str, title: str, caption: str, draw, size=(6.4, 3.0)) -> None:
        fig, ax = plt.subplots(figsize=size)
        try:
            draw(ax)
            if key != "lengths":  # every other plot counts things on its y axis
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            out.append({"id": key, "title": title, "svg": _svg(fig), "caption": caption})
        finally:
            plt.close(fig)

    ratings = [(c["model"], r) for row in rows for c in row["candidates"] for r in c["ratings"]]
    models = sorted({m for m, _ in ratings})
    if ratings:
        def scores(ax):
            counts = {m: Counter(int(round(r["score"])) for mm, r in ratings if mm == m) for m in models}
            _bars(ax, [str(s) for s in range(1, 6)], {m: [counts[m][s] for s in range(1, 6)] for m in models},
                  MODEL_COLOURS)
            ax.set_xlabel("integer score")
            ax.set_ylabel("ratings")
        add("scores", "Scores per model", "The judge's integer scores of each model's responses (all "
            "candidates, pool and evolved). Scores piled on one value say the judge does not separate them.",
            scores)
        expected = [(m, r["expected"]) for m, r in ratings if r.get("expected") is not None]
        if expected:
            def expected_scores(ax):
                for k, m in enumerate(models):
                    vals = [v for mm, v in expected if mm == m]
                    ax.hist(vals, bins=[1 + i * 0.2 for i in range(21)], histtype="step", linewidth=1.6,
                            label=m, color=MODEL_COLOURS[k % len(MODEL_COLOURS)])
                ax.set_xlabel("expected score (probability-weighted)")
                ax.set_ylabel("ratings")
                ax.legend(frameon=False)
            add("expected", "Expected scores per model", "The probability-weighted score of each rating.",
                expected_scores)

    written = [r for r in rows if r["status"] == "pair" and r["model_chosen"]]
    scored = [r for r in written if r["margin"] is not None]  # none when the run rated nothing
    if scored:
        def margins(ax):
            ax.hist([r["margin"] for r in scored], bins=20, color=OTHER)
            ax.set_xlabel("score margin (chosen - rejected)")
            ax.set_ylabel("pairs")
        add("margins", "Score margin of written pairs", "How far apart the judge's scores put chosen and rejected.",
            margins)
    if written:

        def by_model(ax):
            chosen = Counter(r["model_chosen"] for r in written)
            rejected = Counter(r["model_rejected"] for r in written)
            names = sorted(set(chosen) | set(rejected))
            _bars(ax, names, {"chosen": [chosen[n] for n in names], "rejected": [rejected[n] for n in names]},
                  [CHOSEN, REJECTED])
            ax.set_ylabel("pairs")
        add("by-model", "Chosen and rejected per model", "A model that is always chosen (or always rejected) "
            "teaches the trained model to imitate (or avoid) that model.", by_model)

        def by_source(ax):
            counts: dict[str, Counter] = defaultdict(Counter)
            for r in written:
                for c in r["candidates"]:
                    if c["role"]:
                        source = "pool" if c["source"] == "pool" else f"evolved: {c.get('criterion') or '?'}"
                        counts[c["role"]][source] += 1
            names = sorted(set(counts["chosen"]) | set(counts["rejected"]))
            _bars(ax, names, {"chosen": [counts["chosen"][n] for n in names],
                              "rejected": [counts["rejected"][n] for n in names]}, [CHOSEN, REJECTED])
            ax.set_ylabel("pairs")
        if any(c["role"] for r in written for c in r["candidates"]):
            add("by-source", "Chosen and rejected per source", "Pool completions against EvolQuality rewrites, "
                "by the criterion of the rewrite: evolved is not always better.", by_source)

        positions = {role: Counter(p for r in written for c in r["candidates"] if c["role"] == role
                                   for rt in c["ratings"] for p in rt["positions"]) for role in ("chosen", "rejected")}
        if positions["chosen"] or positions["rejected"]:
            def shown(ax):
                places = sorted(set(positions["chosen"]) | set(positions["rejected"]))
                _bars(ax, [str(p) for p in places], {role: [positions[role][p] for p in places]
                                                     for role in ("chosen", "rejected")}, [CHOSEN, REJECTED])
                ax.set_xlabel("position shown in the rating prompt (1 = first)")
                ax.set_ylabel("ratings")
            add("positions", "Where chosen and rejected were shown", "Each bar counts ratings by the place the "
                "response had in the UltraFeedback prompt. A judge that favours a position makes the chosen bars "
                "lean to one side.", shown)

        def lengths(ax):
            xs = [len(_words(r, "rejected")) for r in written]
            ys = [len(_words(r, "chosen")) for r in written]
            top = max(xs + ys + [1])
            ax.scatter(xs, ys, s=10, color=OTHER, alpha=0.7)
            ax.plot([0, top], [0, top], color="#9e9e9e", linewidth=1)
            longer = sum(y > x for x, y in zip(xs, ys)) / len(xs)
            ax.set_xlabel("rejected (words)")
            ax.set_ylabel("chosen (words)")
            ax.set_title(f"chosen is the longer one in {longer:.0%} of pairs", fontsize=9)
        add("lengths", "Length of chosen against rejected", "Points above the line: the chosen response is longer. "
            "A cloud far above it says length, not quality, may decide.", lengths, size=(4.2, 3.4))

    margins_by_id = {rec.id: (rec.judge_info.get("verdict") or {}).get("margin") for rec in view.records}
    verdicts = [(row, margins_by_id[row["id"]]) for row in rows if margins_by_id.get(row["id"]) is not None]
    if verdicts:
        # a fixed --min-confidence, or each chain judge's calibrated threshold
        fixed = view.pair_cfg.min_confidence
        lines = ({f"--min-confidence {fixed:g}": fixed} if fixed is not None else {
            f"{'+'.join(v['decided_by'])} threshold {v['threshold']:g}": v["threshold"]
            for v in (rec.judge_info.get("verdict") or {} for rec in view.records) if v.get("decided_by")})

        def confidence(ax):
            kept = [abs(v) for r, v in verdicts if r["status"] == "pair"]
            dropped = [abs(v) for r, v in verdicts if r["status"] != "pair"]
            top = max([abs(v) for _, v in verdicts] + [2 * t for t in lines.values()] + [1e-3])
            bins = [top * i / 20 for i in range(21)]
            ax.hist([kept, dropped], bins=bins, stacked=True, color=[CHOSEN, "#9e9e9e"], label=["written", "dropped"])
            for label, t in lines.items():
                ax.axvline(t, color=REJECTED, linestyle="--", linewidth=1.2, label=label)
            ax.set_xlabel("|pairwise margin| (mean log-odds, both orders)")
            ax.set_ylabel("instructions")
            ax.legend(frameon=False)
        add("confidence", "Judge confidence", "The pairwise check's |margin| for each instruction it judged; "
            "below a dashed line that judge was not sure (its pair went to the next judge, or was dropped "
            "as uncertain).", confidence)

    agreement = [rec.judge_info.get("panel_agreement") for rec in view.records]
    agreement = [a for a in agreement if a is not None]
    if agreement:
        def panel(ax):
            ax.hist(agreement, bins=[i / 10 for i in range(11)], color=OTHER)
            ax.set_xlabel("share of candidate pairs every two judges order the same way")
            ax.set_ylabel("instructions")
        add("panel", "Panel agreement", "How often the judges of the panel rank two candidates the same way.", panel)
    return out


def _words(row: dict, role: str) -> list[str]:
    text = next((c["text"] for c in row["candidates"] if c["role"] == role), "")
    return text.split()
