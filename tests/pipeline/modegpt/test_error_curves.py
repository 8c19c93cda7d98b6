"""The module error curves against direct computation; the shrunk Type-I refit on held-out tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.modegpt import (
    head_output_energy,
    leverage_keep_order,
    mlp_residual,
    nested_mlp_residuals,
    nystrom_mlp,
    qk_error_curve,
    vo_rank_residuals,
    vo_residual,
    vo_svd,
)

F64 = torch.float64


def _swiglu_mlp(seed: int, tokens: int, d: int, full: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SwiGLU activations H, their correlation and a down projection whose rows differ in scale (so the columns
    the output reads are not the ones with the most energy)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=g, dtype=F64)
    w_g = torch.randn(d, full, generator=g, dtype=F64) / d**0.5
    w_u = torch.randn(d, full, generator=g, dtype=F64) / d**0.5 * torch.rand(full, generator=g, dtype=F64) * 3
    h = F.silu(x @ w_g) * (x @ w_u)
    w_d = torch.randn(full, d, generator=g, dtype=F64) * torch.rand(full, 1, generator=g, dtype=F64) ** 2
    return h, h.T @ h / tokens, w_d


def test_nested_residuals_match_direct_residuals() -> None:
    _, c, w = _swiglu_mlp(1, tokens=200, d=6, full=24)
    for order in (leverage_keep_order(c, 1.0), torch.randperm(24, generator=torch.Generator().manual_seed(0))):
        curve = nested_mlp_residuals(c, w, order, 1e-12)
        assert curve.shape == (25,)
        assert float(curve[0]) == float((w * (c @ w)).sum())
        for k in (1, 5, 12, 23, 24):
            assert math.isclose(float(curve[k]), mlp_residual(c, w, order[:k]), rel_tol=1e-6, abs_tol=1e-10)
        assert bool((curve[1:] <= curve[:-1] + 1e-12).all())


def test_vo_rank_residuals_are_the_truncation_errors() -> None:
    g = torch.Generator().manual_seed(3)
    d, n_kv, group, head_dim = 12, 2, 2, 4
    x = torch.randn(100, d, generator=g, dtype=F64)
    c = x.T @ x / 100
    w_v = torch.randn(n_kv, d, head_dim, generator=g, dtype=F64)
    w_o = torch.randn(n_kv * group, head_dim, d, generator=g, dtype=F64)
    curve = vo_rank_residuals(c, w_v, w_o, eig_floor=1e-12)
    assert curve.shape == (head_dim + 1,)
    for r in range(1, head_dim + 1):
        assert math.isclose(float(curve[r]), vo_residual(c, w_v, w_o, vo_svd(c, w_v, w_o, r, 1e-12)),
                            rel_tol=1e-6, abs_tol=1e-9)
    assert float(curve[head_dim]) < 1e-9 * float(curve[0])


def test_head_output_energy_matches_activations() -> None:
    g = torch.Generator().manual_seed(4)
    d, n_kv, group, head_dim = 8, 2, 3, 4
    x = torch.randn(50, d, generator=g, dtype=F64)
    w_v = torch.randn(n_kv, d, head_dim, generator=g, dtype=F64)
    w_o = torch.randn(n_kv * group, head_dim, d, generator=g, dtype=F64)
    energy = head_output_energy(x.T @ x / 50, w_v, w_o)
    for h in range(n_kv * group):
        direct = (x @ w_v[h // group] @ w_o[h]).square().sum() / 50
        assert math.isclose(float(energy[h]), float(direct), rel_tol=1e-9)


def test_qk_error_curve_drops_the_cr_columns_and_keeps_rope_pairs() -> None:
    q = torch.tensor([[4.0, 1.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]], dtype=F64)  # two query heads, one KV group
    k = torch.tensor([[1.0, 3.0, 0.1, 2.0]], dtype=F64)
    energy = torch.tensor([2.0, 1.0], dtype=F64)
    plain = qk_error_curve(q, k, energy, rope=False)
    contrib = q * k  # group score: summed over the group's heads -> columns ranked 1, 0, 3, 2
    kept_first = [1, 0, 3, 2]
    for kept in range(5):
        dropped = kept_first[kept:]
        expected = sum(float(contrib[h, dropped].sum()) / 4 * float(energy[h]) for h in range(2))
        assert math.isclose(float(plain[kept]), expected, rel_tol=1e-12, abs_tol=1e-15)
    rope = qk_error_curve(q, k, energy, rope=True)
    assert math.isinf(float(rope[1])) and math.isinf(float(rope[3]))
    assert float(rope[4]) == 0.0 and float(rope[0]) > float(rope[2]) > 0.0


def test_shrunk_refit_is_safe_with_fewer_tokens_than_the_mlp_width() -> None:
    """Qwen2.5-like width ratio (D = 5.4 d) and fewer calibration tokens than D (C is singular): the paper's refit
    (ridge toward 0) fits the calibration and loses on fresh tokens; the shrunk refit is finite and no worse on
    held-out tokens than keeping the selected columns with their dense rows, and beats it with plenty of tokens."""
    d, full, keep = 16, 86, 43

    def held_out_ratios(tokens: int, refit: str) -> list[float]:
        ratios = []
        for seed in range(3):
            h, c, w = _swiglu_mlp(seed, tokens=tokens + 1000, d=d, full=full)
            calib, held = h[:tokens], h[tokens:]
            c = calib.T @ calib / tokens
            sol = nystrom_mlp(c, w, keep, refit=refit, tokens=tokens)
            assert bool(torch.isfinite(sol.w_down).all())
            refit_err = (held @ w - held[:, sol.index] @ sol.w_down).square().sum()
            kept_err = (held @ w - held[:, sol.index] @ w[sol.index]).square().sum()
            ratios.append(float(refit_err / kept_err))
        return ratios

    for tokens in (20, 40, 80):
        assert max(held_out_ratios(tokens, "shrink")) <= 1.0 + 1e-9
    assert min(held_out_ratios(40, "paper")) > 1.05  # the failure the shrinkage fixes
    assert max(held_out_ratios(2000, "shrink")) < 1.0
