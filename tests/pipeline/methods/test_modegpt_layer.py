"""One layer's solve: the glue between adapters and the math, checked against direct formulas."""

from __future__ import annotations

import pytest
import torch

from pipeline.adapters import adapter_for, families
from pipeline.methods.modegpt import DenseLayer, ModegptSettings, solve_modegpt_layer
from pipeline.modegpt import F64, nystrom_mlp
from pipeline.planning import module_weight_params, plan_layer, plan_layers
from pipeline.tiny import random_model, tiny_config


def _psd(n: int, tokens: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(tokens, n, generator=g, dtype=F64) * torch.logspace(-1, 1, n, dtype=F64)
    return x.T @ x


@pytest.mark.parametrize("family", families())
def test_mlp_error_and_refit_match_the_direct_formulas(family: str) -> None:
    adapter = adapter_for(random_model(tiny_config(family)), family)
    shape, heads = adapter.block_shape(), adapter.head_layout()
    g = torch.Generator().manual_seed(0)
    tokens = 300
    stats = {
        "mlp_gram": _psd(shape.intermediate_size, tokens, g), "attn_gram": _psd(shape.hidden_size, tokens, g),
        "q_energy": torch.rand(heads.num_heads, heads.head_dim, generator=g, dtype=F64),
        "k_energy": torch.rand(heads.num_kv_heads, heads.head_dim, generator=g, dtype=F64),
        "tokens": torch.tensor(float(tokens), dtype=F64),
    }
    dense = DenseLayer.from_layer(adapter.layer(1), heads, torch.device("cpu"))
    plan = plan_layer(0.4, shape, round_to=1)
    solution, errors = solve_modegpt_layer(stats, dense, plan, heads, ModegptSettings(mlp_refit="paper"))

    corr = stats["mlp_gram"] / tokens
    reference = nystrom_mlp(corr, dense.down, plan.mlp_width)  # right-hand side from its own product
    assert torch.equal(solution.mlp_index, reference.index)
    torch.testing.assert_close(solution.mlp_down, reference.w_down, rtol=1e-10, atol=1e-12)
    refit = torch.zeros_like(dense.down)
    refit[solution.mlp_index] = solution.mlp_down
    diff = dense.down - refit
    want = (diff * (corr @ diff)).sum() / (dense.down * (corr @ dense.down)).sum()
    assert errors["mlp"] == pytest.approx(float(want), rel=1e-9)
    assert 0.0 < errors["mlp"] < 1.0 and 0.0 <= errors["vo"] < 1.0


@pytest.mark.parametrize("family", families())
@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.4])
def test_the_layer_budget_holds_when_a_family_keeps_some_modules_whole(family: str, sparsity: float) -> None:
    """Qwen3 keeps q/k at full width: the MLP and value-output widths then carry the whole layer budget."""
    adapter = adapter_for(random_model(tiny_config(family)), family)
    shape, head_dim = adapter.block_shape(), adapter.head_layout().head_dim
    plan = plan_layer(sparsity, shape, round_to=1)
    if "qk" not in shape.compressible:
        assert plan.qk_dim == head_dim
    dense = sum(module_weight_params(shape).values())
    kept = shape.linear_params(plan.mlp_width, plan.qk_dim, plan.v_dim, {})
    # Widths are whole numbers: the achieved fraction is within one column of each module of the target.
    slack = (shape.linear_params(1, 0, 0, {}) + shape.linear_params(0, 2, 1, {})) / dense
    assert abs((dense - kept) / dense - sparsity) <= slack


@pytest.mark.parametrize("target", [0.1, 0.25, 0.4])
def test_grid_widths_meet_the_budget_from_above_within_one_step(target) -> None:
    from pipeline.engine_shapes import constrained_block

    model = random_model(tiny_config("llama", intermediate_size=1536, hidden_size=64, num_attention_heads=4,
                                     num_key_value_heads=2))
    shape = constrained_block(adapter_for(model, "llama").block_shape(), "deci")
    sparsities = torch.linspace(0.5 * target, 1.5 * target, 30, dtype=torch.float64)
    plans = plan_layers(sparsities, shape, 256, target)
    dense = shape.dense_linear_params({}) * len(plans)
    kept = sum(shape.linear_params(p.mlp_width, p.qk_dim, p.v_dim, {}) for p in plans)
    step = shape.linear_params(256, 0, 0, {})
    assert all(p.mlp_width % 256 == 0 for p in plans)
    assert dense - kept >= target * dense and dense - kept - step < target * dense
