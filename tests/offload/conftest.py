"""The offload tier: the engine with its layers on a GPU device, compared with the CPU.

Runs when llama.cpp has a GPU device to offload to: a Vulkan build with
GGML_VK_VISIBLE_DEVICES=0 (Mesa's software device here and in CI: scripts/vulkan_check.sh), or a
CUDA/Metal build on a real GPU (scripts/gpu_check.sh). Anywhere else, every test here is skipped
with the reason, unless EDGEPREF_OFFLOAD_TIER is set: then a missing device fails the tier
instead of skipping it, so a script that means to test offload cannot pass by testing nothing.

CPU references run in a subprocess (tests/offload/reference.py) with every GPU hidden, so the
same build serves both sides of a comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _offload_available() -> bool:
    from edgepref.backends.engine.handles import gpu_offload_supported

    return gpu_offload_supported()


@pytest.fixture(autouse=True)
def requires_offload() -> None:
    if _offload_available():
        return
    message = ("this llama.cpp build has no GPU device to offload to: run scripts/vulkan_check.sh "
               "(software Vulkan, any machine) or scripts/gpu_check.sh on a GPU")
    if os.environ.get("EDGEPREF_OFFLOAD_TIER"):
        pytest.fail(f"EDGEPREF_OFFLOAD_TIER is set but {message}")
    pytest.skip(message)


def cpu_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GGML_VK_VISIBLE_DEVICES", "EDGEPREF_LLAMA_LOG")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # on a CUDA build: no device, so every layer on the CPU
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_reference(*args: str, stdin: object = None) -> object:
    proc = subprocess.run([sys.executable, "-m", "tests.offload.reference", *args], cwd=ROOT, env=cpu_env(),
                          input=None if stdin is None else json.dumps(stdin), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"CPU reference {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


class Measured:
    """What the tier measured (agreement with the CPU, largest differences), written as JSON to
    $EDGEPREF_OFFLOAD_REPORT at the end of the session: the figures the docs quote."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    def __setitem__(self, key: str, value: object) -> None:
        self.rows[key] = value


@pytest.fixture(scope="session")
def measured():
    m = Measured()
    yield m
    path = os.environ.get("EDGEPREF_OFFLOAD_REPORT")
    if path:
        Path(path).write_text(json.dumps(m.rows, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def cpu():
    """cpu(scenario) -> that scenario's CPU result (computed once per session)."""
    done: dict[str, object] = {}

    def get(name: str):
        if name not in done:
            done[name] = run_reference(name)
        return done[name]

    return get
