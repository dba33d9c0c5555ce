"""The wheel carries everything the code reads: built from a copy of this tree, installed into a
fresh venv, it answers `edgepref --version` and `edgepref models list` and reads every packaged
file (models file, shipped calibration and self-preference figures, prompt templates, report
page). A file left out of the wheel fails here, not on a user's machine.

The fresh venv holds the wheel alone; its dependencies (llama-cpp-python takes minutes to build)
are borrowed from the running interpreter's site-packages through a .pth line, which sys.path
puts after the venv's own site-packages, so `edgepref` is imported from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

READ_EVERY_FILE = """
import json, jinja2, edgepref
from edgepref.judging.calibration import read_calibration
from edgepref.judging.compare import shipped_self_preference
from edgepref.models.registry import load_registry
from edgepref.prompts import PACKAGE_PROMPTS_DIR
from edgepref.ui.report import PAGE
env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(PACKAGE_PROMPTS_DIR)))
templates = sorted(p.name for p in PACKAGE_PROMPTS_DIR.glob("*.jinja2"))
print(json.dumps({
    "file": edgepref.__file__,
    "models": len(load_registry().entries),
    "recipe": read_calibration(None).recipe,
    "self_preference": len(shipped_self_preference()),
    "templates": templates,
    "parsed": all(env.get_template(name) is not None for name in templates),
    "page": jinja2.Environment().parse(PAGE.read_text()) is not None,
}))
"""


def leftovers(directory: str, names: list[str]) -> set[str]:
    """What a checkout holds beside its sources: builds, venvs, caches, run outputs."""
    skip = {n for n in names if n in {".git", "build", "__pycache__", ".pytest_cache", "gpu_carry", ".gpu_build"}
            or n.endswith((".egg-info", ".cache")) or n.startswith(".venv") or n == ".vulkan-venv"}
    if Path(directory) == ROOT:
        skip |= {n for n in names if n.startswith("out") and (ROOT / n).is_dir()}
    return skip


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # a copy of the sources alone: setuptools would reuse files a build left in ./build
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=leftovers)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = work.glob("edgepref-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # this interpreter's pip installs into the new venv: no pip of its own to set up there
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    borrowed = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (Path(purelib) / "borrowed-dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    return venv


def run_in(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
    return proc.stdout


def test_the_installed_wheel_runs_and_reads_its_files(fresh_venv: Path, tmp_path: Path) -> None:
    exe = str(fresh_venv / "bin" / "edgepref")
    assert "0.1.0" in run_in(exe, "--version", cwd=tmp_path)
    listing = run_in(exe, "models", "list", cwd=tmp_path)
    assert "smollm2-135m" in listing and "qwen2.5-coder-0.5b" in listing
    seen = json.loads(run_in(str(fresh_venv / "bin" / "python"), "-c", READ_EVERY_FILE, cwd=tmp_path))
    assert Path(seen["file"]).is_relative_to(fresh_venv), seen["file"]  # the wheel's code, not this tree's
    shipped = sorted(p.name for p in (ROOT / "edgepref" / "prompts").glob("*.jinja2"))
    assert seen["templates"] == shipped and seen["parsed"]
    assert seen["models"] > 2 and seen["recipe"] and seen["page"] and seen["self_preference"] > 0
