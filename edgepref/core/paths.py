"""Where edgepref and the Hugging Face Hub keep files on this platform, read from the
environment at call time: edgepref's config and cache directories, the Hub cache, offline mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path


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
