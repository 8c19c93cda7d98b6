"""One parameter budget across modules and layers, from each module's error-versus-width curve.

Minimise Σ_modules error_m(k_m) subject to Σ_m params_m(k_m) ≤ dense − removed: the Lagrangian relaxation
picks, for a price λ, each module's width minimising error + λ·params independently, and λ is bisected until
the budget is met. That is exactly optimal on the lower convex hull of every curve, and within one hull step of
the budget (the overshoot is reported, never hidden). The paper's rule (one sparsity per layer from Block
Influence, the same for every module) is ``pipeline.modegpt.allocation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.modegpt._linalg import F64


@dataclass(frozen=True)
class ModuleCurve:
    """One module's options: ``error[k]`` for kept width k = 0..full (inf where k is not allowed), and the
    parameters one kept unit costs. Widths below ``min_keep`` are not offered."""

    error: Tensor  # float64 [full + 1]
    unit_params: int
    min_keep: int = 1

    @property
    def full(self) -> int:
        return self.error.numel() - 1


def _allowed(curve: ModuleCurve) -> Tensor:
    widths = torch.arange(curve.full + 1)
    return torch.isfinite(curve.error) & ((widths >= curve.min_keep) | (widths == curve.full))


def _choose(curves: list[ModuleCurve], price: float) -> list[int]:
    chosen = []
    for c in curves:
        cost = c.error.to(F64) + price * c.unit_params * torch.arange(c.full + 1, dtype=F64)
        cost = torch.where(_allowed(c), cost, torch.full_like(cost, torch.inf))
        # Ties (flat curves) go to the wider option: never cut what costs nothing to keep at this price.
        best = torch.nonzero(cost == cost.min()).max()
        chosen.append(int(best))
    return chosen


def _removed(curves: list[ModuleCurve], widths: list[int]) -> int:
    return sum((c.full - k) * c.unit_params for c, k in zip(curves, widths, strict=True))


def allocate_widths(curves: list[ModuleCurve], remove_params: int, iterations: int = 200) -> list[int]:
    """Kept width per module removing at least ``remove_params`` parameters at the least total error.

    Raises ValueError when even every module at its narrowest allowed width removes too little.
    """
    if remove_params <= 0:
        return [c.full for c in curves]
    for c in curves:
        if c.error.dim() != 1 or c.error.numel() < 2 or c.unit_params < 1:
            raise ValueError("every curve needs error[0..full] (full >= 1) and unit_params >= 1")
        if not bool(_allowed(c)[c.full]) or not bool(torch.isfinite(c.error[c.full])):
            raise ValueError("every curve must allow its full width with a finite error")
    narrowest = [int(torch.nonzero(_allowed(c)).min()) for c in curves]
    if _removed(curves, narrowest) < remove_params:
        raise ValueError(f"cannot remove {remove_params} parameters: at most {_removed(curves, narrowest)} "
                         "with every module at its narrowest allowed width")
    # Bracket the price, then bisect it geometrically (errors and prices span many orders of magnitude).
    hi = 1.0
    while _removed(curves, _choose(curves, hi)) < remove_params:
        hi *= 16.0
        if hi > 1e300:
            return narrowest
    lo = hi
    while lo > 1e-300 and _removed(curves, _choose(curves, lo)) >= remove_params:
        lo /= 16.0
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if not lo < mid < hi or hi / lo < 1.0 + 1e-12:
            break
        if _removed(curves, _choose(curves, mid)) >= remove_params:
            hi = mid
        else:
            lo = mid
    return _choose(curves, hi)
