"""Small FP64 linear-algebra helpers shared by the module solvers."""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64


def as_f64(x: Tensor) -> Tensor:
    return x.to(F64)


def symmetric(c: Tensor) -> Tensor:
    """Symmetrise an accumulated correlation (FP sums are symmetric only up to rounding)."""
    c = as_f64(c)
    return 0.5 * (c + c.transpose(-1, -2))


def check_square(name: str, c: Tensor) -> None:
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(c.shape)}")


def psd_eigh(c: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a PSD matrix; tiny negative eigenvalues from rounding are clipped to 0."""
    evals, evecs = torch.linalg.eigh(symmetric(c))
    return evals.clamp_min(0.0), evecs


def psd_pinv_solve(a: Tensor, b: Tensor) -> Tensor:
    """a⁺ b for PSD a via eigh; eigenvalues below the usual pinv tolerance count as zero."""
    evals, evecs = psd_eigh(a)
    tol = evals.max().clamp_min(0.0) * a.shape[-1] * torch.finfo(F64).eps
    inv = torch.where(evals > tol, 1.0 / evals.clamp_min(torch.finfo(F64).tiny), torch.zeros_like(evals))
    return evecs @ (inv.unsqueeze(-1) * (evecs.transpose(-1, -2) @ b))


def psd_solve(a: Tensor, b: Tensor) -> Tensor:
    """a⁻¹ b via Cholesky; falls back to the pseudo-inverse when a is singular (e.g. no ridge, dead units)."""
    return psd_solve_factored(a, b)[0]


def psd_solve_factored(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor | None]:
    """``psd_solve``, also returning the Cholesky factor it used (None: a was singular, the pseudo-inverse
    solved), so a caller can tell from the pivots how near singular a was at no extra cost."""
    chol, info = torch.linalg.cholesky_ex(symmetric(a))
    if int(info) == 0:
        return torch.cholesky_solve(b, chol), chol
    return psd_pinv_solve(a, b), None


def psd_sqrt_pair(c: Tensor, eig_floor: float) -> tuple[Tensor, Tensor, int]:
    """C^{1/2} and C^{-1/2} from one eigendecomposition, eigenvalues floored at eig_floor·max, and how many
    eigenvalues the floor raised (C's numerical rank deficiency: the floor is a safeguard that fired).

    Both roots use the same floored spectrum, so C^{-1/2} C^{1/2} = I exactly (up to rounding) even for a
    rank-deficient C; that is what makes a full-rank Type-III solution reproduce the dense weights.
    """
    evals, evecs = psd_eigh(c)
    top = evals.max()
    if not bool(top > 0):
        raise ValueError(f"correlation has no positive eigenvalue (max {float(top)}); cannot whiten")
    floor = eig_floor * top
    raised = int((evals < floor).sum())
    root = evals.clamp_min(floor).sqrt()
    sqrt_c = (evecs * root) @ evecs.T
    inv_sqrt_c = (evecs / root) @ evecs.T
    return sqrt_c, inv_sqrt_c, raised


def stable_top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores along the last dim, ties broken towards the lower index, sorted."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return torch.sort(order[..., :k], dim=-1).values
