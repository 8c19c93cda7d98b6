"""Type-III (value-output): whitened two-step SVD per KV group, its residual, and the value-bias fold."""

from __future__ import annotations

import pytest
import torch

from pipeline.modegpt import fold_value_bias, truncated_svd, vo_residual, vo_svd
from pipeline.modegpt.vo import VoSolution

N, D, N_H, N_KV, D_H = 200, 16, 4, 2, 8
GROUP = N_H // N_KV


def _problem(seed: int = 0, n_kv: int = N_KV, tokens: int = N) -> tuple[torch.Tensor, ...]:
    """Correlated activations X (so C is far from identity), C = XᵀX/N, W_V [n_kv, d, d_H], W_O [n_h, d_H, d]."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, D, dtype=torch.float64)
    x = torch.randn(tokens, D, generator=g, dtype=torch.float64) @ mix
    w_v = torch.randn(n_kv, D, D_H, generator=g, dtype=torch.float64) / D**0.5
    w_o = torch.randn(N_H, D_H, D, generator=g, dtype=torch.float64) / D_H**0.5
    return x, x.T @ x / tokens, w_v, w_o


def _products(w_v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Per query head W_V,group(h) W_O,h: [n_h, d, d]."""
    return w_v.repeat_interleave(w_o.shape[0] // w_v.shape[0], dim=0) @ w_o


def _empirical(x: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, new_v: torch.Tensor,
               new_o: torch.Tensor) -> float:
    delta = _products(w_v, w_o) - _products(new_v, new_o)
    return float(torch.einsum("nd,hde->hne", x, delta).square().sum() / x.shape[0])


def test_full_rank_reproduces_products() -> None:
    x, c, w_v, w_o = _problem()
    sol = vo_svd(c, w_v.float(), w_o.float(), D_H)
    assert sol.w_v.dtype == torch.float64 and sol.w_v.shape == (N_KV, D, D_H)
    assert sol.w_o.shape == (N_H, D_H, D)
    assert torch.allclose(_products(sol.w_v, sol.w_o), _products(w_v.float().double(), w_o.float().double()),
                          atol=1e-10)
    # full rank keeps the dense factors themselves (the residual formula's own cancellation leaves ~1e-16 relative)
    assert torch.equal(sol.w_v, w_v.float().double()) and torch.equal(sol.w_o, w_o.float().double())
    assert vo_residual(c, w_v.float(), w_o.float(), sol) < 1e-12 * float(c.trace())


def test_full_rank_reproduces_products_with_singular_corr() -> None:
    # 10 tokens < d: C is rank-deficient, so C^{±1/2} lean on the eigenvalue floor.
    _, c, w_v, w_o = _problem(3, tokens=10)
    sol = vo_svd(c, w_v, w_o, D_H)
    assert torch.allclose(_products(sol.w_v, sol.w_o), _products(w_v, w_o), atol=1e-8)
    low = vo_svd(c, w_v, w_o, 3)
    assert bool(torch.isfinite(low.w_v).all()) and bool(torch.isfinite(low.w_o).all())


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_gqa_solution_is_optimal_rank_k(rank: int) -> None:
    x, c, w_v, w_o = _problem(1)
    sol = vo_svd(c, w_v, w_o, rank)
    assert sol.w_v.shape == (N_KV, D, rank) and sol.w_o.shape == (N_H, rank, D)
    # Independent whitening: ‖C^{1/2} Δ‖ = ‖Lᵀ Δ‖ for C = L Lᵀ, so the spectra agree.
    chol = torch.linalg.cholesky(c)
    trailing = 0.0
    for j in range(N_KV):
        heads = range(j * GROUP, (j + 1) * GROUP)
        m = chol.T @ torch.cat([w_v[j] @ w_o[h] for h in heads], dim=1)
        trailing += float(torch.linalg.svdvals(m)[rank:].square().sum())
    res = vo_residual(c, w_v, w_o, sol)
    assert res == pytest.approx(trailing, rel=1e-8)
    assert res == pytest.approx(_empirical(x, w_v, w_o, sol.w_v, sol.w_o), rel=1e-8)


@pytest.mark.parametrize("n_kv", [N_H, N_KV, 1])
def test_residual_matches_empirical_error(n_kv: int) -> None:
    x, c, w_v, w_o = _problem(2, n_kv=n_kv)
    for rank in (2, 5):
        sol = vo_svd(c, w_v, w_o, rank)
        emp = _empirical(x, w_v, w_o, sol.w_v, sol.w_o)
        assert vo_residual(c, w_v, w_o, sol) == pytest.approx(emp, rel=1e-8)
        # The closed form holds for any factorisation, not only the optimal one.
        other = VoSolution(w_v=sol.w_v * 1.1, w_o=sol.w_o.flip(0))
        assert vo_residual(c, w_v, w_o, other) == pytest.approx(
            _empirical(x, w_v, w_o, other.w_v, other.w_o), rel=1e-8)


@pytest.mark.parametrize("rank", [2, 4])
def test_not_worse_than_plain_svd(rank: int) -> None:
    for seed in range(3):
        x, c, w_v, w_o = _problem(seed)
        sol = vo_svd(c, w_v, w_o, rank)
        ours = _empirical(x, w_v, w_o, sol.w_v, sol.w_o)
        # Baseline 1: truncate W_V alone, push the right factor into every W_O of the group.
        factors = [truncated_svd(w_v[j], rank) for j in range(N_KV)]
        base_v = torch.stack([a for a, _ in factors])
        base_o = torch.stack([factors[h // GROUP][1] @ w_o[h] for h in range(N_H)])
        plain_v = _empirical(x, w_v, w_o, base_v, base_o)
        # Baseline 2: unweighted truncated SVD of each group's concatenated product.
        v2, o2 = [], []
        for j in range(N_KV):
            a, b = truncated_svd(torch.cat([w_v[j] @ w_o[h] for h in range(j * GROUP, (j + 1) * GROUP)], 1),
                                 rank)
            v2.append(a)
            o2.extend(b.split(D, dim=1))
        plain_prod = _empirical(x, w_v, w_o, torch.stack(v2), torch.stack(o2))
        assert ours <= plain_v * (1 + 1e-10)
        assert ours <= plain_prod * (1 + 1e-10)
        assert ours < 0.9 * min(plain_v, plain_prod)  # whitening matters when C is far from identity


@pytest.mark.parametrize("n_kv", [N_H, N_KV])
def test_fold_value_bias_is_exact(n_kv: int) -> None:
    g = torch.Generator().manual_seed(5)
    tokens = 12
    x = torch.randn(tokens, D, generator=g, dtype=torch.float64)
    w_v = torch.randn(n_kv, D, D_H, generator=g, dtype=torch.float64)
    w_o = torch.randn(N_H, D_H, D, generator=g, dtype=torch.float64)
    b_v = torch.randn(n_kv * D_H, generator=g, dtype=torch.float64)
    b_o = torch.randn(D, generator=g, dtype=torch.float64)
    logits = torch.randn(N_H, tokens, tokens, generator=g, dtype=torch.float64)
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    group = N_H // n_kv
    values = (torch.einsum("nd,jdk->jnk", x, w_v) + b_v.reshape(n_kv, 1, D_H)).repeat_interleave(group, 0)
    with_bias = torch.einsum("hnm,hmk,hkd->nd", attn, values, w_o) + b_o
    no_bias = torch.einsum("hnm,hmk,hkd->nd", attn, torch.einsum("nd,jdk->jnk", x, w_v).repeat_interleave(
        group, 0), w_o)
    folded = fold_value_bias(b_v, w_o, b_o, group)
    assert torch.allclose(with_bias, no_bias + folded, atol=1e-10)
    assert not torch.allclose(folded, b_o)


def test_bad_arguments() -> None:
    _, c, w_v, w_o = _problem()
    with pytest.raises(ValueError, match="rank"):
        vo_svd(c, w_v, w_o, D_H + 1)
    with pytest.raises(ValueError, match="shape"):
        vo_svd(c[:8, :8], w_v, w_o, 2)
    with pytest.raises(ValueError, match="positive eigenvalue"):
        vo_svd(torch.zeros(D, D, dtype=torch.float64), w_v, w_o, 2)
