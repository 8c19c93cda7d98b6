"""Type-I (MLP): ridge leverage scores, the Nyström update as least squares, closed-form residual."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.modegpt import mlp as mlp_module
from pipeline.modegpt import (
    mlp_residual,
    nystrom_mlp,
    nystrom_update,
    random_mlp_selection,
    ridge_leverage_scores,
)

N, D_MODEL, D_MLP = 200, 16, 48


def _mlp(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations H (N × D, heterogeneous column scales), mean correlation C, and W_D (D × d)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_MODEL, generator=g, dtype=torch.float64)
    w_g = torch.randn(D_MODEL, D_MLP, generator=g, dtype=torch.float64) / D_MODEL**0.5
    w_u = torch.randn(D_MODEL, D_MLP, generator=g, dtype=torch.float64) / D_MODEL**0.5
    w_u = w_u * torch.logspace(-1.5, 0.5, D_MLP, dtype=torch.float64)[torch.randperm(D_MLP, generator=g)]
    h = F.silu(x @ w_g) * (x @ w_u)
    w_d = torch.randn(D_MLP, D_MODEL, generator=g, dtype=torch.float64) / D_MLP**0.5
    return h, h.T @ h / N, w_d


def _err(h: torch.Tensor, w_d: torch.Tensor, index: torch.Tensor, new_w: torch.Tensor) -> float:
    return float((h @ w_d - h[:, index] @ new_w).square().sum() / N)


def test_leverage_scores_match_naive_inverse() -> None:
    _, c, _ = _mlp()
    for lam in (0.01, 1.0, 10.0):
        naive = torch.diagonal(c @ torch.linalg.inv(c + lam * torch.eye(D_MLP, dtype=torch.float64)))
        assert torch.allclose(ridge_leverage_scores(c, lam), naive, rtol=1e-10, atol=1e-12)


def _known_spectrum(evals: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """C = Q diag(e) Qᵀ with a random orthogonal Q, so exact scores follow from Q and e, not from C."""
    q, _ = torch.linalg.qr(torch.randn(evals.numel(), evals.numel(), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return (q * evals) @ q.T, q


def test_leverage_scores_match_eigendecomposition_form() -> None:
    _, c, _ = _mlp()
    for lam in (0.01, 1.0):
        assert torch.allclose(ridge_leverage_scores(c, lam), mlp_module._leverage_from_eigh(c, lam), rtol=0, atol=1e-13)


def test_inverse_diagonal_paths_agree() -> None:
    """The CPU path (potri) and the CUDA path (one triangular solve) give the same diagonal."""
    _, c, _ = _mlp()
    chol = torch.linalg.cholesky(c + 0.1 * torch.eye(D_MLP, dtype=torch.float64))
    want = torch.diagonal(torch.linalg.inv(c + 0.1 * torch.eye(D_MLP, dtype=torch.float64)))
    for triangular_solve in (False, True):
        got = mlp_module._inverse_diagonal(chol, triangular_solve=triangular_solve)
        assert torch.allclose(got, want, rtol=1e-10, atol=0)


def test_leverage_scores_accurate_when_ill_conditioned() -> None:
    evals = torch.logspace(-8, 2, D_MLP, dtype=torch.float64)
    c, q = _known_spectrum(evals)
    lam = 1e-6  # cond(C + λI) ~ 1e8
    exact = (q.square() * (evals / (evals + lam))).sum(-1)
    assert torch.allclose(ridge_leverage_scores(c, lam), exact, rtol=0, atol=1e-8)


def test_leverage_scores_of_indefinite_rounding_fall_back() -> None:
    evals = torch.linspace(-0.5, 2.0, D_MLP, dtype=torch.float64)  # negative beyond λ: Cholesky of C + λI fails
    c, q = _known_spectrum(evals)
    scores = ridge_leverage_scores(c, 0.1)
    clipped = evals.clamp_min(0.0)
    assert torch.allclose(scores, (q.square() * (clipped / (clipped + 0.1))).sum(-1), rtol=0, atol=1e-12)


def test_leverage_scores_scale_invariant() -> None:
    _, c, _ = _mlp()
    base = ridge_leverage_scores(c, 0.3)
    assert torch.allclose(ridge_leverage_scores(7.5 * c, 7.5 * 0.3), base, rtol=1e-10, atol=1e-12)
    # ... but not invariant to scaling C alone, which is why the normalisation (mean over tokens) matters.
    assert not torch.allclose(ridge_leverage_scores(7.5 * c, 0.3), base, rtol=1e-3)
    assert bool((base >= 0).all()) and bool((base < 1).all())


def test_keep_full_is_identity() -> None:
    _, c, w_d = _mlp()
    sol = nystrom_mlp(c, w_d.float(), D_MLP)
    assert torch.equal(sol.index, torch.arange(D_MLP))
    assert sol.w_down.dtype == torch.float64
    assert torch.allclose(sol.w_down, w_d, atol=1e-7)  # passed as float32 above
    assert mlp_residual(c, w_d, sol.index) < 1e-10
    # The solver itself (no short-cut) also reproduces W_D when nothing is dropped and there is no ridge.
    assert torch.allclose(nystrom_update(c, w_d, torch.arange(D_MLP), 0.0), w_d, atol=1e-9)


@pytest.mark.parametrize("keep", [12, 24, 40])
def test_update_is_least_squares(keep: int) -> None:
    h, c, w_d = _mlp()
    sol = nystrom_mlp(c, w_d, keep, nystrom_ridge=0.0)
    assert sol.index.shape == (keep,)
    assert bool((sol.index[1:] > sol.index[:-1]).all())
    ref = torch.linalg.lstsq(h[:, sol.index], h @ w_d).solution
    assert torch.allclose(sol.w_down, ref, rtol=1e-8, atol=1e-9)
    # The default relative ridge stays close to the exact solution on a well-conditioned problem.
    ridged = nystrom_mlp(c, w_d, keep)
    assert torch.equal(ridged.index, sol.index)
    assert torch.allclose(ridged.w_down, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("keep", [8, 24, 40])
def test_residual_matches_empirical_error(keep: int) -> None:
    h, c, w_d = _mlp(1)
    sol = nystrom_mlp(c, w_d, keep, nystrom_ridge=0.0)
    emp = _err(h, w_d, sol.index, sol.w_down)
    assert mlp_residual(c, w_d, sol.index) == pytest.approx(emp, rel=1e-8, abs=1e-12)
    # The closed form is the optimum for *any* selection, e.g. a random one.
    idx = random_mlp_selection(D_MLP, keep, torch.Generator().manual_seed(3))
    emp_rand = _err(h, w_d, idx, nystrom_update(c, w_d, idx, 0.0))
    assert mlp_residual(c, w_d, idx) == pytest.approx(emp_rand, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("keep", [12, 24])
def test_beats_random_selection(keep: int) -> None:
    for seed in range(3):
        h, c, w_d = _mlp(seed)
        sol = nystrom_mlp(c, w_d, keep)
        ours = _err(h, w_d, sol.index, sol.w_down)
        rand = []
        for r in range(8):
            idx = random_mlp_selection(D_MLP, keep, torch.Generator().manual_seed(100 + r))
            rand.append(_err(h, w_d, idx, torch.linalg.lstsq(h[:, idx], h @ w_d).solution))
        assert ours <= sum(rand) / len(rand)


def test_singular_correlation_without_ridge() -> None:
    # Duplicate and dead units make C_JJ singular: the solver must fall back to the pseudo-inverse.
    h, _, w_d = _mlp()
    h = torch.cat([h, h[:, :4], torch.zeros(N, 4, dtype=torch.float64)], dim=1)
    w_d = torch.cat([w_d, w_d[:8]], dim=0)
    c = h.T @ h / N
    sol = nystrom_mlp(c, w_d, 52, nystrom_ridge=0.0)
    assert bool(torch.isfinite(sol.w_down).all())
    emp = _err(h, w_d, sol.index, sol.w_down)
    assert mlp_residual(c, w_d, sol.index) == pytest.approx(emp, rel=1e-6, abs=1e-10)


def test_bad_arguments() -> None:
    _, c, w_d = _mlp()
    with pytest.raises(ValueError, match="keep"):
        nystrom_mlp(c, w_d, 0)
    with pytest.raises(ValueError, match="ridge_lambda"):
        ridge_leverage_scores(c, 0.0)
    with pytest.raises(ValueError, match="w_down"):
        nystrom_mlp(c, w_d.T, 4)
