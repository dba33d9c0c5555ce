"""The verdict chain's coverage and agreement at every target of a calibration, on labelled pairs
it was not calibrated on.

    edgepref calibrate PAIRS --limit 114 --target 0.6 --target 0.7 ... --out cal.json
    edgepref eval-judge PAIRS --skip 114 --calibration cal.json --verdicts held_out.jsonl --self-preference 0
    python scripts/cascade_curve.py cal.json held_out.jsonl

Reads the per-judge margins that `eval-judge --verdicts` wrote and, for each target, applies the
calibrated chain: the pairs each judge decides, their agreement with the labels, and whether the
calibrated bound held (agreement >= target). Also each judge alone: agreement on all pairs and on
the most confident half. Prints a table; --json writes the same rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgepref.judging.calibration import read_calibration
from edgepref.judging.cascade import build_chain, decide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("calibration", type=Path)
    ap.add_argument("verdicts", type=Path, help="the JSONL of `edgepref eval-judge --verdicts`")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cal_file = read_calibration(args.calibration)
    rows = [json.loads(line) for line in args.verdicts.read_text().splitlines() if line.strip()]
    n = len(rows)
    out = {"pairs": n, "judges": {}, "targets": []}
    for judge in cal_file.chain:
        ms = [(r["margins"].get(judge), r["label"] == "a") for r in rows]
        ms = [(m, a) for m, a in ms if m is not None]
        hits = [(m > 0) == a for m, a in ms]
        top = sorted(ms, key=lambda x: -abs(x[0]))[: len(ms) // 2]
        out["judges"][judge] = {"n": len(ms), "agreement": round(sum(hits) / len(ms), 4) if ms else None,
                                "top_half": round(sum((m > 0) == a for m, a in top) / len(top), 4) if top else None}
        print(f"{judge}: agreement {out['judges'][judge]['agreement']:.1%} on {len(ms)} pairs, "
              f"{out['judges'][judge]['top_half']:.1%} on the most confident half")
    print(f"{'target':>7} {'coverage':>9} {'agreement':>10} {'bound held':>11}  decided by")
    for cal in cal_file.calibrations:
        chain = build_chain([(j,) for j in cal_file.chain], min_confidence=None, target=cal.target,
                            calibration_path=str(args.calibration), recipe=cal_file.recipe)
        by: dict[str, list[bool]] = {}
        for r in rows:
            d, m = decide(chain, r["margins"])
            if d is not None:
                by.setdefault(d.name, []).append((m > 0) == (r["label"] == "a"))
        hits = [h for hs in by.values() for h in hs]
        agreement = sum(hits) / len(hits) if hits else None
        row = {"target": cal.target, "coverage": round(len(hits) / n, 4), "agreement": None if agreement is None
               else round(agreement, 4), "held": None if agreement is None else agreement >= cal.target,
               "calibration_coverage": cal.coverage, "calibration_agreement": cal.agreement,
               "by_judge": {j: [len(hs), round(sum(hs) / len(hs), 4)] for j, hs in by.items()}}
        out["targets"].append(row)
        split = ", ".join(f"{j} {k} ({a:.0%})" for j, (k, a) in row["by_judge"].items()) or "-"
        shown = "-" if agreement is None else f"{agreement:.1%}"
        print(f"{cal.target:>7.2f} {row['coverage']:>9.1%} {shown:>10} {str(row['held']):>11}  {split}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
