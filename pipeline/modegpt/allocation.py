"""Per-layer sparsity allocation: Block-Influence softmax (with a cap) or uniform, and kept widths."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.modegpt._linalg import F64


def _check_target(target: float, max_sparsity: float) -> None:
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must lie in [0, 1), got {target}")
    if not 0.0 < max_sparsity <= 1.0:
        raise ValueError(f"max_sparsity must lie in (0, 1], got {max_sparsity}")
    if target > max_sparsity:
        raise ValueError(f"target sparsity {target} exceeds max_sparsity {max_sparsity}")


def bi_sparsity(block_influence: Tensor, target: float, temperature: float, max_sparsity: float) -> Tensor:
    """φ = L·φ_avg·softmax(−s/ε), capped at max_sparsity with the excess spread over uncapped layers.

    The redistribution keeps the uncapped layers proportional to exp(−s/ε): that is the KKT solution of
    the entropy-regularised allocation with the box constraint φ ≤ φ_max, so the closed form survives.
    mean(φ) equals target exactly (up to rounding).
    """
    _check_target(target, max_sparsity)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = block_influence.to(F64).flatten()
    if s.numel() == 0:
        raise ValueError("block_influence is empty")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("block_influence contains non-finite values")
    num_layers = s.numel()
    if target == 0.0:
        return torch.zeros_like(s)

    weights = torch.softmax(-s / temperature, dim=0)
    budget = num_layers * target
    capped = torch.zeros(num_layers, dtype=torch.bool, device=s.device)
    phi = budget * weights
    # Each pass caps at least one more layer, so this ends within L passes.
    for _ in range(num_layers):
        over = (phi > max_sparsity) & ~capped
        if not bool(over.any()):
            break
        capped |= over
        free = ~capped
        remaining = budget - max_sparsity * int(capped.sum())
        phi = torch.where(capped, torch.full_like(phi, max_sparsity), phi)
        if bool(free.any()):
            w_free = weights[free]
            total = w_free.sum()
            # Underflowed weights (tiny ε): share what is left equally rather than divide by zero.
            share = w_free / total if bool(total > 0) else torch.full_like(w_free, 1.0 / w_free.numel())
            phi[free] = remaining * share
    return phi


def uniform_sparsity(num_layers: int, target: float) -> Tensor:
    """φ_l = φ_avg for every layer (the paper's ablation)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must lie in [0, 1), got {target}")
    return torch.full((num_layers,), float(target), dtype=F64)


def kept_dim(full: int, sparsity: float, multiple: int = 1, minimum: int = 1) -> int:
    """round((1 − φ)·full) to the nearest multiple of `multiple` (halves round up), within [minimum, full].

    The floor is the smallest multiple ≥ minimum, so e.g. RoPE pairs (multiple=2) never get an odd width;
    a width that rounds to `full` stays `full` even when full is not a multiple (nothing removed needs no
    alignment, and φ = 0 must reproduce the dense module).
    """
    if full < 1:
        raise ValueError(f"full must be >= 1, got {full}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    # Round to 9 decimals first so that e.g. (1 − 0.25)·10 = 7.5 is not seen as 7.4999…
    raw = round((1.0 - sparsity) * full, 9)
    if math.floor(raw + 0.5) >= full:
        return full
    kept = multiple * math.floor(raw / multiple + 0.5)
    floor = multiple * math.ceil(max(minimum, 1) / multiple)
    return int(min(max(kept, floor), full))
