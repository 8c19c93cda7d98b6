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


def test_quantize_without_llama_cpp_is_recorded_and_added_later(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    monkeypatch.setattr(export, "quantizer", lambda: None)
    cfg = _solved(tmp_path, tiny_model_dirs, **{"export.formats": "[gguf]", "export.quantize": "[q8_0]"})
    target = export.run(cfg)
    assert read_manifest(target).extra["not_quantized"] == ["q8_0"] and not (target / "model-q8_0.gguf").exists()
    assert export.run(cfg) == target  # reused as it is where llama.cpp is still missing
    # where llama.cpp is installed, the same export gets the quantized file
    monkeypatch.setattr(export, "quantizer", lambda: object())
    monkeypatch.setattr(export, "quantize_gguf", lambda src, out, quant: out.write_bytes(b"q") and out)
    assert export.run(cfg) == target
    manifest = read_manifest(target)
    assert manifest.extra["not_quantized"] == [] and "model-q8_0.gguf" in manifest.extra["files"]
    assert (target / "model-q8_0.gguf").is_file()
    other = compose_config([*tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{**DECI}),
                            "export.formats=[gguf]", "export.gguf_dtype=f32"])
    assert ArtifactPaths(other).export() != target  # other export settings: an export of their own


def test_a_local_gguf_file_is_a_model_source(tmp_path, tiny_model_dirs) -> None:
    """llama.cpp users have GGUF files: model.source=<file>.gguf is converted by prepare like the packaged one."""
    from pipeline.dense import load_model
    from pipeline.export.gguf_file import write_gguf
    from pipeline.tiny import byte_tokenizer, tiny_engine_shaped
    from stages import prepare

    dense = tiny_engine_shaped("llama", [96, 96, 96])  # full widths: the dense tiny Llama, as engines hold it
    byte_tokenizer().save_pretrained(tmp_path / "tok")
    source = write_gguf(engine_model(dense), tmp_path / "user.gguf", "f32", tmp_path / "tok")
    overrides = tiny_overrides(tmp_path / "run", tiny_model_dirs["llama"], "llama")
    cfg = compose_config([*overrides, f"model.source={source}"])
    target = prepare.run(cfg)
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    converted = load_model(cfg, target)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, dense(ids).logits, atol=1e-4)
    tokenize.run(cfg)  # later stages take the converted folder
    missing = compose_config([*overrides, f"model.source={tmp_path / 'nope.gguf'}"])
    with pytest.raises(Exception, match=r"model.source=.*nope.gguf' does not exist: expected a local .gguf file"):
        prepare.run(missing)


def test_run_exports_and_the_latest_view_links_checkpoint_and_export(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        **DECI, "eval.tasks": "[piqa]", "eval.limit": 2, "eval.perplexity_max_windows": 1})
    modegpt(["run", *overrides], monkeypatch)
    paths = ArtifactPaths(compose_config(overrides))
    checkpoint, exported = paths.latest_run / "checkpoint", paths.latest_run / "export"
    assert checkpoint.resolve() == paths.checkpoint().resolve() and (checkpoint / "config.json").is_file()
    assert exported.resolve() == paths.export().resolve() and (exported / "model-f16.gguf").is_file()
    assert json.loads(paths.pointer("export").read_text())["path"] == str(paths.export())
    modegpt(["gc", f"paths.root={paths.root}", str(paths.run_root)], monkeypatch)
    assert not checkpoint.is_symlink() and not exported.is_symlink()  # gc drops the links to what it removed
