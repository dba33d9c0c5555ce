#!/usr/bin/env bash
# Make the figures edgepref ships again, each file by the one command it records ("command"):
#
#   bash scripts/regenerate_figures.sh
#
#   edgepref/judging/calibration.json       the verdict chain's noise floors and thresholds
#   edgepref/judging/self_preference.json   the self-preference the run's notice quotes
#
# Needs the AlpacaEval dev pairs at ../shared/data/alpaca_eval_dev/judge_pairs.jsonl (not
# shipped) and both embedded judges (pip install -e '.[models,judge]'). Each command caches its
# requests beside the file it writes (*.json.cache, ignored by git): an interrupted run resumes,
# a finished one replays. Neither file holds a time, a date or a cache path, so on the same
# machine a rerun writes the same bytes; the noise floors depend on the CPU (calibration.json
# records its model name). Slow on a CPU: both judges judge 114 pairs, 16 of them on three more
# numerical paths, and answer up to 40 instructions themselves.
# tests/test_calibration.py checks that each line below is the command its file records.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

edgepref calibrate ../shared/data/alpaca_eval_dev/judge_pairs.jsonl --limit 114 --judge qwen2.5-coder-0.5b --judge qwen2.5-coder-1.5b --target 0.55..0.90 --risk 0.1 --noise-pairs 16 --out edgepref/judging/calibration.json
python scripts/self_preference.py ../shared/data/alpaca_eval_dev/judge_pairs.jsonl --measure qwen2.5-coder-0.5b:40:headings-ab,contrast-ab,repeat-ab,criteria-ab --measure qwen2.5-coder-1.5b:16:headings-ab --out edgepref/judging/self_preference.json
