"""The field's baselines as registered methods: ShortGPT layer removal by Block Influence and whitened (SVD-LLM)
SVD; both solve from the store at equal parameter count and are evaluated in memory."""

import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, compose_config, tiny_overrides
from safetensors.torch import load_file

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactError, ArtifactPaths, layer_file, read_json, read_manifest
from pipeline.dense import load_model
from pipeline.methods import method_named
from pipeline.methods.layer_removal import blocks_to_remove
from pipeline.methods.whitened_svd import INPUT_GRAM
from pipeline.modegpt import output_error
from pipeline.readers import load_tokens, open_store
from stages import capture, solve, tokenize


def _captured(tmp_path: Path, model_dir: Path, family: str) -> list[str]:
    overrides = tiny_overrides(tmp_path, model_dir, family)
    cfg = compose_config(overrides)
    tokenize.run(cfg)
    capture.run(cfg)
    return overrides


def test_blocks_to_remove_takes_the_lowest_block_influence_until_the_rate_is_reached() -> None:
    bi = torch.tensor([0.9, 0.1, 0.3, 0.05, 0.2, 0.1], dtype=torch.float64)
    assert blocks_to_remove(bi, 0.3) == [3, 5]  # ceil(1.8) = 2 blocks; the 0.1 tie: the later block first
    assert blocks_to_remove(bi, 0.5) == [1, 3, 5]
    assert len(blocks_to_remove(torch.rand(30), 0.25)) == 8 and len(blocks_to_remove(torch.rand(30), 0.1)) == 3
    assert blocks_to_remove(bi, 0.0) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_removal_drops_whole_low_influence_blocks(tmp_path, tiny_model_dirs, family) -> None:
    overrides = _captured(tmp_path, tiny_model_dirs[family], family)
    cfg = compose_config([*overrides, "compression.method=layer_removal", "compression.allocation=bi",
                          "compression.sequential=false", "compression.rate=0.3"])
    target = solve.run(cfg)
    plan = read_json(target / "plan.json")
    removed = [i for i, layer in enumerate(plan["layers"]) if layer["sparsity"] == 1.0]
    assert removed == [min(range(3), key=lambda i: (plan["block_influence"][i], -i))]
    assert read_manifest(target).extra["achieved_block_rate"] >= 0.3  # one of three blocks
    dense = load_model(cfg, ArtifactPaths(cfg).dense_model)
    model = method_named("layer_removal").in_memory_model(dense, family, target)
    assert model.config.num_hidden_layers == len(adapter_for(model, family).decoder_layers()) == 2
    assert len(adapter_for(dense, family).decoder_layers()) == 3  # the dense model is left alone
    params = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in model.parameters())
    assert params == read_manifest(target).extra["dense_params"] - read_manifest(target).extra["compressed_params"]
    ids = torch.randint(0, dense.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
        model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)  # a KV cache over the renumbered blocks


@pytest.mark.parametrize("family", FAMILIES)
def test_whitened_svd_meets_the_rate_with_a_lower_output_error_than_weight_svd(tmp_path, tiny_model_dirs,
                                                                               family) -> None:
    overrides = _captured(tmp_path, tiny_model_dirs[family], family)
    runs = {m: solve.run(compose_config([*overrides, f"compression.method={m}", "compression.allocation=uniform",
                                         "compression.sequential=false", "compression.rate=0.3"]))
            for m in ("weight_svd", "whitened_svd")}
    rates = {m: read_manifest(t).extra["achieved_block_rate"] for m, t in runs.items()}
    assert rates["whitened_svd"] == rates["weight_svd"] and abs(rates["whitened_svd"] - 0.3) < 0.05
    cfg = compose_config(overrides)
    store, _ = open_store(cfg)
    dense = load_model(cfg, ArtifactPaths(cfg).dense_model)
    for index, layer in enumerate(adapter_for(dense, family).layers()):
        sums = store.read_layer(index)
        factors = {m: load_file(str(layer_file(t, index))) for m, t in runs.items()}
        for name, gram in INPUT_GRAM.items():
            if getattr(layer, name) is None:
                continue
            w, corr = getattr(layer, name).weight.detach().double().T, sums[gram] / sums["tokens"]
            err = {m: float(output_error(w, f[f"{name}.a"] @ f[f"{name}.b"], corr)) for m, f in factors.items()}
            assert err["whitened_svd"] <= err["weight_svd"] * (1 + 1e-9), (index, name, err)
    # and the whole model's output on the calibration windows is closer to the dense model's
    ids, _ = load_tokens(cfg)
    with torch.no_grad():
        ref = dense(ids, use_cache=False).logits
        gap = {m: float((method_named(m).in_memory_model(dense, family, t)(ids, use_cache=False).logits - ref)
                        .square().mean()) for m, t in runs.items()}
    assert gap["whitened_svd"] < gap["weight_svd"], gap


def test_whitened_svd_asks_for_a_recapture_on_a_store_from_before_its_statistics(tmp_path, tiny_model_dirs) -> None:
    overrides = _captured(tmp_path, tiny_model_dirs["llama"], "llama")
    for record in (ArtifactPaths(compose_config(overrides)).store / "layers").glob("*.json"):
        doc = json.loads(record.read_text())
        for name in ("mlp_in_gram", "o_in_gram"):
            del doc["checksums"][name]  # as a store captured before these statistics existed
        record.write_text(json.dumps(doc))
    solve.run(compose_config(overrides))  # MoDeGPT does not need them
    with pytest.raises(ArtifactError, match=r"lacks mlp_in_gram, o_in_gram .*overwrite=\[capture\]"):
        solve.run(compose_config([*overrides, "compression.method=whitened_svd", "compression.allocation=uniform",
                                  "compression.sequential=false"]))
