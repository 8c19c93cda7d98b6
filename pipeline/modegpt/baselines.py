"""Comparison baselines: plain weight SVD at equal parameter count, and random MLP column selection."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.modegpt._linalg import as_f64


def truncated_svd(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """W ≈ A B with A = U_r Σ_r^{1/2} [m, r], B = Σ_r^{1/2} V_rᵀ [r, n] (balanced split, FP64)."""
    if w.dim() != 2:
        raise ValueError(f"w must be a matrix, got shape {tuple(w.shape)}")
    if not 1 <= rank <= min(w.shape):
        raise ValueError(f"rank must lie in [1, {min(w.shape)}], got {rank}")
    u, s, vh = torch.linalg.svd(as_f64(w), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root.unsqueeze(-1) * vh[:rank]


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
