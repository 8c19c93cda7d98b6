"""Stage `export`: a deci or stock solve's checkpoint written as engine formats, keyed and reused like the other
artifacts; a free solve refused with one line (and skipped by the run chain)."""

import json

import pytest
import torch
from conftest import compose_config, modegpt, modegpt_error, tiny_overrides

from pipeline.artifacts import ArtifactPaths, read_manifest
from pipeline.assembly import load_compressed
from pipeline.export.gguf_file import expected_gguf_shapes, gguf_metadata, gguf_tensor_shapes
from pipeline.export.layout import engine_model
from stages import assemble, capture, export, solve, tokenize

DECI = {"compression.shape": "deci", "compression.round_to": 16, "compression.curve_scale": "residual",
        "compression.rate": 0.3, "export.quantize": "[]"}


def _solved(tmp_path, tiny_model_dirs, **extra):
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{**DECI, **extra}))
    for stage in (tokenize, capture, solve, assemble):
        stage.run(cfg)
    return cfg


def test_deci_export_writes_a_gguf_of_the_checkpoint_and_is_reused(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    cfg = _solved(tmp_path, tiny_model_dirs, **{"export.formats": "[gguf]", "export.gguf_dtype": "f32"})
    target = export.run(cfg)
    em = engine_model(load_compressed(ArtifactPaths(cfg).checkpoint()))
    gguf = target / "model-f32.gguf"
    assert gguf_tensor_shapes(gguf) == expected_gguf_shapes(em)
    assert gguf_metadata(gguf)["deci.feed_forward_length"] == em.mlp_widths
    manifest = read_manifest(target)
    assert manifest.extra["mlp_widths"] == em.mlp_widths and manifest.extra["files"] == ["model-f32.gguf"]
    monkeypatch.setattr(export, "write_gguf", lambda *a, **k: pytest.fail("a current export was rewritten"))
    assert export.run(cfg) == target


def test_stock_export_writes_the_familys_class(tmp_path, tiny_model_dirs) -> None:
    from transformers import AutoModelForCausalLM

    cfg = _solved(tmp_path, tiny_model_dirs, **{"compression.shape": "stock"})
    target = export.run(cfg)
    assert json.loads((target / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    stock = AutoModelForCausalLM.from_pretrained(target / "hf")
    compressed = load_compressed(ArtifactPaths(cfg).checkpoint())
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        assert torch.allclose(stock(ids).logits, compressed(ids).logits, atol=1e-5)
    assert (target / "model-f16.gguf").is_file()
    assert gguf_metadata(target / "model-f16.gguf")["general.architecture"] == "llama"


def test_free_solve_is_refused_and_the_run_chain_skips_export(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.shape": "free", "compression.allocation": "bi", "eval.tasks": "[piqa]", "eval.limit": 2,
        "eval.perplexity_max_windows": 1})
    line = modegpt_error(["export", *overrides], monkeypatch)
    assert "compression.shape=free cuts inside attention heads" in line and "compression.shape=deci" in line
    modegpt(["run", *overrides], monkeypatch)
    assert not ArtifactPaths(compose_config(overrides)).export().exists()


def test_quantize_without_llama_cpp_is_skipped_and_recorded(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    monkeypatch.setattr(export, "quantizer", lambda: None)
    cfg = _solved(tmp_path, tiny_model_dirs, **{"export.formats": "[gguf]", "export.quantize": "[q8_0]"})
    target = export.run(cfg)
    assert read_manifest(target).config["quantize"] == [] and not (target / "model-q8_0.gguf").exists()
