"""compression.sequential: each layer's statistics taken on the outputs of the compressed layers below it."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, run_killed, tiny_overrides
from safetensors.torch import load_file

from pipeline.adapters import adapter_for
from pipeline.artifacts import ArtifactPaths, layer_file, read_manifest
from pipeline.assembly import build_compressed_model, identity_solutions
from pipeline.capture import LayerStats, LayerStatsCollector, stat_shapes
from pipeline.config import ConfigError, validate
from pipeline.dense import load_model
from pipeline.plan import LayerSolution
from pipeline.readers import load_solution, load_tokens, open_store
from pipeline.solving import layers
from stages import assemble, capture, solve, tokenize

COMPARED = ("attn_gram", "mlp_gram", "q_energy", "k_energy", "tokens")


def _sequential_cfg(tmp_path, tiny_model_dirs, family: str, **extra):
    overrides = tiny_overrides(tmp_path, tiny_model_dirs[family], family, **{
        "compression.sequential": "true", "compression.rate": 0.3, "compression.allocation": "error", **extra})
    cfg = compose_config(overrides)
    validate(cfg)
    tokenize.run(cfg)
    capture.run(cfg)
    return cfg, overrides


def _record_sums(monkeypatch) -> dict[int, dict[str, torch.Tensor]]:
    """The sums each layer's solve receives, recorded as the solve stage hands them over."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    original = layers.solve_layer

    def record(method, adapter, index, sums, *args):
        seen[index] = {n: t.clone() for n, t in sums.items()}
        return original(method, adapter, index, sums, *args)

    monkeypatch.setattr(layers, "solve_layer", record)
    return seen


def _compressed_below(cfg, family: str, solutions: list[LayerSolution], layer: int):
    """The assembled model whose layers below ``layer`` are the solve's and the rest dense (identity solutions),
    with its adapter, and the dense model's."""
    dense = load_model(cfg, ArtifactPaths(cfg).dense_model)
    adapter = adapter_for(dense, family)
    plans, mixed = identity_solutions(adapter)
    mixed[:layer] = solutions[:layer]
    plans[:layer] = [s.plan(0.0) for s in solutions[:layer]]
    model = build_compressed_model(dense, adapter, plans, mixed)
    return model, type(adapter)(model), adapter


def _naive_sums(cfg, family: str, solutions: list[LayerSolution], layer: int) -> dict[str, torch.Tensor]:
    """Layer ``layer``'s sums from one plain forward of the model compressed below ``layer``."""
    model, compressed, adapter = _compressed_below(cfg, family, solutions, layer)
    heads, shape = adapter.head_layout(), adapter.block_shape()
    stats = LayerStats.zeros(stat_shapes(shape.hidden_size, shape.intermediate_size, heads), "cpu")
    input_ids, _ = load_tokens(cfg)
    with torch.no_grad(), LayerStatsCollector(compressed.layer(layer), heads, stats) as collector:
        model(input_ids=input_ids, use_cache=False)
        collector.finish()
    return stats.as_dict()


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_sequential_sums_equal_a_naive_forward_through_the_compressed_layers(tmp_path, tiny_model_dirs, monkeypatch,
                                                                             family) -> None:
    cfg, _ = _sequential_cfg(tmp_path, tiny_model_dirs, family)
    seen = _record_sums(monkeypatch)
    target = solve.run(cfg)
    assert read_manifest(target).extra["sequential"] is True
    _, solutions, _ = load_solution(cfg)
    store, _ = open_store(cfg)
    assert sorted(seen) == list(range(len(solutions)))
    for layer in range(len(solutions)):
        naive = _naive_sums(cfg, family, solutions, layer)
        for name in COMPARED:
            torch.testing.assert_close(seen[layer][name], naive[name], rtol=1e-4, atol=1e-6 * float(
                naive[name].abs().max()), msg=lambda m, n=name, i=layer: f"layer {i} {n}: {m}")
        dense_sums = store.read_layer(layer)
        if layer == 0:  # nothing below it is compressed: the store's own statistics
            torch.testing.assert_close(seen[0]["mlp_gram"], dense_sums["mlp_gram"])
        else:
            assert not torch.allclose(seen[layer]["mlp_gram"], dense_sums["mlp_gram"], rtol=1e-3)
    assemble.run(cfg)


def test_sequential_capture_forms_products_at_the_stores_precision(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    # layer 0 sees the dense inputs: at the store's product precision its sums are the store's, bit for bit (a capture
    # at FP64 differs from a BF16-product store by BF16's rounding)
    cfg, _ = _sequential_cfg(tmp_path, tiny_model_dirs, "llama", **{"calibration.product_precision": "bf16"})
    seen = _record_sums(monkeypatch)
    solve.run(cfg)
    store, _ = open_store(cfg)
    stored = store.read_layer(0)
    for name in ("attn_gram", "mlp_gram", "mlp_in_gram", "o_in_gram"):
        assert torch.equal(seen[0][name], stored[name]), name


def test_sequential_solve_differs_from_the_cached_one_and_gets_its_own_artifact(tmp_path, tiny_model_dirs) -> None:
    cfg, overrides = _sequential_cfg(tmp_path, tiny_model_dirs, "llama")
    sequential = solve.run(cfg)
    cached = solve.run(compose_config([*overrides, "compression.sequential=false"]))
    assert sequential != cached
    first = [load_file(str(layer_file(d, 0)))["mlp_down"] for d in (sequential, cached)]
    last = [load_file(str(layer_file(d, 1)))["mlp_down"] for d in (sequential, cached)]
    torch.testing.assert_close(first[0], first[1])  # layer 0 sees the same inputs either way
    assert not torch.allclose(last[0], last[1])


def test_killed_sequential_solve_resumes_to_the_same_factors(tmp_path, tiny_model_dirs) -> None:
    cfg, overrides = _sequential_cfg(tmp_path / "a", tiny_model_dirs, "llama")
    assert run_killed("solve", "pipeline.solving.layers", "solve_layer", overrides, on_call=1) == -9
    target = ArtifactPaths(cfg).solve()
    assert layer_file(target, 0).exists() and not layer_file(target, 1).exists()
    solve.run(cfg)  # resumes: layer 0 is replayed from its file, layer 1 captured on its output
    whole, _ = _sequential_cfg(tmp_path / "b", tiny_model_dirs, "llama")
    uninterrupted = solve.run(whole)
    for i in range(2):
        got, want = load_file(str(layer_file(target, i))), load_file(str(layer_file(uninterrupted, i)))
        assert got.keys() == want.keys()
        for name in got:
            assert torch.equal(got[name], want[name]), (i, name)


def test_sequential_is_refused_for_weights_only_methods(tmp_path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.sequential": "true", "compression.method": "weight_svd", "compression.allocation": "uniform"}))
    with pytest.raises(ConfigError, match=r"compression.sequential=True is invalid: expected false with "
                                          r"compression.method=weight_svd"):
        validate(cfg)


def test_sequential_whitened_svd_solves(tmp_path, tiny_model_dirs) -> None:
    cfg, _ = _sequential_cfg(tmp_path, tiny_model_dirs, "llama", **{
        "compression.method": "whitened_svd", "compression.allocation": "uniform"})
    target = solve.run(cfg)
    assert read_manifest(target).extra["sequential"] is True
