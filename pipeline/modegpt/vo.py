"""Type-III (value-output) compression: whitened two-step SVD per KV group, and the OPT value-bias fold."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.modegpt._linalg import as_f64, check_square, psd_sqrt_pair, symmetric


@dataclass(frozen=True)
class VoSolution:
    """Compressed value and output projections: w_v [n_kv, d, rank], w_o [n_h, rank, d] (FP64).

    ``floored``: eigenvalues of the correlation that ``eig_floor`` raised (0 for a well-conditioned one).
    """

    w_v: Tensor
    w_o: Tensor
    floored: int = 0


def _check_vo(corr: Tensor, w_v: Tensor, w_o: Tensor) -> tuple[int, int, int, int]:
    check_square("corr", corr)
    shapes = f"corr {tuple(corr.shape)}, w_v {tuple(w_v.shape)}, w_o {tuple(w_o.shape)}"
    if w_v.dim() != 3 or w_o.dim() != 3:
        raise ValueError(f"w_v must be [n_kv, d, d_H] and w_o [n_h, d_H, d], got {shapes}")
    n_kv, d, head_dim = w_v.shape
    n_h = w_o.shape[0]
    if d != corr.shape[0] or tuple(w_o.shape[1:]) != (head_dim, d):
        raise ValueError(f"shape mismatch: {shapes}")
    if n_h % n_kv != 0:
        raise ValueError(f"n_h={n_h} is not a multiple of n_kv={n_kv}")
    return n_kv, n_h // n_kv, d, head_dim


def concat_groups(w_o: Tensor, n_kv: int, group: int) -> Tensor:
    """[n_h, r, d] → [n_kv, r, g·d]: each group's output blocks side by side."""
    _, r, d = w_o.shape
    return w_o.reshape(n_kv, group, r, d).permute(0, 2, 1, 3).reshape(n_kv, r, group * d)


def _split_groups(w_cat: Tensor, group: int) -> Tensor:
    """Inverse of concat_groups: [n_kv, r, g·d] → [n_kv·g, r, d]."""
    n_kv, r, gd = w_cat.shape
    d = gd // group
    return w_cat.reshape(n_kv, r, group, d).permute(0, 2, 1, 3).reshape(n_kv * group, r, d)


def vo_svd(corr: Tensor, w_v: Tensor, w_o: Tensor, rank: int, eig_floor: float = 1e-8) -> VoSolution:
    """Optimal rank-`rank` approximation of C^{1/2} W_V,j [W_O,h1 … W_O,hg] per KV group j, two-step SVD.

    C^{1/2} W_V = U Σ Vᵀ;  Σ Vᵀ W_O,cat = U' Σ' V'ᵀ;  W_V' = C^{-1/2} U U'_{:, :k};  W_O,cat' = Σ'_k V'ᵀ_k.
    U has orthonormal columns, so (U U') Σ' V'ᵀ is an SVD of the whitened product and truncation is optimal
    (Eckart–Young); the second SVD is only d_H × g·d, never d × g·d. All groups are solved in one batch.
    """
    n_kv, group, d, head_dim = _check_vo(corr, w_v, w_o)
    if not 1 <= rank <= head_dim:
        raise ValueError(f"rank must lie in [1, {head_dim}], got {rank}")
    if rank == head_dim:  # exact at full rank: the whitening round trip would add only the floor's error
        return VoSolution(w_v=as_f64(w_v).clone(), w_o=as_f64(w_o).clone(), floored=0)
    sqrt_c, inv_sqrt_c, floored = psd_sqrt_pair(corr, eig_floor)
    o_cat = concat_groups(as_f64(w_o), n_kv, group)
    u, sigma, vh = torch.linalg.svd(sqrt_c @ as_f64(w_v), full_matrices=False)
    u2, sigma2, vh2 = torch.linalg.svd((sigma.unsqueeze(-1) * vh) @ o_cat, full_matrices=False)
    # The product has rank ≤ min(d, d_H, g·d); beyond that the factors are zero-padded to keep the shape.
    avail = min(rank, sigma2.shape[-1])
    new_v = inv_sqrt_c @ (u @ u2[..., :avail])
    new_o = sigma2[..., :avail, None] * vh2[..., :avail, :]
    if avail < rank:
        new_v = torch.cat([new_v, new_v.new_zeros(n_kv, d, rank - avail)], dim=-1)
        new_o = torch.cat([new_o, new_o.new_zeros(n_kv, rank - avail, group * d)], dim=-2)
    return VoSolution(w_v=new_v, w_o=_split_groups(new_o, group), floored=floored)


def fold_value_bias(b_v: Tensor, w_o: Tensor, b_o: Tensor, group_size: int) -> Tensor:
    """b_O + Σ_h b_V,group(h) W_O,h: exact because each attention row sums to 1, so A·1 b_Vᵀ = 1 b_Vᵀ."""
    if w_o.dim() != 3 or group_size < 1 or w_o.shape[0] % group_size != 0:
        raise ValueError(f"w_o must be [n_h, d_H, d] with n_h a multiple of group_size={group_size}")
    n_h, head_dim, d = w_o.shape
    n_kv = n_h // group_size
    if b_v.numel() != n_kv * head_dim or b_o.numel() != d:
        got = f"{b_v.numel()}, {b_o.numel()}"
        raise ValueError(f"b_v must have {n_kv * head_dim} entries and b_o {d}, got {got}")
    per_head = as_f64(b_v).reshape(n_kv, head_dim).repeat_interleave(group_size, dim=0)
    return as_f64(b_o).reshape(d) + torch.einsum("hk,hkd->d", per_head, as_f64(w_o))


def vo_residual(corr: Tensor, w_v: Tensor, w_o: Tensor, sol: VoSolution) -> float:
    """Σ_groups ‖C^{1/2}(W_V W_O,cat − W_V' W_O,cat')‖_F² = Σ Tr(Δᵀ C Δ), with the exact (unfloored) C.

    Δ = P R with P = [W_V, −W_V'] (d × (d_H + k)) and R = [W_O,cat; W_O,cat'], so the trace is
    Σ (Pᵀ C P) ⊙ (R Rᵀ): small (d_H + k)² matrices instead of d × g·d products per group.
    """
    n_kv, group, _, _ = _check_vo(corr, w_v, w_o)
    c = symmetric(corr)
    p = torch.cat([as_f64(w_v), -as_f64(sol.w_v)], dim=-1)
    old_o = concat_groups(as_f64(w_o), n_kv, group)
    r = torch.cat([old_o, concat_groups(as_f64(sol.w_o), n_kv, group)], dim=-2)
    gram_p = p.transpose(-1, -2) @ c @ p
    gram_r = r @ r.transpose(-1, -2)
    return float((gram_p * gram_r).sum().clamp_min(0.0))
