"""How much the HTML report of a run weighs at a given size: copies a run directory's
instructions (records and pairs, each under a new id) until it has N, writes the report, and
prints its size in MB with what the bytes are (data, plots, page).

The report gzips its data, and gzip would fold exact copies into almost nothing, so every copy
after the first has the words of each text shuffled (seeded): as many distinct texts as a real
run of that size, with the same words; word order lost makes them compress a little worse than
real text, so the figure errs on the heavy side.

    python scripts/report_weight.py out/ --pairs 1000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

from edgepref.ui.report import write_report


def _shuffled(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    rng.shuffle(words)
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path, help="a finished run directory (run.json, records.jsonl, pairs.jsonl)")
    ap.add_argument("--pairs", type=int, default=1000, help="how many written pairs the copy has")
    args = ap.parse_args()
    records = [json.loads(x) for x in (args.run_dir / "records.jsonl").read_text().splitlines() if x.strip()]
    pairs = {p["id"]: p for p in map(json.loads, (args.run_dir / "pairs.jsonl").read_text().splitlines())}
    if not pairs:
        raise SystemExit(f"{args.run_dir} has no pairs to copy")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "run.json").write_text((args.run_dir / "run.json").read_text())
        n_rec, n_pairs = 0, 0
        with open(out / "records.jsonl", "w") as rf, open(out / "pairs.jsonl", "w") as pf:
            k = 0
            while n_pairs < args.pairs:
                for r in records:
                    new_id = f"{r['id']}-{k}"
                    rng = random.Random(f"{new_id}")
                    copy = json.loads(json.dumps(r))
                    copy["id"] = new_id
                    if k:
                        copy["instruction"] = _shuffled(copy["instruction"], rng)
                        for c in copy["completions"]:
                            c["text"] = _shuffled(c["text"], random.Random(f"{new_id}:{c['id']}"))
                        for rt in copy["ratings"]:
                            rt["rationale"] = _shuffled(rt["rationale"], rng)
                    rf.write(json.dumps(copy) + "\n")
                    n_rec += 1
                    if r["id"] in pairs and n_pairs < args.pairs:
                        pair = {**pairs[r["id"]], "id": new_id, "prompt": copy["instruction"]}
                        texts = {c["id"]: c["text"] for c in copy["completions"]}
                        pair["chosen"] = texts.get(pair.get("completion_chosen"), pair["chosen"])
                        pair["rejected"] = texts.get(pair.get("completion_rejected"), pair["rejected"])
                        pf.write(json.dumps(pair) + "\n")
                        n_pairs += 1
                k += 1
        start = time.perf_counter()
        page = write_report(out).read_text(encoding="utf-8")
        seconds = time.perf_counter() - start
    data = len(re.search(r'<script id="run-data".*?</script>', page, re.S).group(0).encode())
    svg = sum(len(s.encode()) for s in re.findall(r"<svg\b.*?</svg>", page, re.S))
    total = len(page.encode())
    print(f"{n_pairs} pairs ({n_rec} instructions): report {total / 1e6:.2f} MB "
          f"(data {data / 1e6:.2f} MB, plots {svg / 1e6:.2f} MB, page {(total - data - svg) / 1e6:.2f} MB), "
          f"written in {seconds:.1f} s")


if __name__ == "__main__":
    main()
