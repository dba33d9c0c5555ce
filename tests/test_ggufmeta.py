"""ggufmeta: the header reader, on the real embedded GGUFs and on hand-built files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edgepref.core.errors import EdgeprefError
from edgepref.models.ggufmeta import GgufArray, read_gguf_metadata, summarize_gguf
from edgepref.models.modelfiles import resolve_model_path
from edgepref.models.registry import load_registry


def test_smollm2_summary() -> None:
    path = resolve_model_path("smollm2-135m")
    summary = summarize_gguf(path)
    assert summary.architecture == "llama"
    assert summary.context_length == 8192
    assert summary.n_layers == 30
    assert summary.embedding_length == 576
    assert summary.file_type == "Q4_1"  # matches the quant models.toml claims
    assert summary.size_bytes == load_registry().get("smollm2-135m").size_bytes
    assert summary.has_chat_template and summary.chat_template


def test_qwen_summary() -> None:
    path = resolve_model_path("qwen2.5-coder-0.5b")
    summary = summarize_gguf(path)
    assert summary.architecture == "qwen2"
    assert summary.context_length == 32768
    assert summary.n_layers == 24
    assert summary.file_type == "Q4_K_M"
    assert summary.has_chat_template
    assert "<|im_start|>" in (summary.chat_template or "")
    assert summary.tensor_count > 0


def test_qwen_metadata_skips_big_arrays() -> None:
    meta = read_gguf_metadata(resolve_model_path("qwen2.5-coder-0.5b"))
    tokens = meta["tokenizer.ggml.tokens"]
    assert isinstance(tokens, GgufArray)
    assert tokens.item_type == "string" and tokens.length == 151936
    # keys after the skipped arrays were still read correctly
    assert meta["tokenizer.ggml.eos_token_id"] == 151645
    assert meta["general.quantization_version"] == 2


def test_every_value_type_round_trips(tmp_path: Path, make_gguf) -> None:
    meta = {
        "u8": (0, struct.pack("<B", 200)),
        "i8": (1, struct.pack("<b", -5)),
        "u16": (2, struct.pack("<H", 60000)),
        "i16": (3, struct.pack("<h", -300)),
        "u32": 4_000_000_000,
        "i32": (5, struct.pack("<i", -70000)),
        "f32": 0.5,
        "flag": True,
        "text": "héllo",
        "u64": (10, struct.pack("<Q", 2**40)),
        "i64": -(2**40),
        "f64": (12, struct.pack("<d", 1.25)),
        "small": [1, 2, 3],
        "nested": [["a", "b"], ["c"]],
        "empty": [],
        "big_ints": list(range(1000)),
        "big_strings": [f"tok{i}" for i in range(500)],
        "after": "still read",
    }
    got = read_gguf_metadata(make_gguf("all.gguf", meta))
    assert got["u8"] == 200 and got["i8"] == -5 and got["u16"] == 60000 and got["i16"] == -300
    assert got["u32"] == 4_000_000_000 and got["i32"] == -70000 and got["f32"] == 0.5
    assert got["flag"] is True and got["text"] == "héllo"
    assert got["u64"] == 2**40 and got["i64"] == -(2**40) and got["f64"] == 1.25
    assert got["small"] == [1, 2, 3] and got["nested"] == [["a", "b"], ["c"]] and got["empty"] == []
    assert got["big_ints"] == GgufArray("uint32", 1000)
    assert got["big_strings"] == GgufArray("string", 500)
    assert got["after"] == "still read"
    assert list(got) == list(meta)  # file order kept


def test_summary_of_a_tiny_file(make_gguf) -> None:
    summary = summarize_gguf(make_gguf(version=2, tensor_count=7))
    assert (summary.architecture, summary.context_length, summary.n_layers) == ("llama", 2048, 2)
    assert summary.file_type == "Q4_K_M" and summary.version == 2 and summary.tensor_count == 7
    assert summary.has_chat_template and summary.name == "tiny test model"


def test_missing_keys_give_none(make_gguf) -> None:
    summary = summarize_gguf(make_gguf(metadata={"general.architecture": "mamba"}))
    assert summary.architecture == "mamba"
    assert summary.context_length is None and summary.n_layers is None
    assert not summary.has_chat_template and summary.chat_template is None
    assert summary.file_type is None


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("hello, this is not a model")
    with pytest.raises(EdgeprefError, match="not a GGUF file"):
        summarize_gguf(path)


@pytest.mark.parametrize("content", [b"", b"GG"])
def test_empty_or_tiny_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(EdgeprefError, match="not a GGUF file"):
        read_gguf_metadata(path)


def test_truncated_header(tmp_path: Path) -> None:
    real = resolve_model_path("smollm2-135m")
    cut = tmp_path / "cut.gguf"
    with open(real, "rb") as fh:
        cut.write_bytes(fh.read(2000))  # inside the key/values (the token list is long)
    with pytest.raises(EdgeprefError, match="truncated"):
        read_gguf_metadata(cut)


def test_unsupported_version(make_gguf) -> None:
    with pytest.raises(EdgeprefError, match="version 1"):
        read_gguf_metadata(make_gguf(version=1))


def test_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    with pytest.raises(EdgeprefError, match="big-endian"):
        read_gguf_metadata(path)


def test_corrupt_string_length(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**60))
    with pytest.raises(EdgeprefError, match="corrupt"):
        read_gguf_metadata(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeprefError, match="no such file"):
        read_gguf_metadata(tmp_path / "nope.gguf")
