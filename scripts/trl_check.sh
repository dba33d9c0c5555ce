#!/usr/bin/env bash
# TRL's DPOTrainer takes one step on edgepref's pairs: the trainer check, in a venv of its own.
#
#   bash scripts/trl_check.sh OUT_DIR_OR_PAIRS.jsonl... [--max-length N] [--threads N] [--gguf PATH]
#
# torch, trl, transformers, datasets, gguf and accelerate are no dependencies of edgepref, so they
# go into a separate venv ($TRL_VENV, default .trl-venv in the repo root; a .gitignore inside it
# keeps git from seeing it), never into edgepref's own. The first run installs them (a few
# minutes); later runs reuse the venv while the pins below are unchanged. The check itself,
# scripts/trl_check.py, needs no network: the model is edgepref's embedded SmolLM2-135M GGUF.
#
# torch comes from PyTorch's CPU index when it answers (a 200 MB wheel); where it does not, from
# PyPI, whose Linux wheel is the CUDA build (it runs on the CPU too, but pulls in several GB).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRL_VENV:-$here/.trl-venv}"
python="${PYTHON:-python3}"

# The versions this check passed with (see the check's notes in docs); change them together.
TORCH=2.13.0
PINS=(trl==1.16.0 transformers==5.25.0 datasets==5.2.0 gguf==0.19.0 accelerate==1.16.0)

if [ "$#" -eq 0 ]; then
    echo "usage: bash scripts/trl_check.sh RUN_DIR_OR_PAIRS_JSONL... [--max-length N] [--threads N] [--gguf PATH]" >&2
    exit 2
fi

stamp="$venv/.trl-check-pins"
want="torch==$TORCH ${PINS[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "trl_check.sh: $python is older than 3.10 (set PYTHON=...)" >&2; exit 2; }
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    echo '*' > "$venv/.gitignore"
    pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
    echo "trl_check.sh: installing torch $TORCH (CPU) and ${PINS[*]} into $venv"
    if ! nice -n 10 "${pip[@]}" --timeout 30 --retries 1 --index-url https://download.pytorch.org/whl/cpu "torch==$TORCH"; then
        echo "trl_check.sh: PyTorch's CPU index did not serve torch $TORCH; taking PyPI's (the CUDA build: large)"
        nice -n 10 "${pip[@]}" "torch==$TORCH"
    fi
    nice -n 10 "${pip[@]}" "torch==$TORCH" "${PINS[@]}"
    echo "$want" > "$stamp"
fi

exec nice -n 10 "$venv/bin/python" "$here/scripts/trl_check.py" "$@"
