"""Errors that carry a hint: what was tried, why it failed, what to do next."""

from __future__ import annotations


class EdgeprefError(Exception):
    """Base error. `hint` is the next step for the user (a command, a setting to change)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ModelNotFoundError(EdgeprefError):
    """A model name or path could not be turned into a local GGUF file."""


class IntegrityError(EdgeprefError):
    """A model file does not have the size or sha256 that the registry says it should."""


class EngineError(EdgeprefError):
    """llama.cpp could not load a model or run a request."""


class InputError(EdgeprefError):
    """The input data cannot be used (missing column, unreadable file)."""


class ConfigError(EdgeprefError):
    """A config file or option is invalid."""
