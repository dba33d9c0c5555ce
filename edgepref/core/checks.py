"""One check of a configuration value against its type and limits, for config dataclasses
(their fields' metadata), flags and command-line numbers alike. The limits a field may carry:
  ge, gt, le, lt  bounds of a number (a float must also be finite: run.json is JSON, no NaN)
  choices         the names allowed (for a list: for each item)
  nonempty        text or a list that may not be empty
"""

from __future__ import annotations

import json
import math
import os
import operator
from dataclasses import fields, is_dataclass
from functools import cache
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

C_INT_MAX = 2**31 - 1  # llama.cpp takes token counts, threads and layers as C ints


def check_fields(obj: Any, where: str = "") -> None:
    """Check every field of config dataclass `obj` (and of the config dataclasses inside it)
    against its type and its metadata's limits. `where` names the table in messages ("[judge]")."""
    hints = _type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        check_value(f"{where} {f.name}".strip(), value, hint, f.metadata)
        if is_dataclass(hint):
            check_fields(value, f"[{f.name}]")
        elif get_origin(hint) is list and is_dataclass(get_args(hint)[0]):
            for i, item in enumerate(value, start=1):
                check_fields(item, f"[[{f.name}]] #{i}")


def check_value(name: str, value: Any, hint: Any, limits: Any = None, sep: str = " = ") -> None:
    """Raise ConfigError unless `value` fits type `hint` (str, int, float, bool, dict, a
    dataclass, list[X], X | None) and `limits` (a field's metadata). `name` is how the user
    wrote the key ("[judge] models", or "--max-tokens" with sep=" ")."""
    limits = limits or {}
    if not _fits(value, hint, limits):
        raise ConfigError(f"{name}{sep}{show_value(value)}: expected {_describe(hint, limits, value)}",
                          _fix(name, value, hint))


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, True), or (hint, False)."""
    if get_origin(hint) in (Union, UnionType) and NoneType in get_args(hint):
        rest = [a for a in get_args(hint) if a is not NoneType]
        return rest[0], True
    return hint, False


def _is_type(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is a subclass of int: `max_tokens = true` is not a number
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if get_origin(hint) is list:  # a string is not a list of names, however iterable
        return isinstance(value, (list, tuple)) and all(_is_type(v, get_args(hint)[0]) for v in value)
    if get_origin(hint) is dict:
        key, val = get_args(hint)
        return isinstance(value, dict) and all(_is_type(k, key) and _is_type(v, val) for k, v in value.items())
    return isinstance(value, hint)


def fits(value: Any, hint: Any) -> bool:
    """Whether `value` is of type `hint` (str, int, float, bool, dict, dict[K, V], list[X],
    X | None) as a setting's type is checked (a bool is not a number), for data read back."""
    hint, optional = _optional(hint)
    return optional if value is None else _is_type(value, hint)


def _fits(value: Any, hint: Any, limits: Any) -> bool:
    hint, optional = _optional(hint)
    if value is None:
        return optional
    if not _is_type(value, hint):
        return False
    if hint is float:  # an integer too large for a float would fail in the first sum
        try:
            if not math.isfinite(float(value)):
                return False
        except OverflowError:
            return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = (("ge", operator.ge), ("gt", operator.gt), ("le", operator.le), ("lt", operator.lt))
        if any(key in limits and not test(value, limits[key]) for key, test in bounds):
            return False
    if limits.get("nonempty") and isinstance(value, (str, list, tuple)) and not value:
        return False
    choices = limits.get("choices")
    if choices is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        return all(item in choices for item in items)
    return True


_ITEM_WORDS = {str: "text", int: "integers", float: "numbers", dict: "tables", bool: "true or false"}


def _describe(hint: Any, limits: Any, value: Any = None) -> str:
    """What a field allows, in words: "an integer >= 1 and <= 256", "a list of text". The C int
    ceiling is named only to a value above it."""
    hint, _ = _optional(hint)
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "text", dict: "a table"}
    choices = limits.get("choices")
    if get_origin(hint) is list:
        item = get_args(hint)[0]
        text = "a non-empty list" if limits.get("nonempty") else "a list"
        item, _ = _optional(item)
        text += (f" of {item.__name__} tables" if is_dataclass(item) else
                 f" of {_ITEM_WORDS.get(item, 'values')}")
        text += f", each one of: {', '.join(choices)}" if choices else ""
    elif get_origin(hint) is dict:
        text = "a table of tables"
    elif choices:
        text = f"one of: {', '.join(choices)}"
    elif hint is str and limits.get("nonempty"):
        text = "non-empty text"
    else:
        text = words.get(hint) or "a table"
    bounds = [f"{op} {limits[key]}" for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if key in limits and not (limits[key] == C_INT_MAX and _below_c_int(value))]
    return f"{text} {' and '.join(bounds)}" if bounds else text


def _below_c_int(value: Any) -> bool:
    return not isinstance(value, (int, float)) or value <= C_INT_MAX


def _fix(name: str, value: Any, hint: Any) -> str | None:
    """A hint for the usual slips: a string for a list, quotes around a number or a boolean."""
    hint, _ = _optional(hint)
    key = name.rsplit(" ", 1)[-1]
    if isinstance(value, str) and get_origin(hint) is list:
        return f"a list is written in brackets: {key} = [{json.dumps(value)}]"
    if isinstance(value, str) and hint in (int, float, bool):
        return "numbers and true/false are written without quotes"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and hint is bool:
        return "write true or false"
    return None


def show_value(value: Any) -> str:
    """A value as the user wrote it (TOML and JSON agree on strings, numbers, lists), cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def field_type(cls: type, name: str) -> tuple[Any, Any]:
    """(type, limits) of field `name` of config dataclass `cls`, for checking one value."""
    spec = next(f for f in fields(cls) if f.name == name)
    return _type_hints(cls)[name], spec.metadata


def check_path(name: str, value: Any, optional: bool = False) -> None:
    """Raise ConfigError unless `value` is a path (a non-empty str or an os.PathLike), or None
    when `optional`. `name` is the argument as the caller wrote it ("out_dir")."""
    if value is None and optional:
        return
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return
    raise ConfigError(f"{name} = {show_value(value)}: expected a path (a str or a pathlib.Path)"
                      + (", or None" if optional else ""))


def check_path_list(name: str, value: Any) -> list:
    """A list (or tuple) of paths, as a list; a single path is refused (iterating it would give
    its characters), as is anything else."""
    if isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} = {show_value(str(value))}: expected a list of paths, got one path",
                          f"pass [{show_value(str(value))}]")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} = {show_value(value)}: expected a list of paths")
    for i, item in enumerate(value):
        check_path(f"{name}[{i}]", item)
    return list(value)


def dataclass_problem(obj: Any, where: str = "") -> str | None:
    """Why a dataclass built from data read back (a records.jsonl row) has a field of the wrong
    type, or None; dataclasses inside lists are checked too. Types only, no limits."""
    for f in fields(obj):
        value, hint = getattr(obj, f.name), _type_hints(type(obj))[f.name]
        name = f"{where}{f.name}"
        if not _fits(value, hint, {}):
            return f"{name} is {show_value(value)}, not {_describe(hint, {})}"
        items = value if isinstance(value, list) else []
        for i, item in enumerate(items):
            if is_dataclass(item):
                problem = dataclass_problem(item, f"{name}[{i}].")
                if problem:
                    return problem
    return None

