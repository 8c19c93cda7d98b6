"""calibration.fisher stores loss-aware sums beside the plain ones; compression.fisher_mix solves from them."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, tiny_overrides
from safetensors.torch import load_file

from pipeline.artifacts import ArtifactPaths, layer_file, read_manifest
from pipeline.config import ConfigError, validate
from pipeline.readers import open_store
from stages import capture, solve, tokenize


def _run(tmp_path, tiny_model_dirs, **extra):
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **extra))
    validate(cfg)
    tokenize.run(cfg)
    capture.run(cfg)
    return cfg


def test_fisher_store_holds_both_and_mix_zero_solves_like_the_plain_store(tmp_path, tiny_model_dirs) -> None:
    plain = _run(tmp_path, tiny_model_dirs)
    fisher = _run(tmp_path, tiny_model_dirs, **{"calibration.fisher": "true"})
    assert ArtifactPaths(plain).store != ArtifactPaths(fisher).store  # both stores coexist
    plain_store, fisher_store = open_store(plain)[0], open_store(fisher)[0]
    assert read_manifest(ArtifactPaths(fisher).store).config["fisher"] == 2
    from pipeline.artifacts.inventory import scan

    assert not [e.key for e in scan(fisher) if e.old_layout]  # the -fisher run key is the current layout
    for layer in range(2):
        a, b = plain_store.read_layer(layer), fisher_store.read_layer(layer)
        added = ("attn_gram", "mlp_gram", "q_energy", "k_energy", "attn_weight", "mlp_weight")
        assert set(b) == set(a) | {f"fisher_{n}" for n in added}
        for name in a:
            torch.testing.assert_close(a[name], b[name])
        assert not torch.allclose(b["fisher_mlp_gram"], b["mlp_gram"])
    solved = {}
    for label, cfg, mix in (("plain", plain, 0.0), ("fisher0", fisher, 0.0), ("fisher1", fisher, 1.0)):
        job = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
            "calibration.fisher": str(cfg.calibration.fisher).lower(), "compression.fisher_mix": mix}))
        solved[label] = load_file(str(layer_file(solve.run(job), 1)))
    for name in solved["plain"]:
        torch.testing.assert_close(solved["fisher0"][name], solved["plain"][name])
    weighted, plain_down = solved["fisher1"]["mlp_down"], solved["plain"]["mlp_down"]  # widths may differ too
    assert weighted.shape != plain_down.shape or not torch.allclose(weighted, plain_down)


def test_fisher_mix_needs_a_fisher_capture(tmp_path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.fisher_mix": 0.5}))
    with pytest.raises(ConfigError, match=r"compression.fisher_mix=0.5 is invalid: expected 0 unless "
                                          r"calibration.fisher=true"):
        validate(cfg)


def test_sequential_solve_with_fisher_weights(tmp_path, tiny_model_dirs) -> None:
    cfg = _run(tmp_path, tiny_model_dirs, **{"calibration.fisher": "true", "compression.fisher_mix": 1.0,
                                             "compression.sequential": "true"})
    target = solve.run(cfg)
    extra = read_manifest(target).extra
    assert extra["sequential"] is True and all(e["mlp"] >= 0 for e in extra["errors"])


def test_fisher_and_kl_curve_scales_change_the_module_budget(tmp_path, tiny_model_dirs) -> None:
    import json

    _run(tmp_path, tiny_model_dirs, **{"calibration.fisher": "true"})
    plans = {}
    for scale in ("residual", "fisher", "kl", "kl-error"):
        cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
            "calibration.fisher": "true", "compression.curve_scale": scale, "compression.rate": 0.3}))
        validate(cfg)
        target = solve.run(cfg)
        plans[scale] = json.loads((target / "plan.json").read_text())["layers"]
        assert 0.3 - 1e-9 <= read_manifest(target).extra["achieved_block_rate"] < 0.35
    assert plans["residual"] != plans["fisher"] and plans["residual"] != plans["kl"]
    # The shaped probe measures the MLPs differently (on a 3-layer model the plans may still coincide).
    probes = [load_file(str(f))["sensitivity"] for f in ArtifactPaths(cfg).solves.glob("sensitivity-*.safetensors")]
    assert len(probes) == 2 and not torch.allclose(probes[0][:, 1], probes[1][:, 1], rtol=1e-3)
    assert len(list(ArtifactPaths(cfg).solves.glob("curves-*.safetensors"))) == 4  # one per scale


def test_fisher_curve_scale_needs_fisher_sums(tmp_path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.curve_scale": "fisher"}))
    with pytest.raises(ConfigError, match=r"compression.curve_scale='fisher' is invalid: .*calibration.fisher=true"):
        validate(cfg)
    # Other allocations do not read the curves' scale: the setting is inert there, not an error.
    validate(compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.curve_scale": "fisher", "compression.allocation": "bi"})))
