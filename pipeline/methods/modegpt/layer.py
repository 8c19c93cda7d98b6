"""One layer of MoDeGPT from its dense weights and captured statistics.

This is the glue between adapters (which know where the weights are) and the pure math in
``pipeline.modegpt``: it turns HF modules into X W-layout FP64 tensors, sums into means, and the math's
outputs into a :class:`~pipeline.plan.LayerSolution` plus per-module reconstruction errors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.adapters import HeadLayout, LayerAdapter
from pipeline.modegpt import (
    F64,
    MlpSolution,
    VoSolution,
    cr_select,
    fold_value_bias,
    head_output_energy,
    nystrom_mlp,
    vo_residual,
    vo_svd,
)
from pipeline.plan import LayerPlan, LayerSolution

from .settings import ModegptSettings

log = logging.getLogger(__name__)

# A channel whose mean square exceeds this multiple of the median's (RMS 100x the median) carries a massive
# activation: its correlation entries dwarf the rest, and the solve leans on the floors and ridges below.
MASSIVE_RATIO = 1e4


@dataclass
class DenseLayer:
    """One block's weights in X W layout (FP64): heads split out where the method works per head."""

    up: Tensor  # [d, D]
    gate: Tensor | None  # [d, D]
    down: Tensor  # [D, d]
    v: Tensor  # [n_kv, d, d_H]
    o: Tensor  # [n_h, d_H, d]
    v_bias: Tensor | None  # [n_kv * d_H]
    o_bias: Tensor | None  # [d]

    @classmethod
    def from_layer(cls, layer: LayerAdapter, heads: HeadLayout, device: torch.device) -> DenseLayer:
        def xw(module: torch.nn.Linear) -> Tensor:
            return module.weight.detach().to(device, F64).T

        def bias(module: torch.nn.Linear) -> Tensor | None:
            return None if module.bias is None else module.bias.detach().to(device, F64)

        d = layer.q_proj.in_features
        return cls(
            up=xw(layer.up_proj),
            gate=None if layer.gate_proj is None else xw(layer.gate_proj),
            down=xw(layer.down_proj),
            v=xw(layer.v_proj).reshape(d, heads.num_kv_heads, heads.head_dim).permute(1, 0, 2),
            o=xw(layer.o_proj).reshape(heads.num_heads, heads.head_dim, d),
            v_bias=bias(layer.v_proj),
            o_bias=bias(layer.o_proj),
        )


def mlp_quadratic_error(corr: Tensor, w_down: Tensor, corr_down: Tensor, index: Tensor, new_down: Tensor) -> Tensor:
    """Tr(Eᵀ C E) for E = W_D − P_J W_D' (P_J scatters rows into J), from C W_D and C_{:,J} W_D' only:
    C E = C W_D − C_{:,J} W_D', so no D x D x d product beyond the one the caller already has."""
    diff = w_down.clone()
    diff[index] -= new_down
    return (diff * (corr_down - corr[:, index] @ new_down)).sum()


