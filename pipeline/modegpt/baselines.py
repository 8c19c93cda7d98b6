"""Comparison baselines: plain and whitened (SVD-LLM) weight SVD at equal parameter count, random MLP selection."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.modegpt._linalg import as_f64, psd_sqrt_pair


def truncated_svd(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """W ≈ A B with A = U_r Σ_r^{1/2} [m, r], B = Σ_r^{1/2} V_rᵀ [r, n] (balanced split, FP64)."""
    if w.dim() != 2:
        raise ValueError(f"w must be a matrix, got shape {tuple(w.shape)}")
    if not 1 <= rank <= min(w.shape):
        raise ValueError(f"rank must lie in [1, {min(w.shape)}], got {rank}")
    u, s, vh = torch.linalg.svd(as_f64(w), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root.unsqueeze(-1) * vh[:rank]


def whitened_truncated_svd(w: Tensor, corr: Tensor, rank: int, eig_floor: float = 1e-10,
                           roots: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The rank-``rank`` W_r = A B minimising the output error Tr((W − W_r)ᵀ C (W − W_r)) (SVD-LLM's whitening).

    ``w`` is [in, out] (X W layout), ``corr`` = E[x xᵀ] of the layer's input [in, in]. With S = C^{1/2}: the error is
    ‖S (W − W_r)‖²_F, minimised by truncating S W and un-whitening, W_r = S⁻¹ (S W)_r, so it equals the sum of the
    discarded squared singular values of S W. A = S⁻¹ U_r Σ_r^{1/2} [in, r], B = Σ_r^{1/2} V_rᵀ [r, out]: the
    same factor shapes (and parameter count) as :func:`truncated_svd`. The spectrum of C is floored at
    ``eig_floor``·max so a rank-deficient C (dead inputs) still un-whitens. ``roots`` = (C^{1/2}, C^{-1/2}) from
    :func:`whitening_roots` skips the eigendecomposition when several linears share one input (q, k, v).
    """
    w64 = as_f64(w)
    if corr.shape != (w64.shape[0], w64.shape[0]):
        raise ValueError(f"corr must be [{w64.shape[0]}, {w64.shape[0]}] for w {tuple(w64.shape)}, got "
                         f"{tuple(corr.shape)}")
    sqrt_c, inv_sqrt_c = roots if roots is not None else whitening_roots(corr, eig_floor)
    a, b = truncated_svd(sqrt_c @ w64, rank)
    return inv_sqrt_c @ a, b


def whitening_roots(corr: Tensor, eig_floor: float = 1e-10) -> tuple[Tensor, Tensor]:
    """(C^{1/2}, C^{-1/2}) with C's spectrum floored at ``eig_floor``·max, as :func:`whitened_truncated_svd` uses."""
    sqrt_c, inv_sqrt_c, _ = psd_sqrt_pair(as_f64(corr), eig_floor)
    return sqrt_c, inv_sqrt_c


def output_error(w: Tensor, approx: Tensor, corr: Tensor) -> Tensor:
    """Tr((W − Ŵ)ᵀ C (W − Ŵ)): the summed squared output error of a linear over inputs with correlation C."""
    diff = as_f64(w) - as_f64(approx)
    return (diff * (as_f64(corr) @ diff)).sum()


def svd_rank_for_sparsity(m: int, n: int, sparsity: float) -> int:
    """Rank r with r(m + n) ≈ (1 − φ)·m·n (nearest, halves up), clamped to [1, min(m, n)]."""
    if m < 1 or n < 1:
        raise ValueError(f"matrix dimensions must be >= 1, got {m} x {n}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    r = math.floor(round((1.0 - sparsity) * m * n / (m + n), 9) + 0.5)
    return int(min(max(r, 1), min(m, n)))


def random_mlp_selection(full: int, keep: int, generator: torch.Generator | None = None) -> Tensor:
    """`keep` distinct column indices of [0, full) drawn uniformly, ascending."""
    if not 1 <= keep <= full:
        raise ValueError(f"keep must lie in [1, {full}], got {keep}")
    return torch.sort(torch.randperm(full, generator=generator)[:keep]).values
