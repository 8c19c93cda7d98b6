"""compression.shape: the solve plans under an engine's constraint (deci: attention whole, MLP widths on a grid;
stock: one MLP width), still meeting the budget, and the result loads as the engine layout."""

import json

import pytest
from conftest import FAMILIES, compose_config, tiny_overrides

from pipeline.artifacts import read_manifest
from pipeline.assembly import load_compressed
from pipeline.config import ConfigError, validate
from pipeline.export.layout import engine_model
from stages import assemble, capture, solve, tokenize


@pytest.mark.parametrize("allocation", ["error", "bi"])
def test_deci_keeps_attention_whole_and_widths_on_the_grid(tmp_path, tiny_model_dirs, allocation) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.shape": "deci", "compression.round_to": 16, "compression.allocation": allocation,
        "compression.curve_scale": "residual", "compression.rate": 0.3}))
    validate(cfg)
    tokenize.run(cfg)
    capture.run(cfg)
    target = solve.run(cfg)
    plan = json.loads((target / "plan.json").read_text())
    dense = plan["dense"]
    widths = [lay["mlp_width"] for lay in plan["layers"]]
    assert all(lay["qk_dim"] == dense["qk_dim"] and lay["v_dim"] == dense["v_dim"] for lay in plan["layers"])
    assert all(w % 16 == 0 and 16 <= w <= dense["mlp_width"] for w in widths), widths
    achieved = read_manifest(target).extra["achieved_block_rate"]
    assert 0.3 - 1e-9 <= achieved <= 0.3 + 0.05, achieved  # the grid's rounding does not undercut the budget
    model = load_compressed(assemble.run(cfg))
    em = engine_model(model, "deci")
    assert em.mlp_widths == widths


def test_stock_gives_every_layer_one_width(tmp_path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.shape": "stock", "compression.round_to": 16, "compression.rate": 0.25}))
    tokenize.run(cfg)
    capture.run(cfg)
    plan = json.loads((solve.run(cfg) / "plan.json").read_text())
    assert len({(lay["mlp_width"], lay["qk_dim"], lay["v_dim"]) for lay in plan["layers"]}) == 1
    assert plan["layers"][0]["qk_dim"] == plan["dense"]["qk_dim"]


def test_free_shape_cuts_inside_heads_and_is_refused_by_the_engine_layout(tmp_path, tiny_model_dirs) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs["llama"], "llama", **{
        "compression.shape": "free", "compression.allocation": "bi", "compression.rate": 0.4}))
    tokenize.run(cfg)
    capture.run(cfg)
    solve.run(cfg)
    model = load_compressed(assemble.run(cfg))
    with pytest.raises(ValueError, match=r"no serving engine runs per-head .* compression.shape=deci"):
        engine_model(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_is_validated(tmp_path, tiny_model_dirs, family) -> None:
    cfg = compose_config(tiny_overrides(tmp_path, tiny_model_dirs[family], family, **{"compression.shape": "vllm"}))
    with pytest.raises(ConfigError, match=r"compression.shape='vllm' is invalid: expected one of free, deci, stock"):
        validate(cfg)