def _qk_score_dropped(q_energy: Tensor, k_energy: Tensor, qk_index: Tensor, heads: HeadLayout) -> Tensor:
    """Fraction of the CR score mass (the score the selection ranks by: per column, or per RoPE pair) dropped."""
    cq = q_energy.reshape(heads.num_kv_heads, heads.group_size, -1).sum(1)
    ck = k_energy
    index = qk_index.to(cq.device)
    if heads.rope:
        half = heads.head_dim // 2
        cq, ck = cq[:, :half] + cq[:, half:], ck[:, :half] + ck[:, half:]
        index = index[:, : index.shape[1] // 2]
    score = (cq * ck).clamp_min(0).sqrt()
    return 1.0 - score.gather(1, index).sum() / score.sum()


def _channel_notes(name: str, corr: Tensor, units: str) -> list[str]:
    """Dead channels (zero correlation diagonal) and massive ones (mean square far above the median)."""
    diag = torch.diagonal(corr)
    top = float(diag.max())
    notes = []
    dead = int((diag <= top * 1e-12).sum()) if top > 0 else diag.numel()
    if dead:
        notes.append(f"{dead} dead {name} {units}")
    median = float(diag.median())
    if median > 0 and top > MASSIVE_RATIO * median:
        count = int((diag > MASSIVE_RATIO * median).sum())
        notes.append(f"{count} massive-activation {name} {units} (RMS up to {(top / median) ** 0.5:.3g}x the median)")
    return notes


def safeguard_notes(tokens: float, mlp_corr: Tensor, attn_corr: Tensor, mlp: MlpSolution, vo: VoSolution,
                    settings: ModegptSettings) -> list[str]:
    """What was unusual about a layer's statistics and which of the solver's safeguards fired, one phrase each."""
    notes = []
    d, full = attn_corr.shape[0], mlp_corr.shape[0]
    if tokens < max(d, full):
        short = " and ".join(f"{what} {n}" for what, n in (("hidden size", d), ("MLP width", full)) if tokens < n)
        notes.append(f"{tokens:.0f} calibration tokens < {short}: correlations rank-deficient")
    notes += _channel_notes("MLP", mlp_corr, "units") + _channel_notes("attention-input", attn_corr, "channels")
    if mlp.leverage_eigh:
        notes.append("leverage scores fell back to eigh (C + lambda I not positive definite)")
    if mlp.ridge_pivots:
        notes.append(f"C_JJ ridge {mlp.ridge:.3g} carried {mlp.ridge_pivots} of {mlp.index.numel()} "
                     "near-singular pivots")
    if math.isinf(mlp.shrink):
        notes.append("Type-I kept the dense down-projection rows (no more tokens than kept columns to refit)")
    if mlp.pseudo_inverse:
        notes.append("C_JJ singular even with the ridge: solved by pseudo-inverse")
    if vo.floored:
        notes.append(f"attention correlation: {vo.floored} of {d} eigenvalues raised to eig_floor "
                     f"{settings.eig_floor:g} x max")
    return notes


def solve_modegpt_layer(
    stats: dict[str, Tensor], dense: DenseLayer, plan: LayerPlan, heads: HeadLayout, settings: ModegptSettings,
    layer: int | None = None,
) -> tuple[LayerSolution, dict[str, float]]:
    """Type-I (Nyström), Type-II (CR) and Type-III (SVD) for one layer; errors relative to output energy.

    Logs one line naming the safeguards that fired (dead units, rank deficiency, massive activations), if any.
    """
    tokens = float(stats["tokens"])
    mlp_corr = stats["mlp_gram"] / tokens
    attn_corr = stats["attn_gram"] / tokens

    # C W_D serves three times: the Nyström right-hand side (its rows J), the MLP output energy, and the error.
    corr_down = mlp_corr @ dense.down
    mlp = nystrom_mlp(mlp_corr, dense.down, plan.mlp_width, settings.ridge_lambda, settings.nystrom_ridge,
                      corr_w=corr_down, refit=settings.mlp_refit, tokens=tokens)
    mlp_energy = (dense.down * corr_down).sum()
    mlp_error = mlp_quadratic_error(mlp_corr, dense.down, corr_down, mlp.index, mlp.w_down) / mlp_energy

    qk_index = cr_select(stats["q_energy"], stats["k_energy"], plan.qk_dim, heads.rope)
    group = heads.group_size
    qk_dropped = _qk_score_dropped(stats["q_energy"], stats["k_energy"], qk_index, heads)

    vo = vo_svd(attn_corr, dense.v, dense.o, plan.v_dim, settings.eig_floor)
    vo_energy = head_output_energy(attn_corr, dense.v, dense.o).sum()  # Σ_h ‖C^{1/2} W_V,group(h) W_O,h‖²
    vo_error = vo_residual(attn_corr, dense.v, dense.o, vo) / max(float(vo_energy), 1e-300)

    o_bias = None
    if dense.v_bias is not None:
        base = dense.o_bias if dense.o_bias is not None else torch.zeros_like(dense.o[0, 0])
        o_bias = fold_value_bias(dense.v_bias, dense.o, base, group)
    solution = LayerSolution(
        mlp_index=mlp.index.cpu(), mlp_down=mlp.w_down.cpu(), qk_index=qk_index.cpu(),
        v_weight=vo.w_v.cpu(), o_weight=vo.w_o.cpu(), o_bias=None if o_bias is None else o_bias.cpu(),
    )
    errors = {"mlp": float(mlp_error), "qk_score_dropped": float(qk_dropped), "vo": float(vo_error)}
    notes = safeguard_notes(tokens, mlp_corr, attn_corr, mlp, vo, settings)
    if notes:
        log.info("%s: %s", "layer" if layer is None else f"layer {layer}", "; ".join(notes))
    return solution, errors


