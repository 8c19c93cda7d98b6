"""Type-II (key-query) compression: CR-decomposition column selection per KV group, RoPE-pair aware."""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.modegpt._linalg import as_f64, stable_top_indices


def _group_query_energy(q_energy: Tensor, k_energy: Tensor) -> Tensor:
    """Sum query energies over each KV group's heads (head h is in group h // g, HF's repeat_kv layout)."""
    if q_energy.dim() != 2 or k_energy.dim() != 2 or q_energy.shape[1] != k_energy.shape[1]:
        shapes = f"{tuple(q_energy.shape)}, {tuple(k_energy.shape)}"
        raise ValueError(f"energies must be [n_h, d_H] and [n_kv, d_H], got {shapes}")
    n_h, head_dim = q_energy.shape
    n_kv = k_energy.shape[0]
    if n_kv < 1 or n_h % n_kv != 0:
        raise ValueError(f"n_h={n_h} is not a multiple of n_kv={n_kv}")
    return as_f64(q_energy).reshape(n_kv, n_h // n_kv, head_dim).sum(dim=1)


def cr_select(q_energy: Tensor, k_energy: Tensor, keep: int, rope: bool) -> Tensor:
    """Columns kept by W_Q and W_K of each KV group: LongTensor [n_kv, keep].

    Without RoPE: the top `keep` columns by √(cq_i·ck_i), ascending. With RoPE: columns i and i + d_H/2
    form a rotation pair scored √((cq_i + cq_i')(ck_i + ck_i')); the top keep/2 pairs S (ascending) give
    rows [S, S + d_H/2], so HF's rotate_half on the compressed head pairs the right columns again.
    """
    cq = _group_query_energy(q_energy, k_energy)
    ck = as_f64(k_energy)
    head_dim = ck.shape[1]
    if not 1 <= keep <= head_dim:
        raise ValueError(f"keep must lie in [1, {head_dim}], got {keep}")
    if not rope:
        return stable_top_indices((cq * ck).clamp_min(0.0).sqrt(), keep)
    if head_dim % 2 or keep % 2:
        raise ValueError(f"with RoPE, head_dim and keep must be even, got head_dim={head_dim}, keep={keep}")
    half = head_dim // 2
    pair_q = cq[:, :half] + cq[:, half:]
    pair_k = ck[:, :half] + ck[:, half:]
    pairs = stable_top_indices((pair_q * pair_k).clamp_min(0.0).sqrt(), keep // 2)
    return torch.cat([pairs, pairs + half], dim=1)


def rope_frequency_index(qk_index: Tensor, head_dim: int) -> Tensor:
    """The kept frequency indices S (first half of each row of a RoPE-layout selection): [n_kv, keep/2]."""
    if qk_index.dim() != 2 or qk_index.shape[1] % 2:
        raise ValueError(f"qk_index must be [n_kv, even keep], got shape {tuple(qk_index.shape)}")
    half_keep = qk_index.shape[1] // 2
    freq = qk_index[:, :half_keep]
    if not torch.equal(qk_index[:, half_keep:], freq + head_dim // 2):
        raise ValueError(f"qk_index is not in the RoPE pair layout [S, S + {head_dim // 2}]")
    return freq


def qk_residual(q_corr: Tensor, k_corr: Tensor, index: Tensor) -> float:
    """Σ_h ‖Q_h K_hᵀ − Q_h,S K_h,Sᵀ‖_F² from the full per-head column correlations (no positions applied).

    q_corr: [n_h, d_H, d_H] = Σ_tokens QᵀQ per query head; k_corr: [n_kv, d_H, d_H]; index: [n_kv, keep].
    The error is Q_S̄ K_S̄ᵀ on the dropped columns S̄, and ‖Q_S̄ K_S̄ᵀ‖² = Σ (C_Q ⊙ C_K) over S̄ × S̄.
    A diagnostic only: the capture stores just the diagonals, which is all the selection needs.
    """
    if q_corr.dim() != 3 or k_corr.dim() != 3:
        shapes = f"{tuple(q_corr.shape)}, {tuple(k_corr.shape)}"
        raise ValueError(f"q_corr, k_corr must be [heads, d_H, d_H], got {shapes}")
    n_h, n_kv, head_dim = q_corr.shape[0], k_corr.shape[0], k_corr.shape[-1]
    if n_h % n_kv != 0 or index.shape[0] != n_kv:
        raise ValueError(f"inconsistent heads: n_h={n_h}, n_kv={n_kv}, index rows={index.shape[0]}")
    dropped = torch.ones(n_kv, head_dim, dtype=torch.bool, device=q_corr.device)
    dropped.scatter_(1, index.to(device=q_corr.device, dtype=torch.long), False)
    mask = (dropped.unsqueeze(-1) & dropped.unsqueeze(-2)).repeat_interleave(n_h // n_kv, dim=0)
    ck = as_f64(k_corr).repeat_interleave(n_h // n_kv, dim=0)
    return float((as_f64(q_corr) * ck * mask).sum())
