"""Type-I (MLP) compression: ridge-leverage column selection and the Nyström down-projection update."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.modegpt._linalg import (
    F64,
    as_f64,
    check_square,
    psd_eigh,
    psd_pinv_solve,
    psd_solve_factored,
    stable_top_indices,
    symmetric,
)

REFITS = ("paper", "shrink")  # Type-I down-projection refit: ridge toward 0 (the paper) or toward the dense rows


@dataclass(frozen=True)
class MlpSolution:
    """Kept intermediate columns J (ascending) and the updated down projection W_D' (keep × d, FP64).

    The safeguards that fired, for the caller to report: ``leverage_eigh`` (C + λI was not positive definite,
    the scores came from an eigendecomposition), ``ridge`` (ρ added to C_JJ), ``ridge_pivots`` (pivots of
    C_JJ + ρI below ρ/√nystrom_ridge: directions where C_JJ is (near) singular and the ridge made it solvable) and
    ``pseudo_inverse`` (C_JJ + ρI was still singular: the pseudo-inverse solved).
    """

    index: Tensor
    w_down: Tensor
    leverage_eigh: bool = False
    ridge: float = 0.0
    ridge_pivots: int = 0
    pseudo_inverse: bool = False
    shrink: float = 0.0  # relative ridge of the refit toward the dense rows (refit="shrink"), else 0


@dataclass(frozen=True)
class _Update:
    w_down: Tensor
    ridge: float
    ridge_pivots: int
    pseudo_inverse: bool
    shrink: float = 0.0


def _check_mlp(corr: Tensor, w_down: Tensor) -> None:
    check_square("corr", corr)
    if w_down.dim() != 2 or w_down.shape[0] != corr.shape[0]:
        raise ValueError(f"w_down must be [D, d] with D={corr.shape[0]}, got shape {tuple(w_down.shape)}")


def ridge_leverage_scores(corr: Tensor, ridge_lambda: float) -> Tensor:
    """s_i = [C (C + λI)⁻¹]_ii for the mean correlation C = HᵀH / N.

    Computed as s_i = 1 − λ [(C + λI)⁻¹]_ii from a Cholesky factor and its inverse: about D³ flops against
    roughly 9 D³ for an eigendecomposition, which dominated the solve (benchmarks/RESULTS.md). Both
    forms lose about ε·cond(C + λI) absolutely; on ill-conditioned tests the Cholesky form is the closer one
    (tests/pipeline/modegpt/test_mlp.py). If C is indefinite beyond λ (rounding), the factorisation fails and
    the eigendecomposition form, with negative eigenvalues clipped, is used. Every score lies in [0, 1].
    """
    return _leverage_scores(corr, ridge_lambda)[0]


def _leverage_scores(corr: Tensor, ridge_lambda: float) -> tuple[Tensor, bool]:
    """``ridge_leverage_scores`` and whether it fell back to the eigendecomposition."""
    check_square("corr", corr)
    if not ridge_lambda > 0.0:
        raise ValueError(f"ridge_lambda must be > 0, got {ridge_lambda}")
    shifted = symmetric(corr)
    shifted.diagonal().add_(ridge_lambda)
    chol, info = torch.linalg.cholesky_ex(shifted)
    del shifted  # D x D FP64 each: at 70B scale (D = 28672) every copy is 6 GiB of device memory
    if int(info) != 0:
        return _leverage_from_eigh(corr, ridge_lambda), True
    inverse_diag = _inverse_diagonal(chol, triangular_solve=chol.device.type != "cpu")
    return (1.0 - ridge_lambda * inverse_diag).clamp(0.0, 1.0), False


def _inverse_diagonal(chol: Tensor, triangular_solve: bool) -> Tensor:
    """diag((L Lᵀ)⁻¹) from the lower Cholesky factor L.

    On CPU, LAPACK's potri (``cholesky_inverse``) inverts from the factor in 2/3 D³ flops. CUDA's
    ``cholesky_inverse`` solves twice against the identity, so there one triangular solve does it:
    (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹, whose diagonal is the column sums of (L⁻¹)² (8% slower than potri on CPU at D = 8192).
    """
    if not triangular_solve:
        return torch.diagonal(torch.cholesky_inverse(chol))
    identity = torch.eye(chol.shape[0], dtype=chol.dtype, device=chol.device)
    inverse_chol = torch.linalg.solve_triangular(chol, identity, upper=False)
    del identity
    return inverse_chol.square().sum(dim=0)


def _leverage_from_eigh(corr: Tensor, ridge_lambda: float) -> Tensor:
    """s_i = Σ_j V_ij² e_j / (e_j + λ) with C = V diag(e) Vᵀ, e clipped at 0."""
    evals, evecs = psd_eigh(corr)
    shrink = evals / (evals + ridge_lambda)
    return (evecs.square() * shrink).sum(dim=-1)


def leverage_keep_order(corr: Tensor, ridge_lambda: float) -> Tensor:
    """All columns by descending ridge leverage score (ties to the lower index): the first k are the paper's
    kept set of width k."""
    return torch.argsort(ridge_leverage_scores(corr, ridge_lambda), descending=True, stable=True)


def _nystrom_update(corr: Tensor, w_down: Tensor, index: Tensor, nystrom_ridge: float,
                    corr_w: Tensor | None = None, shrink_tokens: float | None = None) -> _Update:
    c_jj = corr[index][:, index]
    rhs = corr[index] @ w_down if corr_w is None else corr_w[index]
    ridge = 0.0
    if shrink_tokens is not None:
        # Ridge toward the dense rows W_D,J (not toward 0), sized like the regression's variance: kept columns per
        # spare calibration token, keep / (tokens − keep). A ridge toward 0 erases every direction the calibration
        # never excited (C_JJ is singular with fewer tokens than columns); this keeps the dense rows there and
        # refits only what the data determines, and with no spare tokens it keeps the dense rows outright
        # (tests/pipeline/modegpt/test_profile.py: held-out error with fewer tokens than D).
        spare = shrink_tokens - index.numel()
        if spare <= 0:
            return _Update(w_down=w_down[index].clone(), ridge=0.0, ridge_pivots=0, pseudo_inverse=False,
                           shrink=math.inf)
        scale = torch.diagonal(c_jj).mean().clamp_min(torch.finfo(F64).tiny)
        rel = max(nystrom_ridge, index.numel() / spare)
        eye = torch.eye(c_jj.shape[0], dtype=F64, device=c_jj.device)
        w, chol = psd_solve_factored(c_jj + rel * scale * eye, rhs + rel * scale * w_down[index])
        return _Update(w_down=w, ridge=float(rel * scale), ridge_pivots=0, pseudo_inverse=chol is None,
                       shrink=rel)
    if nystrom_ridge > 0.0:
        # Relative ridge: scale-free, and it keeps C_JJ solvable when D ≫ d makes it near-singular.
        scale = torch.diagonal(c_jj).mean().clamp_min(0.0)
        ridge = float(nystrom_ridge * scale)
        c_jj = c_jj + (nystrom_ridge * scale) * torch.eye(c_jj.shape[0], dtype=F64, device=c_jj.device)
    w, chol = psd_solve_factored(c_jj, rhs)
    # A pivot L_ii² within √(nystrom_ridge) of the scale is one the ridge moved by more than √(nystrom_ridge)
    # relatively: C_JJ is (near) singular there. Singular directions leave pivots of a few ρ (the Schur
    # complements carry the ridge along), so the threshold sits between ρ and the scale.
    pivots = 0
    if chol is not None and ridge > 0.0:
        pivots = int((torch.diagonal(chol).square() < ridge / nystrom_ridge**0.5).sum())
    return _Update(w_down=w, ridge=ridge, ridge_pivots=pivots, pseudo_inverse=chol is None)


def nystrom_mlp(
    corr: Tensor,
    w_down: Tensor,
    keep: int,
    ridge_lambda: float = 1.0,
    nystrom_ridge: float = 1e-6,
    corr_w: Tensor | None = None,
    refit: str = "paper",
    tokens: float | None = None,
) -> MlpSolution:
    """Keep `keep` intermediate columns; W_D' = (C_JJ + ρI)⁻¹ C_J: W_D.

    J: the top ridge leverage scores of C (the paper). ρ = nystrom_ridge · mean(diag C_JJ). keep == D returns the
    identity selection and W_D unchanged (the ridge would otherwise perturb an exact solution). ``corr_w`` = C W_D,
    if the caller has it anyway (the right-hand side C_J: W_D is then its rows J, not a second product).
    ``refit="shrink"`` ridges the refit toward the dense rows instead of toward 0, by keep/tokens relative
    (``tokens``: the calibration's count).
    """
    _check_mlp(corr, w_down)
    full = corr.shape[0]
    if not 1 <= keep <= full:
        raise ValueError(f"keep must lie in [1, {full}], got {keep}")
    if nystrom_ridge < 0.0:
        raise ValueError(f"nystrom_ridge must be >= 0, got {nystrom_ridge}")
    if refit not in REFITS or (refit == "shrink" and not (tokens or 0) > 0):
        raise ValueError(f"refit must be one of {', '.join(REFITS)} (shrink with tokens > 0), got {refit!r}")
    c = as_f64(corr)
    w = as_f64(w_down)
    if keep == full:
        return MlpSolution(index=torch.arange(full, device=c.device), w_down=w.clone())
    corr_w = None if corr_w is None else as_f64(corr_w)
    scores, leverage_eigh = _leverage_scores(c, ridge_lambda)
    index = stable_top_indices(scores, keep)
    update = _nystrom_update(c, w, index, nystrom_ridge, corr_w, tokens if refit == "shrink" else None)
    return MlpSolution(index=index, w_down=update.w_down, leverage_eigh=leverage_eigh, ridge=update.ridge,
                       ridge_pivots=update.ridge_pivots, pseudo_inverse=update.pseudo_inverse, shrink=update.shrink)


def nystrom_update(corr: Tensor, w_down: Tensor, index: Tensor, nystrom_ridge: float = 1e-6) -> Tensor:
    """The W_D update for a given column selection (used to compare selection rules on equal footing)."""
    _check_mlp(corr, w_down)
    return _nystrom_update(as_f64(corr), as_f64(w_down), index.to(torch.long), nystrom_ridge).w_down


def mlp_residual(corr: Tensor, w_down: Tensor, index: Tensor) -> float:
    """Tr(W_Dᵀ (C − C_{:,J} C_JJ⁺ C_{J,:}) W_D): the optimal mean squared error for the kept columns J.

    Evaluated as Tr(Eᵀ C E) with E = W_D − P_J C_JJ⁺ C_{J,:} W_D (P_J scatters rows into J), which is
    algebraically the same but never negative, unlike the difference of two large traces.
    """
    _check_mlp(corr, w_down)
    c = as_f64(corr)
    w = as_f64(w_down)
    index = index.to(torch.long)
    err = w.clone()
    err[index] -= psd_pinv_solve(c[index][:, index], c[index] @ w)
    return float((err * (c @ err)).sum().clamp_min(0.0))
