"""Each module's error as a function of its kept width.

The module-budget allocation (``pipeline.modegpt.budget``) trades widths between modules and layers from these
curves, so they are in the modules' own output units (mean squared error per token), never relative errors:
  * Type-I: the Nyström residual Tr(W_Dᵀ (C − C_{:,J} C_JJ⁻¹ C_{J,:}) W_D) for every prefix J of a keep order;
  * Type-III: the tail energy of the whitened SVD (exact, Eckart–Young);
  * Type-II: a first-order estimate, the variance of the attention-logit change from dropping q/k columns times
    the head's value-output energy (``qk_error_curve`` says why it is an upper estimate).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.modegpt._linalg import F64, as_f64, check_square, psd_sqrt_pair, symmetric
from pipeline.modegpt.vo import concat_groups


def _ridged(corr: Tensor, nystrom_ridge: float) -> tuple[Tensor, float]:
    """C + ρI with ρ = nystrom_ridge · mean(diag C), never below 1e-12 · mean(diag C) (so it factorises)."""
    c = symmetric(corr)
    scale = float(torch.diagonal(c).mean().clamp_min(torch.finfo(F64).tiny))
    ridge = max(nystrom_ridge, 1e-12) * scale
    return c + ridge * torch.eye(c.shape[0], dtype=F64, device=c.device), ridge


def _explained_rows(corr: Tensor, w_down: Tensor, order: Tensor, nystrom_ridge: float,
                    corr_w: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """W_D, C W_D and Z = L⁻¹ (C W_D)_order (FP64), L the Cholesky factor of the permuted C + ρI: the first k
    rows of Z span the output energy the first k columns of ``order`` explain (Σ_{i<k} Z_iᵀ Z_i)."""
    check_square("corr", corr)
    w = as_f64(w_down)
    rhs = as_f64(corr) @ w if corr_w is None else as_f64(corr_w)
    ridged, _ = _ridged(corr, nystrom_ridge)
    index = order.to(torch.long)
    chol, info = torch.linalg.cholesky_ex(ridged[index[:, None], index])
    if int(info) != 0:
        raise ValueError("C + ridge is not positive definite: raise compression.nystrom_ridge")
    return w, rhs, torch.linalg.solve_triangular(chol, rhs[index], upper=False)


def nested_mlp_residuals(corr: Tensor, w_down: Tensor, order: Tensor, nystrom_ridge: float = 1e-6,
                         corr_w: Tensor | None = None) -> Tensor:
    """residual[k] (k = 0..D): the Type-I residual when the first k columns of ``order`` are kept.

    One Cholesky factor L of the permuted C + ρI gives them all: with Z = L⁻¹ (C W_D)_order, the energy the
    first k columns explain is Σ_{i<k} ‖Z_i‖², so residual[k] = Tr(W_Dᵀ C W_D) − that (clamped at 0).
    """
    w, rhs, z = _explained_rows(corr, w_down, order, nystrom_ridge, corr_w)
    total = (w * rhs).sum()
    explained = torch.cat([z.new_zeros(1), torch.cumsum(z.square().sum(1), 0)])
    return (total - explained).clamp_min(0.0)


def vo_rank_residuals(corr: Tensor, w_v: Tensor, w_o: Tensor, eig_floor: float = 1e-8) -> Tensor:
    """residual[r] (r = 0..d_H): Σ_groups ‖C^{1/2}(W_V W_O,cat − rank-r approximation)‖_F², from the singular
    values of the whitened product that ``vo_svd`` truncates (Eckart–Young: the tail energy)."""
    n_kv, _, head_dim = w_v.shape
    group = w_o.shape[0] // n_kv
    sqrt_c, _, _ = psd_sqrt_pair(corr, eig_floor)
    o_cat = concat_groups(as_f64(w_o), n_kv, group)
    _, sigma, vh = torch.linalg.svd(sqrt_c @ as_f64(w_v), full_matrices=False)
    # (U Σ Vᵀ) W_O,cat has the singular values of Σ Vᵀ W_O,cat: a d_H × g·d problem, as in vo_svd.
    energy = torch.linalg.svdvals((sigma.unsqueeze(-1) * vh) @ o_cat).square().sum(0)  # summed over groups
    padded = torch.cat([energy, energy.new_zeros(max(0, head_dim - energy.numel()))])[:head_dim]
    tail = torch.flip(torch.cumsum(torch.flip(padded, [0]), 0), [0])
    return torch.cat([tail, tail.new_zeros(1)])


def head_output_energy(corr: Tensor, w_v: Tensor, w_o: Tensor) -> Tensor:
    """E‖x W_V,group(h) W_O,h‖² per query head h: [n_h]."""
    n_kv, _, head_dim = w_v.shape
    group = w_o.shape[0] // n_kv
    gram_v = as_f64(w_v).transpose(1, 2) @ symmetric(corr) @ as_f64(w_v)  # [n_kv, d_H, d_H]
    gram_o = as_f64(w_o) @ as_f64(w_o).transpose(1, 2)  # [n_h, d_H, d_H]
    return (gram_v.repeat_interleave(group, dim=0) * gram_o).sum((1, 2))


def qk_error_curve(q_mean: Tensor, k_mean: Tensor, head_energy: Tensor, rope: bool) -> Tensor:
    """error[k] (k = 0..d_H; with RoPE only even k are reachable): estimated attention-output error when each
    KV group keeps its top k CR-score columns.

    Dropping columns S̄ changes head h's logit by δ = Σ_{i∈S̄} q_i k_i / √d_H, of variance about
    Σ_{S̄} E[q_i²] E[k_i²] / d_H (a rotary pair: half the product of the pair energies, averaged over angles).
    To first order the softmax turns δ into an output change of at most std(δ) · ‖v W_O‖, so the estimate is
    Var(δ) × the head's value-output energy: an upper estimate, since attention that is spread over many keys
    or saturated on one damps a logit change. ``q_mean`` [n_h, d_H] and ``k_mean`` [n_kv, d_H]: mean squares.
    """
    n_h, head_dim = q_mean.shape
    n_kv = k_mean.shape[0]
    group = n_h // n_kv
    q = as_f64(q_mean)
    k = as_f64(k_mean).repeat_interleave(group, dim=0)
    if rope:
        half = head_dim // 2
        contrib = 0.5 * (q[:, :half] + q[:, half:]) * (k[:, :half] + k[:, half:])  # [n_h, half]
    else:
        contrib = q * k
    # The selection ranks by the KV group's summed score, so every head of a group drops the same columns.
    score = contrib.reshape(n_kv, group, -1).sum(1)
    order = torch.argsort(score, dim=1, descending=True, stable=True).repeat_interleave(group, dim=0)
    ranked = contrib.gather(1, order)  # [n_h, units] in keep order
    kept_sum = torch.cat([ranked.new_zeros(n_h, 1), torch.cumsum(ranked, 1)], dim=1)
    dropped = (kept_sum[:, -1:] - kept_sum).clamp_min(0.0) / head_dim  # [n_h, units + 1]
    per_unit = (dropped * as_f64(head_energy)[:, None]).sum(0)
    if not rope:
        return per_unit
    curve = per_unit.new_full((head_dim + 1,), math.inf)  # odd k is unreachable: rotary pairs stay whole
    curve[0::2] = per_unit
    return curve
