"""Read a GGUF file's metadata header without llama.cpp.

A GGUF file opens with: magic b"GGUF", a uint32 version, a uint64 tensor count, a uint64
key/value count, then that many typed key/values, then the tensor infos and the weights.
This module reads only the key/values (GGUF v2 and v3, little-endian) and stops before the
tensor infos, so `edgepref models info` answers in milliseconds even for a 5 GB file.

Large arrays (the tokenizer's 150k tokens, merges, scores) are skipped with seeks and
reported as a `GgufArray` (item type and length); small ones are returned as lists.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..core.errors import EdgeprefError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Arrays up to this many items are read into lists; longer ones are skipped.
SMALL_ARRAY_MAX = 64
# Keys and string values longer than this mean the header is corrupt, not that it is big
# (a chat template is a few KB; the longest real strings are well under a MB).
_MAX_STRING = 16 << 20

# value type id -> (name, struct format) for fixed-size scalars
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}
_STRING = 8
_ARRAY = 9

# general.file_type values (llama.cpp's llama_ftype); gaps are retired types.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}  # fmt: skip


@dataclass(frozen=True)
class GgufArray:
    """A metadata array too long to be worth reading (tokens, merges, scores)."""

    item_type: str
    length: int


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    architecture: str | None
    name: str | None
    context_length: int | None
    n_layers: int | None
    embedding_length: int | None
    has_chat_template: bool
    chat_template: str | None
    file_type: str | None
    size_bytes: int
    version: int
    tensor_count: int


class _Truncated(Exception):
    pass


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def _unpack(fh: BinaryIO, fmt: str) -> int | float | bool:
    return struct.unpack(fmt, _read_exact(fh, struct.calcsize(fmt)))[0]


def _read_string(fh: BinaryIO) -> str:
    length = int(_unpack(fh, "<Q"))
    if length > _MAX_STRING:
        raise ValueError(f"a string of {length:,} bytes")
    return _read_exact(fh, length).decode("utf-8", errors="replace")


def _skip_string(fh: BinaryIO) -> None:
    length = int(_unpack(fh, "<Q"))
    if length > _MAX_STRING:
        raise ValueError(f"a string of {length:,} bytes")
    fh.seek(length, 1)


def _type_name(type_id: int) -> str:
    if type_id in _SCALARS:
        return _SCALARS[type_id][0]
    return {_STRING: "string", _ARRAY: "array"}.get(type_id, f"type {type_id}")


def _read_value(fh: BinaryIO, type_id: int) -> object:
    if type_id in _SCALARS:
        return _unpack(fh, _SCALARS[type_id][1])
    if type_id == _STRING:
        return _read_string(fh)
    if type_id == _ARRAY:
        return _read_array(fh)
    raise ValueError(f"unknown value type {type_id}")


def _read_array(fh: BinaryIO) -> list[object] | GgufArray:
    item_type = int(_unpack(fh, "<I"))
    length = int(_unpack(fh, "<Q"))
    if length <= SMALL_ARRAY_MAX:
        return [_read_value(fh, item_type) for _ in range(length)]
    if item_type in _SCALARS:
        # Fixed-size items: one seek past all of them.
        fh.seek(length * struct.calcsize(_SCALARS[item_type][1]), 1)
    elif item_type == _STRING:
        for _ in range(length):
            _skip_string(fh)
    elif item_type == _ARRAY:
        for _ in range(length):
            _read_array(fh)  # nested arrays are rare; their lengths must still be walked
    else:
        raise ValueError(f"unknown array item type {item_type}")
    return GgufArray(_type_name(item_type), length)


def _read_header(fh: BinaryIO, path: Path) -> tuple[int, int, int]:
    magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise EdgeprefError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
            "pass a .gguf model file, or a name from `edgepref models list`",
        )
    raw_version = _read_exact(fh, 4)
    version = struct.unpack("<I", raw_version)[0]
    if version not in SUPPORTED_VERSIONS:
        if struct.unpack(">I", raw_version)[0] in SUPPORTED_VERSIONS:
            raise EdgeprefError(
                f"{path} is a big-endian GGUF file, which edgepref does not read",
                "use the little-endian build of this model",
            )
        raise EdgeprefError(
            f"{path} is GGUF version {version}; edgepref reads versions 2 and 3",
            "convert it with a recent llama.cpp, or download a newer GGUF of this model",
        )
    tensor_count, kv_count = struct.unpack("<QQ", _read_exact(fh, 16))
    return version, tensor_count, kv_count


def _read_all(path: Path) -> tuple[int, int, dict[str, object]]:
    try:
        fh = open(path, "rb")
    except FileNotFoundError as exc:
        raise EdgeprefError(f"no such file: {path}", "check the path") from exc
    except IsADirectoryError as exc:
        raise EdgeprefError(f"{path} is a directory, not a GGUF file") from exc
    except OSError as exc:
        raise EdgeprefError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        try:
            version, tensor_count, kv_count = _read_header(fh, path)
            metadata: dict[str, object] = {}
            for _ in range(kv_count):
                key = _read_string(fh)
                metadata[key] = _read_value(fh, int(_unpack(fh, "<I")))
        except _Truncated as exc:
            raise EdgeprefError(
                f"{path} ends inside its GGUF header: the file is truncated",
                "delete it and download it again",
            ) from exc
        except ValueError as exc:
            raise EdgeprefError(
                f"{path} has a corrupt GGUF header ({exc})", "delete it and download it again"
            ) from exc
    return version, tensor_count, metadata


def read_gguf_metadata(path: str | Path) -> dict[str, object]:
    """All metadata key/values of a GGUF file, in file order; long arrays as `GgufArray`.

    Raises EdgeprefError when the file is missing, not GGUF, or has a truncated header.
    """
    return _read_all(Path(path))[2]


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def summarize_gguf(path: str | Path) -> GgufSummary:
    """The few facts a user asks about a model file (architecture, context, layers, template)."""
    path = Path(path)
    version, tensor_count, meta = _read_all(path)
    arch = _str_or_none(meta.get("general.architecture"))
    template = _str_or_none(meta.get("tokenizer.chat_template"))
    ftype = _int_or_none(meta.get("general.file_type"))
    return GgufSummary(
        path=path,
        architecture=arch,
        name=_str_or_none(meta.get("general.name")),
        context_length=_int_or_none(meta.get(f"{arch}.context_length")) if arch else None,
        n_layers=_int_or_none(meta.get(f"{arch}.block_count")) if arch else None,
        embedding_length=_int_or_none(meta.get(f"{arch}.embedding_length")) if arch else None,
        has_chat_template=template is not None,
        chat_template=template,
        file_type=None if ftype is None else FILE_TYPES.get(ftype, f"type {ftype}"),
        size_bytes=path.stat().st_size,
        version=version,
        tensor_count=tensor_count,
    )
