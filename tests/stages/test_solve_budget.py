"""Solve with one budget across modules (compression.allocation=error) and the solver variants, per family."""

import json

import pytest
from conftest import FAMILIES, compose_config, tiny_overrides

from pipeline.artifacts import ArtifactError, ArtifactPaths, read_manifest
from pipeline.methods.modegpt import probe
from stages import assemble, capture, solve, tokenize


@pytest.mark.parametrize("family", FAMILIES)
def test_module_budget_meets_the_target_and_assembles(tmp_path, tiny_model_dirs, family) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs[family], family, **{
        "compression.allocation": "error", "compression.mlp_refit": "shrink", "compression.rate": 0.3})
    cfg = compose_config(overrides)
    tokenize.run(cfg)
    capture.run(cfg)
    target = solve.run(cfg)
    plan = json.loads((target / "plan.json").read_text())
    layers = plan["layers"]
    dense = plan["dense"]
    # Widths differ between modules of a layer (the budget moves across modules), each within its floor.
    assert any(len({1 - lay["mlp_width"] / dense["mlp_width"], 1 - lay["v_dim"] / dense["v_dim"]}) > 1
               for lay in layers)
    for lay in layers:
        assert lay["mlp_width"] >= 0.15 * dense["mlp_width"] - 1
    achieved = read_manifest(target).extra["achieved_block_rate"]
    # The budget is met from above, overshooting by less than one layer's largest single width step.
    assert 0.3 - 1e-9 <= achieved < 0.3 + 0.05, achieved
    assemble.run(cfg)


def test_module_budget_asks_for_a_recapture_of_an_old_store(tmp_path, tiny_model_dirs) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{"compression.allocation": "error"})
    cfg = compose_config(overrides)
    tokenize.run(cfg)
    capture.run(cfg)
    for record in (ArtifactPaths(cfg).store / "layers").glob("*.json"):
        doc = json.loads(record.read_text())
        for name in ("inv_resid_in", "inv_resid_out"):
            del doc["checksums"][name]  # as a store captured before these statistics existed
        record.write_text(json.dumps(doc))
    solve.run(compose_config([*overrides, "compression.allocation=bi"]))  # the paper's allocation needs none
    with pytest.raises(ArtifactError, match=r"lacks inv_resid_in, inv_resid_out .*overwrite=\[capture\]"):
        solve.run(cfg)


def test_error_allocation_is_refused_for_methods_without_curves(tmp_path, tiny_model_dirs) -> None:
    from pipeline.config import ConfigError, validate

    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.allocation": "error", "compression.method": "weight_svd"}))
    with pytest.raises(ConfigError, match="compression.allocation='error' is invalid"):
        validate(cfg)


def test_module_curves_are_computed_once_per_store_and_shared_by_rates(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{"compression.allocation": "error"})
    cfg = compose_config(overrides)
    tokenize.run(cfg)
    capture.run(cfg)
    solve.run(cfg)
    curves = list(ArtifactPaths(cfg).solves.glob("curves-*.safetensors"))
    assert len(curves) == 1
    from pipeline.methods.modegpt import ModeGPT

    monkeypatch.setattr(ModeGPT, "module_curves", lambda *a, **k: pytest.fail("curves recomputed for a second rate"))
    second = solve.run(compose_config([*overrides, "compression.rate=0.1"]))
    assert read_manifest(second).status == "complete"
    # A setting the curves depend on makes new ones, never reuses the old.
    monkeypatch.undo()
    solve.run(compose_config([*overrides, "compression.ridge_lambda=0.5"]))
    assert len(list(ArtifactPaths(cfg).solves.glob("curves-*.safetensors"))) == 2


def test_one_kl_probe_serves_every_solver_setting_under_it(tmp_path, tiny_model_dirs, monkeypatch) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    overrides = tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.allocation": "error", "compression.curve_scale": "kl"})
    cfg = compose_config(overrides)
    tokenize.run(cfg)
    capture.run(cfg)
    solve.run(cfg)
    solves = ArtifactPaths(cfg).solves
    (probe_file,) = solves.glob("sensitivity-*.safetensors")
    probed = load_file(str(probe_file))["sensitivity"]
    calls = []
    real = probe.kl_sensitivity
    monkeypatch.setattr(probe, "kl_sensitivity", lambda *a, **k: calls.append(1) or real(*a, **k))
    # New curves (the ridges change them), the same probe: it reads tokens and the model only.
    solve.run(compose_config([*overrides, "compression.nystrom_ridge=1e-5"]))
    solve.run(compose_config([*overrides, "compression.ridge_lambda=0.5"]))
    assert calls == [] and len(list(solves.glob("curves-*.safetensors"))) == 3
    # A probe file made for something else is detected and probed again, never reused.
    save_file({"sensitivity": probed}, str(probe_file), metadata={"key": "{}"})
    solve.run(compose_config([*overrides, "compression.eig_floor=1e-7"]))
    assert len(calls) == 1 and len(list(solves.glob("sensitivity-*.safetensors"))) == 1
    with safe_open(str(probe_file), "pt") as handle:
        assert handle.metadata()["key"] != "{}"


def test_the_kl_and_residual_curve_scales_change_the_module_budget(tmp_path, tiny_model_dirs) -> None:
    plans = {}
    for scale in ("residual", "kl"):
        cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
            "compression.allocation": "error", "compression.curve_scale": scale, "compression.rate": 0.3}))
        tokenize.run(cfg)
        capture.run(cfg)
        target = solve.run(cfg)
        plans[scale] = json.loads((target / "plan.json").read_text())["layers"]
        assert 0.3 - 1e-9 <= read_manifest(target).extra["achieved_block_rate"] < 0.35
    assert plans["residual"] != plans["kl"]
    assert len(list(ArtifactPaths(cfg).solves.glob("curves-*.safetensors"))) == 2  # one per scale
