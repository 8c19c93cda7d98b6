"""GGUF files of engine-shaped models, read back with the gguf package (no engine needed): what llama.cpp's loader
checks (architecture, per-layer widths, tensor shapes, vocabulary size) and the q/k row order it rotates."""

from pathlib import Path

import pytest
import torch

from pipeline.export.gguf_file import (
    _interleave_pairs,
    expected_gguf_shapes,
    gguf_metadata,
    gguf_tensor_shapes,
    write_gguf,
)
from pipeline.export.layout import ExportError, engine_model
from pipeline.tiny import byte_tokenizer, tiny_engine_shaped


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    byte_tokenizer().save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_mixed_widths_write_a_deci_file_llama_cpp_can_size(tmp_path, tokenizer_dir, model_type) -> None:
    em = engine_model(tiny_engine_shaped(model_type, [32, 96, 64]))
    path = write_gguf(em, tmp_path / "m.gguf", "f16", tokenizer_dir)
    meta = gguf_metadata(path)
    assert meta["general.architecture"] == "deci"
    assert meta["deci.feed_forward_length"] == [32, 96, 64]
    assert meta["deci.attention.head_count_kv"] == [2, 2, 2]
    assert meta["deci.attention.key_length"] == meta["deci.rope.dimension_count"] == 16
    assert gguf_tensor_shapes(path) == expected_gguf_shapes(em)
    assert ("blk.0.attn_q.bias" in gguf_tensor_shapes(path)) == (model_type == "qwen2")


def test_uniform_widths_use_the_familys_architecture(tmp_path, tokenizer_dir) -> None:
    for model_type, arch in (("llama", "llama"), ("qwen2", "qwen2")):
        em = engine_model(tiny_engine_shaped(model_type, [64, 64, 64]))
        meta = gguf_metadata(write_gguf(em, tmp_path / f"{model_type}.gguf", "f32", tokenizer_dir))
        assert meta["general.architecture"] == arch and meta[f"{arch}.feed_forward_length"] == 64


def test_vocabulary_is_padded_to_the_embedding(tmp_path, tokenizer_dir) -> None:
    from gguf import GGUFReader

    em = engine_model(tiny_engine_shaped("llama", [32, 96, 64]))
    reader = GGUFReader(write_gguf(em, tmp_path / "m.gguf", "f32", tokenizer_dir))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == em.config["vocab_size"] == 272  # 258 byte tokens + specials, padded
    assert reader.fields["tokenizer.ggml.merges"].data  # llama.cpp refuses a BPE vocabulary without the key


def test_qk_rows_are_interleaved_per_head() -> None:
    # head_dim 4: HF rotates halves (x0, x1 | x2, x3) as pairs (0, 2), (1, 3); llama.cpp rotates (0, 1), (2, 3)
    rows = torch.arange(8.0).unsqueeze(1)  # 2 heads
    assert _interleave_pairs(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_a_bad_dtype_is_refused(tmp_path, tokenizer_dir) -> None:
    em = engine_model(tiny_engine_shaped("llama", [32, 96, 64]))
    with pytest.raises(ExportError, match="GGUF dtype 'q4' is invalid: expected one of f32, f16"):
        write_gguf(em, tmp_path / "m.gguf", "q4", tokenizer_dir)
    assert not (tmp_path / "m.gguf").exists()
