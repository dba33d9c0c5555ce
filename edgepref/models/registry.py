"""The model registry: the entries of models.toml files (the package's, the user's, one given on
the command line) and a pipeline config's [models.NAME] tables over them. Turning an entry
into a local file is edgepref.models.modelfiles'; platform directories are edgepref.core.paths'.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..core.errors import ConfigError, ModelNotFoundError
from ..core.paths import config_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_MODELS_FILE = Path(__file__).with_name("models.toml")


# The kinds of OpenAI-compatible server a model entry's `api` may name; backends/remote.py has
# one entry of its KINDS table for each (tests/test_remote.py checks they match).
API_KINDS = ("llama.cpp", "vllm", "openai")


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
    # false: never picked as the default rating judge ("auto"), only named or in a verdict chain
    auto_judge: bool = True
    embedded: bool = False
    extra: str = "models"  # embedded models: the edgepref extra that installs them
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
            auto_judge=bool(raw.get("auto_judge", True)),
            embedded=bool(raw.get("embedded", False)),
            extra=str(raw.get("extra", "models")),
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

def load_registry(models_file: str | Path | None = None, overrides: dict | None = None) -> Registry:
    """Package models.toml, then the user's models file, then $EDGEPREF_MODELS_FILE, then
    `models_file`, then `overrides` ({name: {field: value}}, a pipeline config's [models.NAME]
    tables); later wins, and an override changes only the fields it names."""
    entries = read_models_file(PACKAGE_MODELS_FILE)
    user_file = config_dir() / "models.toml"
    if user_file.is_file():
        entries.update(read_models_file(user_file))
    if os.environ.get("EDGEPREF_MODELS_FILE"):
        entries.update(read_models_file(Path(os.environ["EDGEPREF_MODELS_FILE"])))
    if models_file is not None:
        entries.update(read_models_file(Path(models_file)))
    for name, raw in (overrides or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f'[models."{name}"] must be a table')
        entries[name] = entry_with(entries.get(name), name, raw, "pipeline config")
    return Registry(entries)
