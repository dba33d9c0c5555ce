"""CPU references for the offload tier, in a process of their own with no GPU device visible.

    python -m tests.offload.reference SCENARIO            # the scenario on the CPU, as JSON
    python -m tests.offload.reference forced MODEL < seqs  # teacher-forced gaps, as JSON

`forced` reads [[prompt token ids, generated token ids], ...] and, for each sequence, feeds the
prompt and the generated tokens through llama-cpp-python's own `Llama` on the CPU and returns,
per generated token, how far its logit is below the CPU's best logit at that position (0 when
the GPU's greedy token is also the CPU's). The caller runs this with GGML_VK_VISIBLE_DEVICES
unset, so a Vulkan-enabled build finds no device and runs every layer on the CPU.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def forced_gaps(model: str, seqs: list[list[list[int]]]) -> list[list[float]]:
    from edgepref.backends.engine.handles import load_high_level_llama
    from edgepref.models.modelfiles import resolve_model_path

    llm = load_high_level_llama(resolve_model_path(model), n_ctx=1024, n_gpu_layers=0, logits_all=True)
    out = []
    for prompt, gen in seqs:
        llm.reset()
        llm.eval(prompt + gen)
        scores = np.asarray(llm.scores[len(prompt) - 1: len(prompt) - 1 + len(gen)])
        out.append((scores.max(axis=1) - scores[np.arange(len(gen)), gen]).round(4).tolist())
    return out


def main() -> None:
    from edgepref.backends.engine.handles import gpu_offload_supported

    if gpu_offload_supported():
        sys.exit("the CPU reference sees a GPU device: unset GGML_VK_VISIBLE_DEVICES (and CUDA_VISIBLE_DEVICES='')")
    if sys.argv[1] == "forced":
        print(json.dumps(forced_gaps(sys.argv[2], json.load(sys.stdin))))
        return
    from .scenarios import SCENARIOS

    print(json.dumps(SCENARIOS[sys.argv[1]](0)))


if __name__ == "__main__":
    main()
